"""Which STA topics somebody subscribed to, learned from Mosquitto's own log.

Mosquitto does not tell clients who subscribed to what, and publishing every notification to every topic a
change could concern (entity set, entity, each collection it belongs to, each `$select` variant) would
multiply the broker's load by ten for nobody. The broker config (citystream/embedded/, deploy/mosquitto)
therefore logs subscribes, unsubscribes, connects and disconnects to `$SYS/broker/log/...`, which only the
platform account may read; this registry follows that log and the notifier publishes only on topics that
have a subscriber. Formats (Mosquitto 2.0, see EmbeddedMosquitto):

    $SYS/broker/log/M/subscribe     "<ts>: <client id> <qos> <filter>"
    $SYS/broker/log/M/unsubscribe   "<ts>: <client id> <filter>"
    $SYS/broker/log/N               "<ts>: New client connected from <addr> as <client id> (p5, c1, k60...)."
                                    "<ts>: Client <client id> disconnected." (and the other ways to leave)

Limits, documented in docs/mqtt.md: subscriptions made while no platform process was connected are not
known until the client subscribes again; a persistent session (c0) keeps its topics until it unsubscribes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from paho.mqtt.client import topic_matches_sub

from mqtt_bridge.topics import PREFIXES, TopicQuery, collection_topic, split_query
from sensorthings.model.errors import StaError

log = logging.getLogger("citystream.notify")

SUBSCRIBE_TOPIC = "$SYS/broker/log/M/subscribe"
UNSUBSCRIBE_TOPIC = "$SYS/broker/log/M/unsubscribe"
NOTICE_TOPIC = "$SYS/broker/log/N"
LOG_FILTERS = (SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, NOTICE_TOPIC)

_SUBSCRIBE = re.compile(r"^[^ ]+: (?P<client>.*?) (?P<qos>[012]) (?P<filter>.+)$", re.S)
_UNSUBSCRIBE = re.compile(r"^[^ ]+: (?P<rest>.+)$", re.S)  # "<client id> <filter>": both may hold spaces
_CONNECTED = re.compile(r"^[^ ]+: New client connected from .* as (?P<client>.*) \(p\d+, c(?P<clean>[01]),")
_LEFT = re.compile(r"^[^ ]+: Client (?P<client>.*) (?:disconnected|closed its connection|has exceeded timeout)")


@dataclass
class SubscriptionRegistry:
    """Topic filters with at least one subscriber, each with the query options asked for on it (None: the
    full entity; topics.TopicQuery: `$select`, `$filter`, `$expand`). `ignored_clients` are the platform's
    own connections."""

    ignored_clients: set[str] = field(default_factory=set)
    _by_client: dict[str, set[str]] = field(default_factory=dict)
    _clean: set[str] = field(default_factory=set)
    _exact: dict[str, set[TopicQuery | None]] = field(default_factory=dict)
    _wildcards: list[tuple[str, TopicQuery | None]] = field(default_factory=list)
    _parsed: dict[str, tuple[str, TopicQuery | None]] = field(default_factory=dict)
    """Each filter held, split and parsed once (topics.split_query)."""

    @property
    def empty(self) -> bool:
        return not self._exact and not self._wildcards

    def handle_log(self, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        if topic == SUBSCRIBE_TOPIC and (m := _SUBSCRIBE.match(text)):
            self.add(m["client"], m["filter"])
        elif topic == UNSUBSCRIBE_TOPIC and (m := _UNSUBSCRIBE.match(text)):
            self._unsubscribed(m["rest"])
        elif topic == NOTICE_TOPIC and (m := _CONNECTED.match(text)):
            if m["clean"] == "1":
                self.drop_client(m["client"])  # a clean start discards the old session's subscriptions
                self._clean.add(m["client"])
            else:
                self._clean.discard(m["client"])
        elif topic == NOTICE_TOPIC and (m := _LEFT.match(text)) and m["client"] in self._clean:
            self.drop_client(m["client"])
            self._clean.discard(m["client"])

    def add(self, client: str, topic_filter: str) -> None:
        topic_filter = _unshared(topic_filter)
        if client in self.ignored_clients or not _concerns_sta(topic_filter):
            return
        if topic_filter not in self._parsed:
            self._parsed[topic_filter] = split_query(topic_filter)  # parses: _concerns_sta let only good ones in
        self._by_client.setdefault(client, set()).add(topic_filter)
        self._rebuild()

    def remove(self, client: str, topic_filter: str) -> None:
        topic_filter = _unshared(topic_filter)
        filters = self._by_client.get(client)
        if filters and topic_filter in filters:
            filters.discard(topic_filter)
            self._rebuild()

    def _unsubscribed(self, rest: str) -> None:
        """`rest` is "<client id> <filter>", and a filter with a query may hold spaces (`?$filter=result gt
        5`), as may a client id: the split is the one that names a filter the client holds."""
        for n, char in enumerate(rest):
            if char == " " and _unshared(rest[n + 1:]) in self._by_client.get(rest[:n], ()):
                self.remove(rest[:n], rest[n + 1:])
                return

    def drop_client(self, client: str) -> None:
        if self._by_client.pop(client, None):
            self._rebuild()

    def covers(self, version: str) -> bool:
        """True when some subscription may match a topic of `version` (`v1.0/…`): the notifier renders a
        version only for its subscribers."""
        prefix = f"{version}/"
        return (any(t.startswith(prefix) for t in self._exact)
                or any(b == "#" or b.startswith((prefix, "+/")) for b, _ in self._wildcards))

    def filters(self) -> list[str]:
        return sorted({f for filters in self._by_client.values() for f in filters})

    def queries(self, topic: str) -> set[TopicQuery | None]:
        """For a concrete topic (no query): the query options wanted on it (None = the full entity; a
        notification for a TopicQuery goes to `f"{topic}?{query.text}"`)."""
        wanted = set(self._exact.get(topic, ()))
        for base, query in self._wildcards:
            if topic_matches_sub(base, topic):
                wanted.add(query)
        return wanted

    def _rebuild(self) -> None:
        exact: dict[str, set[TopicQuery | None]] = {}
        wildcards: set[tuple[str, TopicQuery | None]] = set()
        held = {f for filters in self._by_client.values() for f in filters}
        self._parsed = {f: parsed for f, parsed in self._parsed.items() if f in held}
        for base, query in self._parsed.values():
            if "+" in base or "#" in base:
                wildcards.add((base, query))
            else:
                exact.setdefault(base, set()).add(query)
        self._exact, self._wildcards = exact, sorted(wildcards, key=str)


def _unshared(topic_filter: str) -> str:
    """The filter a shared subscription (`$share/<group>/<filter>`) stands for: its group gets the
    notifications on it like any subscriber (the bridge's own group is one of `ignored_clients`)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def _concerns_sta(topic_filter: str) -> bool:
    """Filters that can match a notification topic: with query options (topics.topic_query), only a
    collection topic whose options parse (others are ignored, logged at debug)."""
    if topic_filter.startswith("$"):
        return False  # $SYS (shared subscriptions come here without their `$share/<group>/`)
    if not (topic_filter.startswith((*PREFIXES, "+/")) or topic_filter == "#"):
        return False
    if "?" in topic_filter:
        try:
            base, _ = split_query(topic_filter)
        except StaError as exc:
            log.debug("subscription %r ignored: %s", topic_filter[:200], exc)
            return False
        if "#" in base or not ("+" in base.rsplit("/", 1)[-1] or collection_topic(base)):
            log.debug("subscription %r ignored: query options apply to collection topics only", topic_filter[:200])
            return False
    return True
