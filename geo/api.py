"""OGC API – Features (Part 1 core, Part 2 CRS, Part 3 filtering) over the SensorThings store, at /ogcapi.

A Starlette application of its own, mounted by the composition root, so that its gzip middleware and its
OGC-style errors do not touch the SensorThings routes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from geo import aggregate_sql, aggregates, html, openapi
from geo.aggregate_params import item_request, parse_aggregates, parse_feature_id
from geo.collections import Collection
from geo.collections import collections as collections_for
from geo.cql2_text import Cql2TextParser
from geo.crs import CRS84, STORAGE_CRS, URIS, parse_crs
from geo.filtering import check_filter_text, compile_tree, parse_json_filter
from geo.params import (
    COMMON,
    FORMATS_ITEMS,
    FORMATS_METADATA,
    ITEM_PARAMETERS,
    ItemsRequest,
    check_parameters,
    encode_next,
    parse_format,
    parse_items,
    parse_properties,
    query_string,
)
from geo.query import count_sql, csv_header, extent_sql, feature_sql, items_sql
from geo.queryables import Queryable
from sensorthings.http import audit as sta_audit
from sensorthings.http.common import database_error, service_url
from sensorthings.model.access import CURRENT, Role, require
from sensorthings.model.errors import NotFound, StaError
from sensorthings.query import visibility
from sensorthings.query.sql import SqlBuilder
from sensorthings.query.visibility import Restrictions, View
from sensorthings.write.ports import AuditSink

log = logging.getLogger("citystream.geo")

JSON = "application/json"
GEOJSON = "application/geo+json"
HTML = "text/html"
CSV = "text/csv"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
SCHEMA = "application/schema+json"
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
SORTABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/sortables"
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
)
LAST_COMMIT = sql.SQL("SELECT CASE WHEN current_setting('track_commit_timestamp')::boolean "
                      "THEN (pg_last_committed_xact()).timestamp END")
ERROR_CODES = {400: "InvalidParameterValue", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 413: "PayloadTooLarge", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class OgcConfig:
    public_url: str | None = None
    statement_timeout_ms: int = 30_000
    max_age_seconds: int = 10  # live data: caches may reuse a response this long, then revalidate by ETag


def _link(href: str, rel: str, media_type: str, title: str = "") -> dict[str, str]:
    link = {"href": href, "rel": rel, "type": media_type}
    if title:
        link["title"] = title
    return link


def _self_and_alternates(url: str, query: list[tuple[str, str]], current: str,
                         formats: dict[str, str]) -> list[dict[str, str]]:
    """A `self` link for the encoding served, `alternate` links for the others (each with its `f`)."""
    links = []
    for fmt, media_type in formats.items():
        q = query_string(query, f=fmt)
        links.append(_link(f"{url}?{q}", "self" if fmt == current else "alternate", media_type,
                           f"this document as {fmt.upper()}"))
    return links


class OgcApi:
    def __init__(self, pool: AsyncConnectionPool[Any], config: OgcConfig) -> None:
        self.pool = pool
        self.config = config
        self.cql2 = Cql2TextParser()

    # ------------------------------------------------------------------------------------------------ plumbing

    def root(self, request: Request) -> str:
        return service_url(request, self.config.public_url).rsplit("/", 1)[0] + "/ogcapi"

    async def _rows(self, query: sql.Composable, params: dict[str, Any]
                    ) -> tuple[list[tuple[Any, ...]], datetime | None]:
        """The rows, and when anything was last committed (a safe Last-Modified: None where the server does
        not track commit timestamps), in one connection and one round trip."""
        try:
            async with self.pool.connection() as conn, conn.pipeline():
                rows_cursor = await conn.execute(query, params | visibility.params(CURRENT.get()))
                commit_cursor = await conn.execute(LAST_COMMIT)
                rows = await rows_cursor.fetchall()
                commit = await commit_cursor.fetchone()
        except psycopg.Error as exc:
            if visibility.found_restricted(exc):
                raise  # the request is answered again with the hiding statements (`_handler`)
            raise database_error(exc, self.config.statement_timeout_ms) from exc
        return rows, commit[0] if commit else None

    async def _respond(self, request: Request, body: bytes, media_type: str, headers: dict[str, str] | None = None,
                       *, etag_of: bytes | None = None, modified: datetime | None = None) -> Response:
        """ETag (of the body, or of `etag_of`: the body without its timeStamp), Last-Modified (`modified`, for
        answers read from the data), Cache-Control; 304 for a matching conditional request."""
        headers = dict(headers or {})
        basis = (etag_of if etag_of is not None else body) + media_type.encode()
        etag = 'W/"' + hashlib.blake2b(basis, digest_size=16).hexdigest() + '"'
        headers["ETag"] = etag
        # An answer to a credential may hold restricted data: no shared cache may keep it for someone else.
        shared = "public" if CURRENT.get().anonymous else "private"
        headers["Cache-Control"] = f"{shared}, max-age={self.config.max_age_seconds}"
        headers["Vary"] = "Authorization, X-API-Key"
        if modified is not None:
            headers["Last-Modified"] = format_datetime(modified.astimezone(UTC), usegmt=True)
        if _not_modified(request, etag, modified):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    def _collection(self, collection_id: str) -> Collection:
        """The collection as the request's principal may see it (restricted data hidden where it must be)."""
        known = _visible_collections()
        found = known.get(collection_id)
        if found is None:
            raise NotFound(f"no collection {collection_id!r}; collections are {', '.join(known)}, {aggregates.ID}")
        return found

    async def _document(self, request: Request, document: dict[str, Any], fmt: str, title: str,
                        modified: datetime | None = None) -> Response:
        if fmt == "html":
            return await self._respond(request, html.page(title, document).encode(), HTML, modified=modified)
        return await self._respond(request, orjson.dumps(document), JSON, modified=modified)

    # ------------------------------------------------------------------------------------------------ metadata

    async def landing(self, request: Request) -> Response:
        check_parameters(request.query_params, COMMON, "the landing page")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        root = self.root(request)
        document = {
            "title": "CityStream OGC API – Features",
            "description": "Live features from the city's SensorThings data: Things, Datastreams, latest values, "
                           "Observations, FeaturesOfInterest and Locations; rollups aggregated per district or "
                           "grid cell.",
            "links": [
                *_self_and_alternates(root, [], fmt, {"json": JSON, "html": HTML}),
                _link(f"{root}/api", "service-desc", OPENAPI, "the API definition (OpenAPI 3.0)"),
                _link(f"{root}/api?f=html", "service-doc", HTML, "the API documentation"),
                _link(f"{root}/conformance", "conformance", JSON, "conformance classes implemented"),
                _link(f"{root}/collections", "data", JSON, "the feature collections"),
                _link(f"{root}/collections", "http://www.opengis.net/def/rel/ogc/1.0/data", JSON,
                      "the feature collections"),
                _link(service_url(request, self.config.public_url), "related", JSON,
                      "the same data through the OGC SensorThings API 1.1"),
            ],
        }
        return await self._document(request, document, fmt, "CityStream OGC API – Features")

    async def conformance(self, request: Request) -> Response:
        check_parameters(request.query_params, COMMON, "/conformance")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        return await self._document(request, {"conformsTo": list(CONFORMANCE)}, fmt, "Conformance")

    async def api_definition(self, request: Request) -> Response:
        check_parameters(request.query_params, COMMON, "/api")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        document = openapi.document(self.root(request))
        if fmt == "html":
            return await self._respond(request, html.api_page(document).encode(), HTML)
        return await self._respond(request, orjson.dumps(document), OPENAPI)

    async def _collection_document(self, request: Request, collection: Collection, fmt: str
                                   ) -> tuple[dict[str, Any], datetime | None]:
        return await self._described(request, fmt, collection.id, collection.title, collection.description,
                                     extent_sql(collection), timed=collection.time_start is not None)

    async def _described(self, request: Request, fmt: str, collection_id: str, title: str, description: str,
                         extent: sql.Composable, *, timed: bool, sortable: bool = True
                         ) -> tuple[dict[str, Any], datetime | None]:
        """A collection's document: its links, its extent (from `extent`, one row: xmin, ymin, xmax, ymax, t0,
        t1, CRS84) and CRSs."""
        root = self.root(request)
        url = f"{root}/collections/{collection_id}"
        rows, modified = await self._rows(extent, {})
        xmin, ymin, xmax, ymax, t0, t1 = rows[0]
        described: dict[str, Any] = {}
        if xmin is not None:
            described["spatial"] = {"bbox": [[xmin, ymin, xmax, ymax]], "crs": CRS84.uri}
        if timed:
            described["temporal"] = {"interval": [[_time(t0), _time(t1)]],
                                     "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"}
        links = [
            *_self_and_alternates(url, [], fmt, {"json": JSON, "html": HTML}),
            _link(f"{url}/items", "items", GEOJSON, "the features as GeoJSON"),
            _link(f"{url}/items?f=html", "items", HTML, "the features as HTML"),
            _link(f"{url}/items?f=csv", "items", CSV, "the features as CSV"),
            _link(f"{url}/queryables", QUERYABLES_REL, SCHEMA, "properties to filter by"),
        ]
        if sortable:
            links.append(_link(f"{url}/sortables", SORTABLES_REL, SCHEMA, "properties to sort by"))
        links.append(_link(f"{root}/collections", "collection", JSON, "all collections"))
        return {
            "id": collection_id,
            "title": title,
            "description": description,
            "itemType": "feature",
            "links": links,
            "extent": described,
            "crs": list(URIS),
            "storageCrs": STORAGE_CRS.uri,
        }, modified

    async def _aggregates_document(self, request: Request, fmt: str) -> tuple[dict[str, Any], datetime | None]:
        return await self._described(request, fmt, aggregates.ID, aggregates.TITLE, aggregates.DESCRIPTION,
                                     aggregate_sql.extent_sql(_VIEW.get()), timed=True, sortable=False)

    async def collections(self, request: Request) -> Response:
        check_parameters(request.query_params, COMMON, "/collections")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        url = f"{self.root(request)}/collections"
        described = [await self._collection_document(request, c, fmt) for c in _visible_collections().values()]
        described.append(await self._aggregates_document(request, fmt))
        document = {
            "links": _self_and_alternates(url, [], fmt, {"json": JSON, "html": HTML}),
            "collections": [d for d, _ in described],
            "crs": list(URIS),
        }
        return await self._document(request, document, fmt, "Collections",
                                    max((m for _, m in described if m is not None), default=None))

    async def collection(self, request: Request) -> Response:
        collection = self._collection(request.path_params["collection"])
        check_parameters(request.query_params, COMMON, f"/collections/{collection.id}")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        document, modified = await self._collection_document(request, collection, fmt)
        return await self._document(request, document, fmt, collection.title, modified)

    async def queryables(self, request: Request) -> Response:
        return await self._schema(request, "queryables")

    async def sortables(self, request: Request) -> Response:
        return await self._schema(request, "sortables")

    async def _schema(self, request: Request, which: str) -> Response:
        """JSON Schema 2020-12 of what a collection can be filtered or sorted by (OGC API – Features Part 3)."""
        collection = self._collection(request.path_params["collection"])
        entries = collection.queryables if which == "queryables" else collection.sortables
        return await self._schema_document(request, collection.id, collection.title, which, entries)

    async def _schema_document(self, request: Request, collection_id: str, collection_title: str, which: str,
                               entries: dict[str, Queryable]) -> Response:
        check_parameters(request.query_params, COMMON, f"/collections/{collection_id}/{which}")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        url = f"{self.root(request)}/collections/{collection_id}/{which}"
        title = f"{collection_title}: {which}"
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": url,
            "type": "object",
            "title": title,
            "properties": {name: openapi.schema_of(q) for name, q in entries.items()},
            "additionalProperties": False,
        }
        if fmt == "html":
            return await self._respond(request, html.page(title, document).encode(), HTML)
        return await self._respond(request, orjson.dumps(document), SCHEMA)

    # ------------------------------------------------------------------------------------------------ features

    async def items(self, request: Request) -> Response:
        collection = self._collection(request.path_params["collection"])
        query = request.query_params.multi_items()
        parsed = parse_items(request.query_params, collection)
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_ITEMS)
        await self._parse_filter(parsed)
        b = SqlBuilder(service_url(request, self.config.public_url))
        rows, modified = await self._rows(items_sql(collection, parsed, b, compile_tree, csv=fmt == "csv"),
                                          b.params)
        more = len(rows) > parsed.limit
        rows = rows[:parsed.limit]
        url = f"{self.root(request)}/collections/{collection.id}/items"
        next_query = _next_query(parsed, rows, more)
        if fmt == "csv":
            return await self._respond(request, _csv(csv_header(collection, parsed), rows), CSV + "; charset=utf-8",
                                       _next_header(url, query, next_query), modified=modified)
        matched = await self._number_matched(collection, parsed, len(rows), more)
        links = _self_and_alternates(url, query, fmt, {"json": GEOJSON, "html": HTML, "csv": CSV})
        if next_query is not None:
            links.append(_link(f"{url}?{query_string(query, **next_query)}", "next", GEOJSON, "the next page"))
        links.append(_link(f"{self.root(request)}/collections/{collection.id}", "collection", JSON, collection.title))
        head: dict[str, Any] = {"type": "FeatureCollection", "links": links, "numberReturned": len(rows)}
        if matched is not None:
            head["numberMatched"] = matched
        features = ",".join(r[0] for r in rows).encode()
        unstamped = orjson.dumps(head) + features  # what the ETag covers: all but the timeStamp
        head["timeStamp"] = _time(datetime.now(UTC))
        if fmt == "html":
            document = {**head, "features": [orjson.loads(r[0]) for r in rows]}
            return await self._respond(request, html.page(f"{collection.title}: features", document).encode(), HTML,
                                       etag_of=unstamped, modified=modified)
        body = orjson.dumps(head)[:-1] + b',"features":[' + features + b"]}"
        return await self._respond(request, body, GEOJSON, {"Content-Crs": f"<{parsed.crs.uri}>"},
                                   etag_of=unstamped, modified=modified)

    async def _parse_filter(self, parsed: ItemsRequest) -> None:
        """CQL2 text goes to the parser's worker process (geo/cql2_text.py: the native parser can crash or
        take exponential time), after the bounds every parser's input must keep; CQL2 JSON to orjson."""
        if parsed.filter is None:
            return
        if parsed.filter_lang == "cql2-json":
            parsed.filter_tree = parse_json_filter(parsed.filter)
        else:
            check_filter_text(parsed.filter)
            parsed.filter_tree = await self.cql2.to_json(parsed.filter)

    async def _number_matched(self, collection: Collection, parsed: ItemsRequest, returned: int,
                              more: bool) -> int | None:
        """Exact or absent: known for free on the last page reached by offset, counted only on small tables."""
        if parsed.after is None and not more and (returned or not parsed.offset):
            return parsed.offset + returned
        if not collection.countable or parsed.after is not None:
            return None
        b = SqlBuilder("")
        rows, _ = await self._rows(count_sql(collection, parsed, b, compile_tree), b.params)
        return int(rows[0][0])

    async def item(self, request: Request) -> Response:
        collection = self._collection(request.path_params["collection"])
        check_parameters(request.query_params, ITEM_PARAMETERS, f"/collections/{collection.id}/items/{{featureId}}")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA + ("geojson",))
        raw_id = request.path_params["feature"]
        if not (raw_id.isascii() and raw_id.isdigit()) or len(raw_id) > 19:
            raise NotFound(f"no feature {raw_id!r} in {collection.id}: feature ids are the SensorThings @iot.id")
        crs = parse_crs(request.query_params["crs"], "crs") if "crs" in request.query_params else CRS84
        names = parse_properties(request.query_params["properties"], collection) \
            if "properties" in request.query_params else None
        b = SqlBuilder(service_url(request, self.config.public_url))
        feature_id = int(raw_id)
        rows, modified = await self._rows(feature_sql(collection, feature_id, crs, names, b), b.params)
        if not rows:
            raise NotFound(f"no feature {feature_id} in {collection.id}")
        root = self.root(request)
        url = f"{root}/collections/{collection.id}/items/{feature_id}"
        feature = orjson.loads(rows[0][0])
        feature["links"] = [
            *_self_and_alternates(url, request.query_params.multi_items(), fmt, {"json": GEOJSON, "html": HTML}),
            _link(f"{root}/collections/{collection.id}", "collection", JSON, collection.title),
            _link(f"{service_url(request, self.config.public_url)}/{collection.entity.set_name}({feature_id})",
                  "related", JSON, f"the SensorThings {collection.entity.name}"),
        ]
        if fmt == "html":
            return await self._respond(request, html.page(f"{collection.title} {feature_id}", feature).encode(), HTML,
                                       modified=modified)
        return await self._respond(request, orjson.dumps(feature), GEOJSON, {"Content-Crs": f"<{crs.uri}>"},
                                   modified=modified)

    # ------------------------------------------------------------------------------------------------ aggregates

    async def aggregates_collection(self, request: Request) -> Response:
        check_parameters(request.query_params, COMMON, f"/collections/{aggregates.ID}")
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA)
        document, modified = await self._aggregates_document(request, fmt)
        return await self._document(request, document, fmt, aggregates.TITLE, modified)

    async def aggregates_schema(self, request: Request) -> Response:
        """Queryables: the properties a request selects by (as query parameters; there is no `filter`
        here). Sortables: none, the order is fixed (bucket, then the group's keys)."""
        which = request.url.path.rsplit("/", 1)[-1]
        entries = aggregates.QUERYABLES if which == "queryables" else {}
        return await self._schema_document(request, aggregates.ID, aggregates.TITLE, which, entries)

    async def aggregates_items(self, request: Request) -> Response:
        query = request.query_params.multi_items()
        parsed = parse_aggregates(request.query_params)
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_ITEMS)
        b = SqlBuilder("")
        rows, modified = await self._rows(aggregate_sql.items_sql(parsed, _VIEW.get(), b, csv=fmt == "csv"),
                                          b.params)
        page = aggregates.Page(rows, parsed)
        url = f"{self.root(request)}/collections/{aggregates.ID}/items"
        next_query: dict[str, str | None] | None = None
        if page.more:  # as the other collections: offset links for clients that page by offset, else a token
            next_query = {"offset": str(parsed.offset + parsed.limit)} if parsed.offset else \
                {"offset": None, "next": page.next_token()}
        if fmt == "csv":
            return await self._respond(request, page.csv(), CSV + "; charset=utf-8",
                                       _next_header(url, query, next_query), modified=modified)
        links = _self_and_alternates(url, query, fmt, {"json": GEOJSON, "html": HTML, "csv": CSV})
        if next_query is not None:
            links.append(_link(f"{url}?{query_string(query, **next_query)}", "next", GEOJSON, "the next page"))
        links.append(_link(f"{self.root(request)}/collections/{aggregates.ID}", "collection", JSON, aggregates.TITLE))
        head: dict[str, Any] = {"type": "FeatureCollection", "links": links, "numberReturned": len(page.rows)}
        if parsed.after is None and not page.more and (page.rows or not parsed.offset):
            head["numberMatched"] = parsed.offset + len(page.rows)
        features = page.features()
        unstamped = orjson.dumps(head) + features
        head["timeStamp"] = _time(datetime.now(UTC))
        if fmt == "html":
            document = {**head, "features": orjson.loads(b"[" + features + b"]")}
            return await self._respond(request, html.page(f"{aggregates.TITLE}: features", document).encode(), HTML,
                                       etag_of=unstamped, modified=modified)
        body = orjson.dumps(head)[:-1] + b',"features":[' + features + b"]}"
        return await self._respond(request, body, GEOJSON, {"Content-Crs": f"<{parsed.crs.uri}>"},
                                   etag_of=unstamped, modified=modified)

    async def aggregates_item(self, request: Request) -> Response:
        raw_id = request.path_params["feature"]
        named = parse_feature_id(raw_id)
        if named is None:
            raise NotFound(f"no feature {raw_id[:60]!r} in {aggregates.ID}: use the id of a feature of its items")
        parsed = item_request(*named, request.query_params)
        fmt = parse_format(request.query_params, request.headers.get("accept", ""), FORMATS_METADATA + ("geojson",))
        b = SqlBuilder("")
        rows, modified = await self._rows(aggregate_sql.items_sql(parsed, _VIEW.get(), b), b.params)
        page = aggregates.Page(rows, parsed)
        if not page.rows:
            raise NotFound(f"no feature {raw_id[:60]!r} in {aggregates.ID} (its bucket may be gone, or hidden)")
        root = self.root(request)
        url = f"{root}/collections/{aggregates.ID}/items/{raw_id}"
        feature = orjson.loads(page.feature_bytes(page.rows[0]))
        feature["links"] = [
            *_self_and_alternates(url, request.query_params.multi_items(), fmt, {"json": GEOJSON, "html": HTML}),
            _link(f"{root}/collections/{aggregates.ID}", "collection", JSON, aggregates.TITLE),
        ]
        if fmt == "html":
            return await self._respond(request, html.page(f"{aggregates.TITLE}: one feature", feature).encode(), HTML,
                                       modified=modified)
        return await self._respond(request, orjson.dumps(feature), GEOJSON, {"Content-Crs": f"<{parsed.crs.uri}>"},
                                   modified=modified)


