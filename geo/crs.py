"""The coordinate reference systems OGC API – Features serves (Part 2), and how a request names them.

Geometries are stored in EPSG:4326 with lon/lat axis order, which is CRS84. Output in another CRS is a
PostGIS ST_Transform; EPSG:4326 proper has lat/lon axis order, so its coordinates are swapped.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from sensorthings.errors import BadRequest

OGC_CRS = "http://www.opengis.net/def/crs/"


@dataclass(frozen=True)
class Crs:
    uri: str
    srid: int  # the PostGIS SRID to transform to
    swap_axes: bool  # the CRS's first axis is latitude (EPSG:4326)
    decimals: int  # digits after the point that keep ~0.1 mm

    def output(self, geometry: sql.Composable) -> sql.Composable:
        """A stored (EPSG:4326, lon/lat) geometry expressed in this CRS."""
        if self.srid != 4326:
            geometry = sql.SQL("ST_Transform({}, {})").format(geometry, sql.Literal(self.srid))
        if self.swap_axes:
            geometry = sql.SQL("ST_FlipCoordinates({})").format(geometry)
        return geometry

    def geojson(self, geometry: sql.Composable) -> sql.Composable:
        """GeoJSON of a stored geometry in this CRS (no `crs` member: the Content-Crs header says it)."""
        return sql.SQL("ST_AsGeoJSON({}, {}, 0)::json").format(self.output(geometry), sql.Literal(self.decimals))


CRS84 = Crs(OGC_CRS + "OGC/1.3/CRS84", 4326, False, 9)
SUPPORTED: tuple[Crs, ...] = (
    CRS84,
    Crs(OGC_CRS + "EPSG/0/4326", 4326, True, 9),
    Crs(OGC_CRS + "EPSG/0/25832", 25832, False, 4),  # ETRS89 / UTM zone 32N: Hamburg's analysts
    Crs(OGC_CRS + "EPSG/0/3857", 3857, False, 4),  # web maps
)
URIS: tuple[str, ...] = tuple(c.uri for c in SUPPORTED)
STORAGE_CRS = CRS84

_BY_NAME: dict[str, Crs] = {}
for _crs in SUPPORTED:
    _authority, _version, _code = _crs.uri.removeprefix(OGC_CRS).split("/")
    for _name in (_crs.uri, f"{_authority}:{_code}", f"[{_authority}:{_code}]",
                  _crs.uri.replace("http://", "https://")):
        _BY_NAME[_name.lower()] = _crs


def parse_crs(value: str, parameter: str) -> Crs:
    """A CRS named by its OGC URI (or the `EPSG:25832` / `[EPSG:25832]` short forms); 400 otherwise."""
    found = _BY_NAME.get(value.strip().lower())
    if found is None:
        raise BadRequest(f"{parameter}: unsupported CRS {value!r}; use one of {', '.join(URIS)}", field=parameter)
    return found
