"""Masterportal's nextLink rule as a small client (tests/clients/test_masterportal_walker.py says why).

Masterportal (Hamburg's geoportal, FROST-era) follows every `@iot.nextLink`, the root one and each nested
`<Nav>@iot.nextLink`, merges the pages of a nested one into its parent entity, and drops a link whose `$top`
is not larger than its `$skip`: its rule for "the client asked for a fixed number"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

NEXT = "@iot.nextLink"
MAX_REQUESTS = 400  # far more than any walk in the tests needs: more means the links never end


@dataclass
class MasterportalWalker:
    """Masterportal's nextLink rule: follow every root and nested nextLink unless its `$top` <= its `$skip`,
    and merge the pages of a nested one into the parent's array."""

    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))
    requests: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @staticmethod
    def follows(link: str) -> bool:
        query = parse_qs(urlsplit(link).query)
        top, skip = query.get("$top"), int(query.get("$skip", ["0"])[0])
        return top is None or int(top[0]) > skip

    def get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        self.requests.append(url)
        assert len(self.requests) <= MAX_REQUESTS, "the walk does not end"
        response = self.client.get(url, params=params)
        assert response.status_code == 200, f"{url} -> {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def collection(self, url: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every page of a collection, nested nextLinks resolved in each entity."""
        body = self.get(url, params)
        entities: list[dict[str, Any]] = []
        while True:
            self.resolve(body["value"])
            entities += body["value"]
            link = body.get(NEXT)
            if link is None:
                return entities
            if not self.follows(link):
                self.dropped.append(link)
                return entities
            body = self.get(link)

    def resolve(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.resolve(item)
            return
        if not isinstance(node, dict):
            return
        for key in list(node):
            if key.endswith(NEXT) and key != NEXT and isinstance(node.get(key[:-len(NEXT)]), list):
                link = node.pop(key)
                if self.follows(link):
                    node[key[:-len(NEXT)]] += self.collection(link)
                else:
                    self.dropped.append(link)
            else:
                self.resolve(node[key])


def once(ids: list[int]) -> set[int]:
    assert len(ids) == len(set(ids)), f"duplicates: {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    return set(ids)
