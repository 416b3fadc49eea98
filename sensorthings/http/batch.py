"""`POST /v1.1/$batch` (STA 1.1 §11, OData batch): reading the two request formats and writing the answers.

- JSON (OData 4.01 JSON batch): `{"requests": [{"id", "method", "url", "body", "headers", "atomicityGroup"}]}`;
  requests that share an `atomicityGroup` (adjacent) form one change set.
- `multipart/mixed`: one `application/http` part per request; a nested `multipart/mixed` part is a change
  set, whose requests carry a `Content-ID`.

Within a change set a URL may start with `$<id>`, and a body may link `{"@iot.id": "$<id>"}`: the entity
that request `<id>` of the same change set created. Executing the requests is `http/batch_dispatch.py`'s
job (through the routes' handlers); this module reads, binds references and writes.
"""

from __future__ import annotations

import email.parser
import email.policy
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import orjson

from sensorthings.model.errors import BadRequest
from sensorthings.model.json_values import dumps_exact, parse_request_json

METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
MAX_REQUESTS = 1000


@dataclass
class BatchRequest:
    id: str  # the JSON `id` or the multipart `Content-ID` ("" when a multipart part has none)
    method: str
    url: str  # relative to the service root, e.g. "Things(1)/Datastreams?$top=2" or "$1/Locations"
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class ChangeSet:
    requests: list[BatchRequest] = field(default_factory=list)
    id: str = ""  # the atomicityGroup (JSON)


@dataclass
class BatchResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    id: str = ""
    group: str = ""


Item = BatchRequest | ChangeSet


def relative_url(url: str, service_path: str) -> str:
    """A request URL relative to the service root: absolute URLs and `/v1.1/…` paths lose their prefix."""
    parts = urlsplit(url)
    path = parts.path
    if path.startswith(service_path + "/"):
        path = path[len(service_path) + 1:]
    elif path.startswith("/"):
        raise BadRequest(f"$batch: {url!r} is not under the service root {service_path}")
    return path + (f"?{parts.query}" if parts.query else "")


def _request(id_: str, method: Any, url: Any, body: bytes, content_type: str, service_path: str) -> BatchRequest:
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise BadRequest(f"$batch: request {id_ or '?'} has method {method!r}; use GET, POST, PATCH, PUT or DELETE")
    if not isinstance(url, str) or not url:
        raise BadRequest(f"$batch: request {id_ or '?'} needs a url")
    return BatchRequest(id_, method.upper(), relative_url(url, service_path), body, content_type)


def bind_references(body: bytes, created: dict[str, str]) -> bytes:
    """A JSON body with every `{"@iot.id": "$<id>"}` link bound to the entity request `<id>` of the change
    set created (`created`: id -> its path, e.g. "Things(5)"). KeyError(<id>) for an unknown one."""
    try:
        document = parse_request_json(body)
    except BadRequest:
        return body  # the handler reports it

    def bind(value: Any) -> Any:
        if isinstance(value, dict):
            link = value.get("@iot.id")
            if isinstance(link, str) and link.startswith("$"):
                path = created[link[1:]]
                value = {**value, "@iot.id": int(path.rsplit("(", 1)[1].rstrip(")"))}
            return {k: bind(v) for k, v in value.items()}
        if isinstance(value, list):
            return [bind(v) for v in value]
        return value

    return dumps_exact(bind(document))


# ------------------------------------------------------------------------------------------------ JSON


