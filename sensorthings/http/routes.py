"""The SensorThings API 1.1 REST surface: HTTP in, one SQL statement (reads) or one transaction (writes) out.

This module only translates between HTTP and the pipeline: `http.reads` (`query.path.parse_path` +
`query.options.parse_query` -> `query.compiler`) -> PostgreSQL -> bytes, and `write.writer.Writer` for
changes (in the transactions of `http.transactions`). It holds no entity knowledge. A `$batch` runs its
requests through these handlers (`http.batch_dispatch`); a JSON Patch body is applied by `http.json_patch`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson
import psycopg
from fastapi import APIRouter, Request, Response
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.routing import Route

from sensorthings.http import audit, openapi, transactions
from sensorthings.http.batch_dispatch import BATCH, BatchDispatch
from sensorthings.http.common import (
    database_error,
    error_response,
    json_response,
    parse_json,
    read_body,
    service_url,
)
from sensorthings.http.json_patch import JSON_PATCH, apply_json_patch, patch_operations
from sensorthings.http.reads import CompileCache
from sensorthings.http.result_formats import to_csv, to_geojson
from sensorthings.http.transactions import in_change_set
from sensorthings.model import LATEST, VERSIONS
from sensorthings.model.access import ANONYMOUS_READ, CURRENT, Role, require
from sensorthings.model.entities import ENTITIES, ENTITY_SETS, Entity, entity_sets_in
from sensorthings.model.errors import BadRequest, NotFound, StaError
from sensorthings.model.json_values import parse_stored_json
from sensorthings.query import visibility
from sensorthings.query.compiler import (
    Compiled,
    Limits,
    compile_count_estimate,
    compile_entity_by_id,
    compile_filtered_delete,
    compile_ids,
)
from sensorthings.query.options import QueryOptions, parse_query
from sensorthings.query.path import ResourcePath, parse_path
from sensorthings.query.visibility import View
from sensorthings.write import authorize
from sensorthings.write.bodies import creates_stream, referenced_id
from sensorthings.write.data_array import read_data_arrays
from sensorthings.write.ports import AuditSink, ChangeListener, ObservationSink
from sensorthings.write.writer import Writer

CONFORMANCE_BASE = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
# STAplus (OGC 22-022r1) core: the Party, Project and License entity types (URI as recalled, unchecked offline).
STAPLUS_CONFORMANCE = "http://www.opengis.net/spec/sensorthings-staplus/1.0/conf/core"
# Only what works completely.
CONFORMANCE = [
    CONFORMANCE_BASE + "datamodel",
    CONFORMANCE_BASE + "resource-path/resource-path-to-entities",
    CONFORMANCE_BASE + "request-data",
    CONFORMANCE_BASE + "create-update-delete",
    CONFORMANCE_BASE + "batch-request/batch-request",
    CONFORMANCE_BASE + "multi-datastream",
    STAPLUS_CONFORMANCE,
]
# Data Array: $resultFormat=dataArray reads and POST CreateObservations, which needs the ingest path.
DATA_ARRAY_CONFORMANCE = CONFORMANCE_BASE + "data-array/data-array"
# Declared when the platform runs an MQTT bridge; serverSettings then lists the broker's endpoints under each.
MQTT_CONFORMANCE = [
    CONFORMANCE_BASE + "create-observations-via-mqtt/observations-creation",
    CONFORMANCE_BASE + "receive-updates-via-mqtt/receive-updates",
]
OBSERVATION = ENTITIES["Observation"]
T = TypeVar("T")
VERSION_SCOPE_KEY = "citystream.sta_version"
"""Where a request's scope holds the API version it was addressed to (the requests of a $batch inherit it)."""
CREATE_OBSERVATIONS = "CreateObservations"  # the Data Array extension's create resource (STA 1.1 §14.3)


@dataclass(frozen=True)
class StaConfig:
    default_top: int = 100
    max_top: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    statement_timeout_ms: int = 30_000
    public_url: str | None = None
    max_expand_depth: int = 5
    exact_count_limit: int = 100_000
    mqtt_endpoints: tuple[str, ...] = ()
    """Where clients reach the MQTT broker (mqtt://…, ws://…); empty when there is no MQTT."""

    @property
    def limits(self) -> Limits:
        return Limits(self.default_top, self.max_top, self.max_expand_depth, self.exact_count_limit)


