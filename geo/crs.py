"""The coordinate reference systems OGC API – Features serves (Part 2), and how a request names them.

Geometries are stored in EPSG:4326 with lon/lat axis order, which is CRS84. Output in another CRS is a
PostGIS ST_Transform; EPSG:4326 proper has lat/lon axis order, so its coordinates are swapped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy
import shapely
from psycopg import sql
from pyproj import Transformer
from pyproj.exceptions import ProjError

from sensorthings.model.errors import BadRequest

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

    def envelope_in_crs84(self, x1: float, y1: float, x2: float, y2: float, parameter: str) -> shapely.Geometry:
        """The envelope x1..x2, y1..y2 of this CRS as a CRS84 geometry, its sides densified (32 steps along
        the longer one) so that their curvature survives the transformation; a Point or LineString when it
        has no width or height. Transformed here, not by PostGIS: coordinates outside the CRS's domain
        (1e300) or a degenerate envelope are a 400, where PostGIS raises internal errors mid-query."""
        if x1 == x2 and y1 == y2:
            shape: shapely.Geometry = shapely.Point(x1, y1)
        elif x1 == x2 or y1 == y2:
            shape = shapely.LineString([(x1, y1), (x2, y2)])
        else:
            shape = shapely.box(x1, y1, x2, y2)
        transformer = _to_crs84(self.srid)
        try:
            step = max(x2 - x1, y2 - y1) / 32
            if step > 0:
                shape = shapely.segmentize(shape, step)
            with numpy.errstate(all="ignore"):
                moved = shapely.transform(
                    shape, lambda xy: numpy.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
                finite = bool(numpy.isfinite(shapely.get_coordinates(moved)).all())
        except (shapely.errors.GEOSException, ValueError, OverflowError, ProjError):
            finite = False
        if not finite:
            raise BadRequest(f"{parameter}: the coordinates lie outside the area that {self.uri} describes",
                             field=parameter)
        return moved

    def geojson(self, geometry: sql.Composable) -> sql.Composable:
        """GeoJSON of a stored geometry in this CRS (no `crs` member: the Content-Crs header says it)."""
        return sql.SQL("ST_AsGeoJSON({}, {}, 0)::json").format(self.output(geometry), sql.Literal(self.decimals))


@functools.cache
def _to_crs84(srid: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{srid}", "OGC:CRS84", always_xy=True)


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