def read_json(raw: bytes, service_path: str) -> list[Item]:
    document = parse_request_json(raw)
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list) or not requests:
        raise BadRequest('$batch: a JSON batch is {"requests": [{"id": …, "method": …, "url": …}, …]}')
    if len(requests) > MAX_REQUESTS:
        raise BadRequest(f"$batch: at most {MAX_REQUESTS} requests per batch")
    items: list[Item] = []
    seen_groups: set[str] = set()
    for n, entry in enumerate(requests):
        if not isinstance(entry, dict):
            raise BadRequest(f"$batch: requests[{n}] must be an object")
        id_ = str(entry.get("id", n + 1))
        given_headers = entry.get("headers") or {}
        if not isinstance(given_headers, dict):
            raise BadRequest(f"$batch: requests[{n}].headers must be an object of header names and values")
        headers = {str(k).lower(): str(v) for k, v in given_headers.items()}
        body = entry.get("body")
        raw_body = b"" if body is None else (body.encode() if isinstance(body, str) else dumps_exact(body))
        request = _request(id_, entry.get("method"), entry.get("url"), raw_body,
                           headers.get("content-type", "application/json"), service_path)
        group = entry.get("atomicityGroup")
        if group is None:
            items.append(request)
            continue
        group = str(group)
        last = items[-1] if items else None
        if isinstance(last, ChangeSet) and last.id == group:
            last.requests.append(request)
        elif group in seen_groups:
            raise BadRequest(f"$batch: the requests of atomicityGroup {group!r} must be adjacent")
        else:
            seen_groups.add(group)
            items.append(ChangeSet([request], group))
    return items


def write_json(responses: list[BatchResponse]) -> bytes:
    out = []
    for r in responses:
        entry: dict[str, Any] = {"id": r.id, "status": r.status, "headers": r.headers}
        if r.group:
            entry["atomicityGroup"] = r.group
        if r.body:
            entry["body"] = orjson.Fragment(r.body) if r.headers.get("content-type", "").startswith(
                "application/json") else r.body.decode()
        out.append(entry)
    return orjson.dumps({"responses": out})


# ------------------------------------------------------------------------------------------------ multipart


def read_multipart(raw: bytes, content_type: str, service_path: str) -> list[Item]:
    message = _mime(raw, content_type)
    if not message.is_multipart():
        raise BadRequest("$batch: a multipart/mixed body needs its boundary in the Content-Type")
    items: list[Item] = []
    for part in message.iter_parts():
        if part.get_content_type() == "multipart/mixed":
            items.append(ChangeSet([_http_request(p, service_path, in_changeset=True) for p in part.iter_parts()]))
        else:
            items.append(_http_request(part, service_path, in_changeset=False))
    if not items:
        raise BadRequest("$batch: the multipart body has no parts")
    if sum(len(i.requests) if isinstance(i, ChangeSet) else 1 for i in items) > MAX_REQUESTS:
        raise BadRequest(f"$batch: at most {MAX_REQUESTS} requests per batch")
    return items


def _mime(raw: bytes, content_type: str) -> EmailMessage:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _http_request(part: MIMEPart, service_path: str, *, in_changeset: bool) -> BatchRequest:
    if part.get_content_type() != "application/http":
        raise BadRequest(f"$batch: a part must be application/http, not {part.get_content_type()}")
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload.strip():
        raise BadRequest("$batch: an application/http part must hold an HTTP request, e.g. 'GET Things HTTP/1.1'")
    head, _, body = payload.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8", "replace").strip().split("\n")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise BadRequest(f"$batch: {lines[0]!r} is not an HTTP request line such as 'GET Things(1) HTTP/1.1'")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    content_id = str(part.get("Content-ID", "")).strip()
    if in_changeset and not content_id:
        raise BadRequest("$batch: every request of a change set needs a Content-ID header")
    return _request(content_id, request_line[0], request_line[1], body.rstrip(b"\n"),
                    headers.get("content-type", "application/json"), service_path)


def write_multipart(results: list[BatchResponse | list[BatchResponse]]) -> tuple[bytes, str]:
    """The multipart/mixed answer and its Content-Type; a change set's answers nested, or a failed change
    set's one error answer in its place."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for result in results:
        chunks.append(f"--{boundary}\r\n".encode())
        if isinstance(result, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            chunks.append(f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode())
            for response in result:
                chunks.append(f"--{inner}\r\n".encode() + _http_part(response))
            chunks.append(f"--{inner}--\r\n".encode())
        else:
            chunks.append(_http_part(result))
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"


def _http_part(response: BatchResponse) -> bytes:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if response.id:
        head += f"Content-ID: {response.id}\r\n"
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:  # a status without a standard phrase
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}"] + [f"{k}: {v}" for k, v in response.headers.items()]
    return (head + "\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode() + response.body + b"\r\n"