_VIEW: ContextVar[View] = ContextVar("ogc_visibility_view", default=View.VISIBLE)
"""How the request's statements are compiled (query.visibility.View), set by `_handler`."""


def _visible_collections() -> dict[str, Collection]:
    return collections_for(_VIEW.get())


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _not_modified(request: Request, etag: str, modified: datetime | None) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return any(tag.strip() in (etag, etag[2:], "*") for tag in if_none_match.split(","))
    since = request.headers.get("if-modified-since")
    if since and modified is not None:
        try:
            return modified.replace(microsecond=0) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


def _next_query(parsed: ItemsRequest, rows: list[tuple[Any, ...]], more: bool) -> dict[str, str | None] | None:
    """What the next page's link changes in the request's parameters: offset + limit when the client pages
    by offset, else a keyset token (and no offset)."""
    if not more:
        return None
    if parsed.offset:
        return {"offset": str(parsed.offset + parsed.limit)}
    last = rows[-1]
    keys = list(last[len(last) - len(parsed.sortby) - 1:])
    return {"offset": None, "next": encode_next(keys, parsed.sort_signature)}


def _next_header(url: str, query: list[tuple[str, str]], changes: dict[str, str | None] | None) -> dict[str, str]:
    return {} if changes is None else {"Link": f'<{url}?{query_string(query, **changes)}>; rel="next"'}