def request_version(request: Request) -> str:
    """The API version (model.VERSIONS) a request was addressed to: `/v1.0/…` or `/v1.1/…`."""
    version: str = request.scope.get(VERSION_SCOPE_KEY, LATEST)
    return version


def _versioned(version: str, endpoint: Callable[[Request], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint` for the routes of `version`: the request's scope records the version first."""
    async def versioned(request: Request) -> Response:
        request.scope[VERSION_SCOPE_KEY] = version
        return await endpoint(request)
    return versioned


def _role_needed(method: str, resource: str) -> Role | None:
    """The role a request needs (FROST's roles): reading, creating (CreateObservations too), changing (links
    too: POST/PUT/DELETE of a $ref change the entity that links), deleting. A $batch needs none itself, each
    of its requests asks for its own through `handle`; only an anonymous one is refused whole where
    anonymous callers may not even read."""
    if method == "POST" and resource == BATCH:
        return Role.READ if CURRENT.get().anonymous else None
    if method in audit.READS:
        return Role.READ
    if resource.rstrip("/").endswith("/$ref") or method in ("PATCH", "PUT"):
        return Role.UPDATE
    return Role.CREATE if method == "POST" else Role.DELETE


def _write_view(role: Role) -> View:
    """Among which entities a write needing `role` finds its targets: all for a principal holding `role`
    everywhere (it may write to any) or reading everywhere; else those it may see (no write tells whether a
    restricted entity exists)."""
    principal = CURRENT.get()
    return View.ALL if principal.has(role) or not visibility.hides(principal) else View.VISIBLE


class StaApi:
    """Routes for `/v1.0` and `/v1.1` (model.VERSIONS), one store behind both. Holds the connection pool and
    the limits; no entity knowledge (what differs between versions, the model says: Field.since)."""

    def __init__(self, pool: AsyncConnectionPool[Any], config: StaConfig,
                 observations: ObservationSink | None = None, listener: ChangeListener | None = None,
                 audit: AuditSink | None = None, restrictions: visibility.Restrictions | None = None) -> None:
        self.pool = pool
        self.config = config
        self.observations = observations
        self.listener = listener
        self.audit = audit
        self.restrictions = restrictions
        """What is known of restricted data (None: nothing; reads then always hide it from whom they must)."""
        self.compiled = CompileCache()
        self.router = APIRouter()
        for version in VERSIONS:
            for root in (f"/{version}", f"/{version}/"):
                self.router.routes.append(Route(root, _versioned(version, self.service_root), methods=["GET", "HEAD"],
                                                include_in_schema=False))
            self.router.routes.append(Route(f"/{version}/api", _versioned(version, self.api_document),
                                            methods=["GET", "HEAD"], include_in_schema=False))
            # A plain Starlette route: the handler reads the request itself, so FastAPI's parameter solving and
            # route wrappers (~15% of a POST Observations' CPU) would buy nothing here.
            self.router.routes.append(Route(f"/{version}/{{resource:path}}", _versioned(version, self._endpoint),
                                            methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"],
                                            include_in_schema=False))

    def _base(self, request: Request) -> str:
        """The service root of the request's version: the base of every self, navigation and next link."""
        return service_url(request, self.config.public_url, request_version(request))

    async def service_root(self, request: Request) -> Response:
        version = request_version(request)
        base = self._base(request)
        versions = [{"name": v, "url": service_url(request, self.config.public_url, v)} for v in VERSIONS]
        body: dict[str, Any] = {
            "value": [{"name": name, "url": f"{base}/{name}"} for name in entity_sets_in(version)]}
        # STA 1.1 §8.2 gives its root serverSettings with the conformance classes (all of them 1.1 classes);
        # STA 1.0's root is only `value`, and its clients read nothing else: there the versions served go in
        # a serverSettings of their own, and the conformance list stays where 1.1 defines it.
        body["serverSettings"] = ({**self.server_settings(), "versions": versions} if version == LATEST
                                  else {"versions": versions})
        return json_response(orjson.dumps(body), headers={
            "Link": f'<{base}/api>; rel="service-desc"; type="{openapi.OPENAPI_MEDIA_TYPE}"'})

    async def api_document(self, request: Request) -> Response:
        """GET /v1.x/api: the OpenAPI 3.0 document of that version, generated from the entity model
        (sensorthings.http.openapi)."""
        return openapi.response(request, self._base(request), openapi.ApiSettings(
            self.config.default_top, self.config.max_top, create_observations=self.observations is not None,
            anonymous_read=ANONYMOUS_READ.get(), version=request_version(request)))

    def server_settings(self) -> dict[str, Any]:
        """The serverSettings of the 1.1 root: the conformance classes, and the MQTT endpoints."""
        settings: dict[str, Any] = {"conformance": list(CONFORMANCE)}
        if self.observations is not None:
            settings["conformance"].append(DATA_ARRAY_CONFORMANCE)
        if self.config.mqtt_endpoints:
            settings["conformance"] += MQTT_CONFORMANCE
            for uri in MQTT_CONFORMANCE:
                settings[uri] = {"endpoints": list(self.config.mqtt_endpoints)}
        return settings

    async def _endpoint(self, request: Request) -> Response:
        return await self.handle(request, request.path_params["resource"])

    async def handle(self, request: Request, resource: str) -> Response:
        """One request (of its own or of a $batch), writes (and reads that may see restricted data) recorded in
        the audit log (sensorthings.http.audit)."""
        if (self.audit is None or (resource == BATCH and request.method == "POST")
                or (request.method in audit.READS and not audit.read_recorded(self.audit, self.restrictions))):
            return await self._handle(request, resource)
        return await audit.recorded(self.audit, request, self._handle(request, resource))

    async def _handle(self, request: Request, resource: str) -> Response:
        handlers: dict[str, Callable[[Request, str], Awaitable[Response]]] = {
            "GET": self.get, "HEAD": self.get, "POST": self.post, "PATCH": self.patch, "PUT": self.put,
            "DELETE": self.delete,
        }
        try:
            role = _role_needed(request.method, resource)
            if role is not None and (role in (Role.READ, Role.ADMIN) or CURRENT.get().anonymous):
                require(role)
            # else which entities it may change, the principal's roles and what it owns decide, per entity
            # (sensorthings.write.authorize, in each handler)
            return await handlers[request.method](request, resource)
        except StaError as exc:
            return error_response(exc)
        except psycopg.Error as exc:
            return error_response(database_error(exc, self.config.statement_timeout_ms))

    # ---------------------------------------------------------------- reads

    async def _fetch(self, conn: AsyncConnection[Any], compiled: Compiled) -> Any:
        """The first row of `compiled`, run with the current principal's visibility parameters (used only
        by statements compiled to hide restricted data: query.visibility)."""
        cursor = await conn.execute(compiled.query, compiled.params | visibility.params(CURRENT.get()))
        return await cursor.fetchone()

    async def get(self, request: Request, resource: str) -> Response:
        """A read, compiled for what its principal may see (query.visibility); a CHECKED read that finds
        restricted data after all is read again with the hiding statement."""
        return await visibility.read_as(CURRENT.get(), self.restrictions,
                                        lambda view: self._get(request, resource, view))

    async def _get(self, request: Request, resource: str, view: View) -> Response:
        base = self._base(request)
        path, options, compiled = self.compiled.get(resource, request.url.query, base, self.config.limits,
                                                    request_version(request), view=view)
        async with self.pool.connection() as conn:
            if path.is_collection:
                audit.count_rows(request, None)  # if the read is recorded: how many it returned is not counted
                value, more, count, parent_found, last_key = await self._fetch(conn, compiled)
                if not parent_found:
                    raise NotFound(f"nothing found at {resource}: an entity named in the path does not exist")
                head: dict[str, Any] = {}
                if count is not None:
                    head["@iot.count"] = await self._count(conn, path, options, count, view)
                if more and options.top > 0:
                    query = options.next_query(options.skip + options.top, last_key)
                    head["@iot.nextLink"] = f"{base}/{resource}?{query}"
                if options.result_format in ("CSV", "GeoJSON"):
                    return self._flattened(options.result_format, parse_stored_json(value), head, path.version)
                prefix = orjson.dumps(head)[:-1] + (b", " if head else b"")
                return json_response(prefix + b'"value": ' + value.encode() + b"}")
            row = await self._fetch(conn, compiled)
        if row is None:
            raise NotFound(f"nothing found at {resource}")
        if path.value:
            return self._raw_value(path, row[0])
        if row[0] is None:  # a property without a value: OData 4.01 §11.2.6, as FROST answers it
            return Response(status_code=204)
        return json_response(row[0])

    @staticmethod
    def _flattened(result_format: str, entities: list[dict[str, Any]], head: dict[str, Any], version: str
                   ) -> Response:
        """$resultFormat=CSV or GeoJSON: the page's entities flattened (sensorthings.http.result_formats)."""
        if result_format == "GeoJSON":
            return Response(to_geojson(entities, head), media_type="application/geo+json")
        headers = {"Link": f'<{head["@iot.nextLink"]}>; rel="next"'} if "@iot.nextLink" in head else None
        return Response(to_csv(entities, version), media_type="text/csv; charset=utf-8", headers=headers)

    async def _count(self, conn: AsyncConnection[Any], path: ResourcePath, options: QueryOptions, exact: int,
                     view: View) -> int:
        """`exact` when it stayed within the exact-count limit; above it, the planner's estimate (never a
        scan of millions of rows), at least the limit + 1 that was counted; of the hiding statement where the
        read hid (planning it costs ~1 ms more: not while the read's guard found nothing restricted)."""
        limit = self.config.limits.exact_count_limit
        if exact <= limit:
            return exact
        estimated = View.VISIBLE if view is View.VISIBLE else View.ALL  # EXPLAIN runs no guard
        row = await self._fetch(conn, compile_count_estimate(path, options, view=estimated))
        plan = row[0] if isinstance(row[0], list) else orjson.loads(row[0])
        return max(int(plan[0]["Plan"]["Plan Rows"]), limit + 1)

    @staticmethod
    def _raw_value(path: ResourcePath, text: str | None) -> Response:
        if text is None or text == "null":
            return Response(status_code=204)
        if path.prop is not None and path.prop.is_object_value:
            return json_response(text)
        return Response(content=text, media_type="text/plain; charset=utf-8")

    async def _resolve(self, conn: AsyncConnection[Any], path: ResourcePath, role: Role) -> int:
        """The id of the single entity a path addresses for a write needing `role` (404 if none), among those
        `_write_view` gives."""
        row = await self._fetch(conn, compile_ids(path, view=_write_view(role)))
        if row is None:
            described = "/".join(f"{s.relation.name if s.relation else s.entity.set_name}"
                                 f"{'' if s.id is None else f'({s.id})'}" for s in path.steps)
            raise NotFound(f"nothing found at {described}")
        return int(row[0])

    async def _entity_json(self, conn: AsyncConnection[Any], entity: Entity, entity_id: int, base: str,
                           version: str = LATEST) -> str:
        row = await self._fetch(conn, compile_entity_by_id(entity, entity_id, base, version))
        if row is None:  # deleted by a concurrent request since this one found it
            raise NotFound(f"no {entity.name} with @iot.id {entity_id}")
        return str(row[0])

    async def _write(self, work: Callable[[AsyncConnection[Any], Writer], Awaitable[T]]) -> T:
        """Run `work` in one transaction, retried as needed, joining a $batch change set's
        (sensorthings.http.transactions)."""
        return await transactions.write(self.pool, self.listener, work)

    # ---------------------------------------------------------------- writes

    async def post(self, request: Request, resource: str) -> Response:
        if resource == BATCH:
            return await self._batch(request)
        if resource == CREATE_OBSERVATIONS:
            return await self._create_observations(request)
        path = parse_path(resource, request_version(request))
        body = parse_json(await read_body(request, self.config.max_body_bytes),
                          observation=path.entity is OBSERVATION and not path.ref)
        base = self._base(request)
        if path.ref:
            return await self._link_reference(path, body, to_many=True)
        if not path.is_collection:
            raise BadRequest(f"POST creates an entity in a collection, e.g. POST /{path.version}/Things; "
                             "use PATCH or PUT to change an entity")
        entity, relation = path.entity, path.last.relation
        if (entity is OBSERVATION and self.observations is not None and not creates_stream(body)
                and not in_change_set()):  # in a change set it must join the change set's transaction
            return await self._post_observation(path, body, base)

        async def create(conn: AsyncConnection[Any], writer: Writer) -> tuple[int, str]:
            if relation is None:
                await authorize.check_create(conn, entity, body, {})
                new_id = await writer.create(entity, body, "body")
            else:
                parent_id = await self._resolve(conn, ResourcePath(path.steps[:-1]), Role.CREATE)
                await authorize.check_create(conn, entity, body, {relation.inverse_name: parent_id})
                new_id = await writer.create(entity, body, "body", relation.inverse, parent_id)
            await writer.finish()  # so the response shows the entity as committed (e.g. its summaries)
            return new_id, await self._entity_json(conn, entity, new_id, base, path.version)

        new_id, created = await self._write(create)
        return json_response(created, 201, {"Location": f"{base}/{entity.set_name}({new_id})"})

    async def _post_observation(self, path: ResourcePath, body: Any, base: str) -> Response:
        """POST Observations goes through the batched ingest path (DESIGN.md: one write path)."""
        assert self.observations is not None
        parents: dict[str, int] = {}
        relation = path.last.relation
        if relation is not None or not CURRENT.get().has(Role.CREATE):
            async with self.pool.connection() as conn:
                if relation is not None:
                    parents[relation.inverse_name] = await self._resolve(conn, ResourcePath(path.steps[:-1]),
                                                                         Role.CREATE)
                await authorize.check_create(conn, OBSERVATION, body, parents)
        new_id, created = await self.observations.create_observation(body, parents=parents, base_url=base)
        return json_response(created, 201, {"Location": f"{base}/{OBSERVATION.set_name}({new_id})"})

    async def _create_observations(self, request: Request) -> Response:
        """POST CreateObservations (Data Array extension): 201 with one entry per row, in order: the new
        Observation's selfLink, or "error" and the reason for a row that was not stored."""
        if self.observations is None:
            raise BadRequest("CreateObservations needs the ingest path, which this server runs without")
        if in_change_set():
            raise BadRequest("CreateObservations cannot be part of a change set; send it outside one")
        document = parse_json(await read_body(request, self.config.max_body_bytes))
        base = self._base(request)
        arrays = read_data_arrays(document)
        if not CURRENT.get().has(Role.CREATE):  # a Project's key: only into that Project's streams
            async with self.pool.connection() as conn:
                for stream, stream_id in sorted({(a.stream.name, a.stream_id) for a in arrays}):
                    await authorize.check_create(conn, OBSERVATION, {}, {stream: stream_id})
        results = await self.observations.create_observations(arrays)
        audit.count_rows(request, sum(isinstance(r, int) for r in results))
        links = [f"{base}/{OBSERVATION.set_name}({r})" if isinstance(r, int) else f"error {r}" for r in results]
        return json_response(orjson.dumps(links), 201)

    async def _batch(self, request: Request) -> Response:
        """POST $batch, its requests through `handle` and its change sets through `_write`
        (sensorthings.http.batch_dispatch)."""
        raw = await read_body(request, self.config.max_body_bytes)
        service_path = urlsplit(self._base(request)).path
        return await BatchDispatch(self.handle, self._write).run(request, raw, service_path)

    async def _link_reference(self, path: ResourcePath, body: Any, *, to_many: bool) -> Response:
        """POST …/Collection/$ref adds a link; PUT …/SingleNavigation/$ref sets one."""
        relation = path.last.relation
        if relation is None or relation.to_many != to_many or path.last.id is not None:
            raise BadRequest("POST …/$ref adds to a collection (e.g. POST Things(1)/Locations/$ref); "
                             "PUT …/$ref sets a single-valued link (e.g. PUT Datastreams(1)/Sensor/$ref)")
        target = referenced_id(body, relation.target_entity)

        async def link(conn: AsyncConnection[Any], writer: Writer) -> None:
            source = await self._resolve(conn, ResourcePath(path.steps[:-1]), Role.UPDATE)
            await writer.require(relation.target_entity, target, "body")
            await authorize.check_link(conn, relation, source, target)
            await writer.link(relation, source, target)
            await authorize.check(conn, relation.source_entity, source, Role.UPDATE)  # not moved out of reach

        await self._write(link)
        return Response(status_code=204)

    async def patch(self, request: Request, resource: str) -> Response:
        return await self._update(request, resource, replace=False)

    async def put(self, request: Request, resource: str) -> Response:
        return await self._update(request, resource, replace=True)

    async def _update(self, request: Request, resource: str, *, replace: bool) -> Response:
        path = parse_path(resource, request_version(request))
        body = parse_json(await read_body(request, self.config.max_body_bytes),
                          observation=path.entity is OBSERVATION and not path.ref)
        base = self._base(request)
        if path.ref:
            if not replace:
                raise BadRequest("use PUT …/$ref to set a single-valued link")
            return await self._link_reference(path, body, to_many=False)
        if path.is_collection or path.prop is not None:
            raise BadRequest(f"{request.method} changes one entity, e.g. {request.method} /{path.version}/Things(1)")
        entity = path.entity
        json_patch = request.headers.get("content-type", "").lower().startswith(JSON_PATCH)
        if json_patch and replace:
            raise BadRequest("JSON Patch (application/json-patch+json) goes with PATCH, not PUT")

        async def update(conn: AsyncConnection[Any], writer: Writer) -> str:
            entity_id = await self._resolve(conn, path, Role.UPDATE)
            await authorize.check(conn, entity, entity_id, Role.UPDATE)
            changes = await self._apply_json_patch(conn, entity, entity_id, body) if json_patch else body
            await writer.update(entity, entity_id, changes, replace=replace, version=path.version)
            await authorize.check(conn, entity, entity_id, Role.UPDATE)  # not moved out of its reach
            return await self._entity_json(conn, entity, entity_id, base, path.version)

        return json_response(await self._write(update))

    async def _apply_json_patch(self, conn: AsyncConnection[Any], entity: Entity, entity_id: int, ops: Any
                                ) -> dict[str, Any]:
        """Apply RFC 6902 operations to the entity's properties as stored now (sensorthings.http.json_patch);
        return the properties that changed."""
        operations = patch_operations(ops)
        current = parse_stored_json(await self._entity_json(conn, entity, entity_id, ""))
        return apply_json_patch(entity, current, operations)

    async def delete(self, request: Request, resource: str) -> Response:
        path = parse_path(resource, request_version(request))
        if path.ref:
            relation = path.last.relation
            if relation is None or path.last.id is None:
                raise BadRequest("DELETE …/$ref removes one link, e.g. DELETE Things(1)/Locations(2)/$ref")

            async def unlink(conn: AsyncConnection[Any], writer: Writer) -> None:
                source = await self._resolve(conn, ResourcePath(path.steps[:-1]), Role.UPDATE)
                target = await self._resolve(conn, ResourcePath(path.steps), Role.UPDATE)
                await authorize.check_link(conn, relation, source, target)
                await writer.unlink(relation, source, target)

            await self._write(unlink)
            return Response(status_code=204)
        if path.is_collection and path.prop is None:
            return await self._delete_filtered(request, path)
        if path.prop is not None:
            raise BadRequest(f"DELETE removes one entity, e.g. DELETE /{path.version}/Things(1), or the entities of "
                             f"a collection that pass a $filter, e.g. DELETE /{path.version}/Observations?$filter=…")

        async def delete(conn: AsyncConnection[Any], writer: Writer) -> None:
            entity_id = await self._resolve(conn, path, Role.DELETE)
            await authorize.check(conn, path.entity, entity_id, Role.DELETE)
            await writer.delete(path.entity, entity_id)

        await self._write(delete)
        return Response(status_code=200)

    async def _delete_filtered(self, request: Request, path: ResourcePath) -> Response:
        """DELETE /v1.1/Observations?$filter=…: every entity of the collection that passes the filter, in one
        transaction (all or nothing); the delete role, as any DELETE (`handle`). Without a $filter it is
        refused, so that a forgotten option never empties a collection."""
        params = parse_qsl(request.url.query, keep_blank_values=True)
        given = {name for name, _ in params}
        if "$filter" not in given:
            raise BadRequest(f"DELETE on a collection needs $filter, e.g. DELETE /{path.version}/{path.entity.set_name}"
                             "?$filter=phenomenonTime lt 2020-01-01T00:00:00Z (use $filter=true to delete all)")
        if given - {"$filter"}:
            raise BadRequest(f"DELETE on a collection takes only $filter, not {', '.join(sorted(given - {'$filter'}))}")
        options = parse_query(params, default_top=self.config.default_top, max_top=self.config.max_top)
        authorize.require_global(Role.DELETE, f"delete {path.entity.set_name} by $filter")
        compiled = compile_filtered_delete(path, options, view=_write_view(Role.DELETE))
        deleted: list[int] = []

        async def delete(conn: AsyncConnection[Any], writer: Writer) -> None:
            row = await (await conn.execute(compiled.statement, compiled.params)).fetchone()
            if row is None or row[0] is None:
                raise NotFound(f"nothing found at {path.entity.set_name}: an entity named in the path does not exist")
            deleted.append(int(row[0]))
            writer.observations_removed(row[1])  # their streams' summaries narrow before commit

        await self._write(delete)
        audit.count_rows(request, deleted[0])
        return json_response(orjson.dumps({"deleted": deleted[0]}))


__all__ = ["CONFORMANCE", "DATA_ARRAY_CONFORMANCE", "MQTT_CONFORMANCE", "STAPLUS_CONFORMANCE", "ENTITY_SETS", "StaApi",
           "StaConfig", "error_response"]
