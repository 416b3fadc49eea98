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

import re
from dataclasses import dataclass, field

from paho.mqtt.client import topic_matches_sub

from mqtt_bridge.topics import PREFIXES, collection_topic, split_select
from sensorthings.model.errors import StaError

SUBSCRIBE_TOPIC = "$SYS/broker/log/M/subscribe"
UNSUBSCRIBE_TOPIC = "$SYS/broker/log/M/unsubscribe"
NOTICE_TOPIC = "$SYS/broker/log/N"
LOG_FILTERS = (SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, NOTICE_TOPIC)

_SUBSCRIBE = re.compile(r"^[^ ]+: (?P<client>.*?) (?P<qos>[012]) (?P<filter>.+)$", re.S)
_UNSUBSCRIBE = re.compile(r"^[^ ]+: (?P<client>.*?) (?P<filter>[^ ]+)$", re.S)
_CONNECTED = re.compile(r"^[^ ]+: New client connected from .* as (?P<client>.*) \(p\d+, c(?P<clean>[01]),")
_LEFT = re.compile(r"^[^ ]+: Client (?P<client>.*) (?:disconnected|closed its connection|has exceeded timeout)")


@dataclass
class SubscriptionRegistry:
    """Topic filters with at least one subscriber, each with the `$select` texts asked for (None: the full
    entity). `ignored_clients` are the platform's own connections."""

    ignored_clients: set[str] = field(default_factory=set)
    _by_client: dict[str, set[str]] = field(default_factory=dict)
    _clean: set[str] = field(default_factory=set)
    _exact: dict[str, set[str | None]] = field(default_factory=dict)
    _wildcards: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self._exact and not self._wildcards

    def handle_log(self, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        if topic == SUBSCRIBE_TOPIC and (m := _SUBSCRIBE.match(text)):
            self.add(m["client"], m["filter"])
        elif topic == UNSUBSCRIBE_TOPIC and (m := _UNSUBSCRIBE.match(text)):
            self.remove(m["client"], m["filter"])
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
        if client in self.ignored_clients or not _concerns_sta(topic_filter):
            return
        self._by_client.setdefault(client, set()).add(topic_filter)
        self._rebuild()

    def remove(self, client: str, topic_filter: str) -> None:
        filters = self._by_client.get(client)
        if filters and topic_filter in filters:
            filters.discard(topic_filter)
            self._rebuild()

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

    def selects(self, topic: str) -> set[str | None]:
        """For a concrete topic: the `$select` texts wanted on it (None = the full entity)."""
        wanted = set(self._exact.get(topic, ()))
        for base, select in self._wildcards:
            if topic_matches_sub(base, topic):
                wanted.add(select)
        return wanted

    def _rebuild(self) -> None:
        exact: dict[str, set[str | None]] = {}
        wildcards: set[tuple[str, str | None]] = set()
        for filters in self._by_client.values():
            for topic_filter in filters:
                base, mark, select_text = topic_filter.partition("?$select=")
                select = select_text if mark else None
                if "+" in base or "#" in base:
                    wildcards.add((base, select))
                else:
                    exact.setdefault(base, set()).add(select)
        self._exact, self._wildcards = exact, sorted(wildcards, key=str)


def _concerns_sta(topic_filter: str) -> bool:
    """Filters that can match a notification topic, with a `$select` that parses (others are ignored)."""
    if topic_filter.startswith("$"):
        return False  # $SYS, and $share groups (the bridge's own create subscriptions)
    if not (topic_filter.startswith((*PREFIXES, "+/")) or topic_filter == "#"):
        return False
    if "?$select=" in topic_filter:
        try:
            base, _ = split_select(topic_filter)
        except StaError:
            return False
        return "#" not in base and ("+" in base.rsplit("/", 1)[-1] or collection_topic(base))
    return True
