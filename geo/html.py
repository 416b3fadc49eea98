"""The HTML encoding: the same documents as the JSON, rendered as plain pages a browser can navigate.

Deliberately generic (a document is links, metadata and maybe features) and free of external assets, so
it works offline and inside a city's intranet.
"""

from __future__ import annotations

from html import escape
from typing import Any

import orjson

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}code,pre{font-size:.85rem}nav a{margin-right:1rem}"""


def _value(value: Any) -> str:
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return f'<a href="{escape(value)}">{escape(value)}</a>'
    if isinstance(value, dict | list):
        return f"<code>{escape(orjson.dumps(value).decode())}</code>"
    return escape("" if value is None else str(value))


def _links(links: list[dict[str, Any]]) -> str:
    items = "".join(
        f'<li><a href="{escape(link["href"])}">{escape(link.get("title") or link["href"])}</a> '
        f'<small>({escape(link["rel"])}, {escape(link.get("type", ""))})</small></li>'
        for link in links)
    return f"<h2>Links</h2><ul>{items}</ul>"


def _features(features: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for feature in features:
        names += [n for n in feature.get("properties") or {} if n not in names]
    head = "".join(f"<th>{escape(n)}</th>" for n in ["id", *names, "geometry"])
    rows = []
    for feature in features:
        props = feature.get("properties") or {}
        cells = [_value(feature.get("id")), *(_value(props.get(n)) for n in names), _value(feature.get("geometry"))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h2>Features</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _table(document: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{_value(v)}</td></tr>" for k, v in document.items())
    return f"<table>{rows}</table>" if rows else ""


def page(title: str, document: dict[str, Any]) -> str:
    """A document (landing page, collection(s), conformance, schema, feature or FeatureCollection) as HTML."""
    body = [f"<h1>{escape(title)}</h1>"]
    if document.get("description"):
        body.append(f"<p>{escape(str(document['description']))}</p>")
    rest = {k: v for k, v in document.items() if k not in ("links", "features", "collections", "title",
                                                               "description", "properties", "type")}
    if document.get("type") == "Feature":
        rest["properties"] = document.get("properties")
    body.append(_table(rest))
    if isinstance(document.get("properties"), dict) and document.get("type") != "Feature":
        body.append("<h2>Properties</h2>" + _table(document["properties"]))
    for collection in document.get("collections", []):
        items = next((link["href"] for link in collection["links"] if link["rel"] == "items"), "")
        body.append(f'<h2><a href="{escape(items)}">{escape(collection["title"])}</a></h2>'
                    f'<p>{escape(collection["description"])}</p>' + _table({"id": collection["id"],
                                                                             "extent": collection["extent"]}))
    if "features" in document:
        body.append(_features(document["features"]))
    if document.get("links"):
        body.append(_links(document["links"]))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body>{"".join(body)}</body></html>')


def api_page(document: dict[str, Any]) -> str:
    """The OpenAPI document as a list of paths and their parameters (no external Swagger UI assets)."""
    sections = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            params = [p.get("name") or p.get("$ref", "").rsplit("/", 1)[-1] for p in operation.get("parameters", [])]
            sections.append(f"<tr><td><code>{escape(method.upper())} {escape(path)}</code></td>"
                            f"<td>{escape(operation.get('summary', ''))}</td><td>{escape(', '.join(params))}</td></tr>")
    table = f"<table><tr><th>operation</th><th>summary</th><th>parameters</th></tr>{''.join(sections)}</table>"
    return page(document["info"]["title"], {"description": document["info"].get("description", "")}).replace(
        "</body>", table + "</body>")
