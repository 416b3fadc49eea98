"""Executing a `POST /v1.1/$batch`: each request through the STA handlers as if sent alone, except that a
change set's requests share one transaction (all or nothing) and may name what earlier ones created `$<id>`.

Apart from batch.py, which reads the request formats and writes the answers without knowing a handler, and
from routes.py, whose handlers it reaches only through the `handle` and `write` it is given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from fastapi import Request, Response
from psycopg import AsyncConnection
from starlette.requests import Request as StarletteRequest

from sensorthings.http import audit, batch
from sensorthings.http.common import json_response
from sensorthings.http.transactions import change_set_transaction
from sensorthings.model.errors import BadRequest
from sensorthings.write.writer import Writer

BATCH = "$batch"
Answers = list[batch.BatchResponse]
Handle = Callable[[Request, str], Awaitable[Response]]
"""One request of the STA API: StaApi.handle."""
Write = Callable[[Callable[[AsyncConnection[Any], Writer], Awaitable[Answers]]], Awaitable[Answers]]
"""Work in one write transaction: StaApi._write."""


class _ChangeSetFailed(Exception):
    """A request of a change set failed: the change set's transaction rolls back."""

    def __init__(self, response: batch.BatchResponse) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class BatchDispatch:
    """The requests of one $batch, run through `handle`; a change set's in one transaction of `write`."""

    handle: Handle
    write: Write

    async def run(self, request: Request, raw: bytes, service_path: str) -> Response:
        """POST $batch: the requests in order, each as if sent alone, except that a change set's requests
        share one transaction (all or nothing) and may name entities created before them as `$<id>`."""
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/mixed")
        if multipart:
            items = batch.read_multipart(raw, content_type, service_path)
        elif content_type.lower().startswith("application/json") or not content_type:
            items = batch.read_json(raw, service_path)
        else:
            raise BadRequest("$batch takes application/json (OData JSON batch) or multipart/mixed")
        results: list[batch.BatchResponse | list[batch.BatchResponse]] = []
        for item in items:
            if isinstance(item, batch.BatchRequest):
                results.append(await self._batch_request(request, item, {}, service_path))
            else:
                results.append(await self._change_set(request, item, service_path))
        if multipart:
            body, media_type = batch.write_multipart(results)
            return Response(body, media_type=media_type)
        flat = [r for result in results for r in (result if isinstance(result, list) else [result])]
        return json_response(batch.write_json(flat))

    async def _change_set(self, outer: Request, change_set: batch.ChangeSet, service_path: str
                          ) -> batch.BatchResponse | list[batch.BatchResponse]:
        """All of a change set's answers, or, when one request fails, the failed one's answer (multipart)
        followed by 424 for the others (JSON); nothing of it is committed then. Its requests' audit entries
        wait for that outcome (sensorthings.http.audit.change_set)."""
        with audit.change_set() as entries:
            return await self._change_set_work(outer, change_set, service_path, entries)

    async def _change_set_work(self, outer: Request, change_set: batch.ChangeSet, service_path: str,
                               entries: audit.ChangeSetEntries) -> batch.BatchResponse | list[batch.BatchResponse]:
        async def work(conn: AsyncConnection[Any], writer: Writer) -> list[batch.BatchResponse]:
            entries.attempt()
            with change_set_transaction(conn, writer):
                created: dict[str, str] = {}
                answers = []
                for item in change_set.requests:
                    if item.method == "GET":
                        raise _ChangeSetFailed(_batch_error(400, "a change set may not contain GET requests", item))
                    answer = await self._batch_request(outer, item, created, service_path)
                    if answer.status >= 400:
                        raise _ChangeSetFailed(answer)
                    location = answer.headers.get("location")
                    if location and item.id:
                        created[item.id] = batch.relative_url(location, service_path)
                    answers.append(answer)
                return answers

        try:
            answers = await self.write(work)
        except _ChangeSetFailed as failed:
            entries.rolled_back()
            failed.response.group = change_set.id
            if not change_set.id:  # multipart: one answer for the change set
                return failed.response
            others = [_batch_error(424, f"not applied: request {failed.response.id} of atomicityGroup "
                                        f"{change_set.id} failed", item, change_set.id)
                      for item in change_set.requests if item.id != failed.response.id]
            return [failed.response, *others]
        for answer in answers:
            answer.group = change_set.id
        return answers

    async def _batch_request(self, outer: Request, item: batch.BatchRequest, created: dict[str, str],
                             service_path: str) -> batch.BatchResponse:
        """One request of a batch, through the same handlers as a request of its own."""
        url = item.url
        if unquote(url.split("?")[0]).strip("/") == BATCH:
            return _batch_error(400, "$batch cannot be nested in a batch", item)
        if url.startswith("$"):
            reference, _, rest = url[1:].partition("/")
            target = created.get(reference.split("?")[0])
            if target is None:
                return _batch_error(400, f"{url!r} refers to ${reference}, which no earlier request of this "
                                         "change set created", item)
            url = target + ("/" + rest if rest else "")
        resource, _, query = url.partition("?")
        body = item.body
        if created and b'"$' in body:
            try:
                body = batch.bind_references(body, created)
            except KeyError as missing:
                return _batch_error(400, f"the body refers to ${missing.args[0]}, which no earlier request of "
                                         "this change set created", item)
        headers = [(k, v) for k, v in outer.scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", item.content_type.encode()), (b"content-length", str(len(body)).encode())]
        scope = {**outer.scope, "method": item.method, "path": f"{service_path}/{resource}",
                 "raw_path": f"{service_path}/{resource}".encode(), "query_string": query.encode(),
                 "headers": headers}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        response = await self.handle(StarletteRequest(scope, receive), unquote(resource))
        kept = {k: v for k, v in response.headers.items() if k in ("location", "content-type", "link")}
        return batch.BatchResponse(response.status_code, kept, bytes(response.body), item.id)


def _batch_error(status: int, message: str, item: batch.BatchRequest, group: str = "") -> batch.BatchResponse:
    body = orjson.dumps({"code": status, "type": "error", "message": message})
    return batch.BatchResponse(status, {"content-type": "application/json"}, body, item.id, group)