def _csv(header: list[str], rows: list[tuple[Any, ...]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    width = len(header)
    writer.writerows(row[:width] for row in rows)
    return out.getvalue().encode()


def _error(error: StaError) -> Response:
    body = {"code": ERROR_CODES.get(error.status, "Error"), "description": error.message, "status": error.status}
    return Response(orjson.dumps(body), status_code=error.status, media_type=JSON, headers=error.headers)


def _handler(method: Callable[[Request], Awaitable[Response]], sink: AuditSink | None,
             restrictions: Restrictions | None) -> Callable[[Request], Awaitable[Response]]:
    """`method` behind the read role's check, its statements compiled for what the principal may see (a
    CHECKED request that finds restricted data is answered again, VISIBLE); recorded in `sink` where a read
    may see restricted data."""
    async def in_view(request: Request, view: View) -> Response:
        token = _VIEW.set(view)
        try:
            return await method(request)
        finally:
            _VIEW.reset(token)

    async def answer(request: Request) -> Response:
        try:
            require(Role.READ)  # every endpoint here reads; the principal was set by the platform
            return await visibility.read_as(CURRENT.get(), restrictions, lambda view: in_view(request, view))
        except StaError as exc:
            return _error(exc)

    async def handle(request: Request) -> Response:
        if sta_audit.read_recorded(sink, restrictions):
            assert sink is not None
            sta_audit.count_rows(request, None)
            return await sta_audit.recorded(sink, request, answer(request))
        return await answer(request)
    return handle


def create_ogc_app(pool: AsyncConnectionPool[Any], config: OgcConfig, audit: AuditSink | None = None,
                   restrictions: Restrictions | None = None) -> Starlette:
    """The OGC API – Features app; reads that may see restricted data are recorded in `audit`; what is
    known of restricted data, `restrictions` says (query.visibility)."""
    api = OgcApi(pool, config)

    routes = [
        Route("/", _handler(api.landing, audit, restrictions)),
        Route("/conformance", _handler(api.conformance, audit, restrictions)),
        Route("/api", _handler(api.api_definition, audit, restrictions)),
        Route("/collections", _handler(api.collections, audit, restrictions)),
        # the aggregates collection is not a view of one entity (geo/aggregates.py): its own handlers, first
        *(Route(f"/collections/{aggregates.ID}{path}", _handler(method, audit, restrictions)) for path, method in (
            ("", api.aggregates_collection), ("/items", api.aggregates_items),
            ("/items/{feature}", api.aggregates_item), ("/queryables", api.aggregates_schema),
            ("/sortables", api.aggregates_schema))),
        Route("/collections/{collection}", _handler(api.collection, audit, restrictions)),
        Route("/collections/{collection}/items", _handler(api.items, audit, restrictions)),
        Route("/collections/{collection}/items/{feature}", _handler(api.item, audit, restrictions)),
        Route("/collections/{collection}/queryables", _handler(api.queryables, audit, restrictions)),
        Route("/collections/{collection}/sortables", _handler(api.sortables, audit, restrictions)),
    ]

    async def http_error(_: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "no such resource; the OGC API – Features landing page is /ogcapi",
                   405: "only GET (and HEAD) are supported here"}.get(status, "request failed")
        return _error(StaError(message, status=status))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error for %s %s", request.method, request.url.path)
        return _error(StaError("internal server error; see the server log", status=500))

    app = Starlette(
        routes=routes,
        # Read-only open data: web maps on any origin may read it, with a key or token in a header where
        # anonymous read is off (no cookies are involved, so no credentialed CORS).
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD"],
                               allow_headers=["Authorization", "X-API-Key"],
                               expose_headers=["Content-Crs", "ETag", "Last-Modified", "Link"]),
                    Middleware(GZipMiddleware, minimum_size=1024)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.landing = _handler(api.landing, audit, restrictions)  # the mount point itself: /ogcapi, no slash
    app.state.close = api.cql2.close  # the composition root stops the parser's worker with the app
    return app

