"""Fuzz tier, MQTT (issue 13): hypothesis-generated hostile payloads mixed with good Observations, published
at QoS 1 through paho to the real broker and bridge. Every good one must be stored, every message accounted
for exactly once (stored, or dead-lettered: nothing lost, nothing twice), and the bridge still alive.

Bounded in time: CITYSTREAM_FUZZ_MQTT_EXAMPLES examples (default 60) of up to 40 hostile messages each."""

from __future__ import annotations

import os
import threading
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.embedded import EmbeddedMosquitto
from mqtt_bridge.bridge import AUDIENCE_PROPERTY, CLIENT_PROPERTY, PRINCIPAL_PROPERTY
from tests import fuzz_report
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import create, create_datastream, feature_body

EXAMPLES = int(os.environ.get("CITYSTREAM_FUZZ_MQTT_EXAMPLES", "60"))
MARK = "fuzz-good-"

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
times = st.one_of(st.sampled_from(["2026-11-22T08:00:00Z", "2026-11-22T08:00:00+01:00", "2026-11-22",
                                   "2026-11-22T08:00:00Z/2026-11-22T07:00:00Z", "0000-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59-23:59", "T", ""]), st.text(max_size=30), json_leaf)


def _deep(depth: int, opener: bytes, closer: bytes) -> bytes:
    return b'{"result": 1, "parameters": ' + opener * depth + b"1" * (opener == b'{"a": ') + closer * depth + b"}"


ids = st.one_of(st.integers(-(2**63), 2**63 - 1), json_leaf)
observation_like = st.tuples(st.fixed_dictionaries({}, optional={
    "result": json_value, "phenomenonTime": times, "resultTime": times, "validTime": times,
    "parameters": json_value, "resultQuality": json_value,
    "Datastream": st.one_of(json_value, st.fixed_dictionaries({"@iot.id": ids})),
    "FeatureOfInterest": st.one_of(json_value, st.fixed_dictionaries({"@iot.id": ids})),
    "MultiDatastream": json_value,
}), st.dictionaries(st.text(max_size=10), json_value, max_size=2)).map(lambda t: orjson.dumps({**t[1], **t[0]}))
hostile = st.one_of(
    st.binary(max_size=200),
    json_value.map(orjson.dumps),
    observation_like,
    st.tuples(observation_like, st.binary(min_size=1, max_size=4), st.integers(0, 60)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]),  # bytes spliced in: broken UTF-8, broken JSON
    st.integers(90, 6000).map(lambda n: _deep(n, b"[", b"]")),
    st.integers(90, 3000).map(lambda n: _deep(n, b'{"a": ', b"}")),
    st.sampled_from([b'{"result": NaN}', b'{"result": 1e400}', b'{"result": 1e99999999999999999999}',
                     b'{"result": ' + b"9" * 5000 + b"}",
                     b'{"result": "\\ud800"}', b'{"result": "a\\u0000"}', b'{"result": "\xed\xa0\x80"}',
                     b"\xef\xbb\xbf{}", b"", b"null", b"[]", b'"x"']),
)


FORGED = [(PRINCIPAL_PROPERTY, '{"kind":"anonymous","name":"anonymous","roles":[]}'),
          (CLIENT_PROPERTY, "citystream-bridge"), (AUDIENCE_PROPERTY, "r")]
"""What every good message claims: were it believed, the bridge would refuse the good ones (403)."""
property_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)  # valid MQTT strings
user_properties = st.lists(st.tuples(st.one_of(st.sampled_from([PRINCIPAL_PROPERTY, CLIENT_PROPERTY,
                                                                AUDIENCE_PROPERTY, "citystream-", "client_id"]),
                                               property_text), property_text), max_size=4)
Message = tuple[str, bytes, list[tuple[str, str]]]


class Publisher:
    """A paho MQTT 5 client of the sensor account that publishes at QoS 1 and waits for every PUBACK."""

    def __init__(self, broker: EmbeddedMosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(broker.sensor_username, broker.sensor_password)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert connected.wait(10), "no CONNACK"

    def publish(self, messages: list[Message]) -> None:
        infos = []
        for topic, payload, user in messages:
            properties = Properties(PacketTypes.PUBLISH)
            if user:
                properties.UserProperty = user
            infos.append(self.client.publish(topic, payload, qos=1, properties=properties))
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _totals(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM observations), (SELECT count(*) FROM dead_letters)"
                           ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _stored_marks(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT result_string FROM observations WHERE result_string LIKE %s",
                            (MARK + "%",)).fetchall()
    return {r[0] for r in rows}


def test_hostile_payloads_among_good_ones(sta: str, server_url: str, database_url: str,
                                          mosquitto_server: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body())
    topics = [f"v1.1/Datastreams({datastream})/Observations", "v1.1/Observations",
              f"v1.1/FeaturesOfInterest({feature})/Observations", "v1.1/Datastreams(999999)/Observations",
              f"v1.1/MultiDatastreams({datastream})/Observations"]
    publisher = Publisher(mosquitto_server)
    examples = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.sampled_from(topics), hostile, user_properties), min_size=1, max_size=40))
    def publish_and_account(bad: list[Message]) -> None:
        examples[0] += 1
        before = _totals(database_url)
        good: list[Message] = []
        messages: list[Message] = []
        for n, message in enumerate(bad):
            mark = f"{MARK}{examples[0]}-{n}"
            good.append((topics[0], orjson.dumps({"result": mark}), FORGED))
            messages += [good[-1], message]
        publisher.publish(messages)
        wanted = {orjson.loads(payload)["result"] for _, payload, _user in good}
        wait_for(lambda: wanted <= _stored_marks(database_url), timeout=60, what="every good message stored")

        def accounted() -> Any:
            stored, dead = _totals(database_url)
            return (stored - before[0]) + (dead - before[1]) == len(messages) or (stored, dead)

        wait_for(accounted, timeout=60, what=f"each of {len(messages)} messages stored or dead-lettered once")
        stored, dead = _totals(database_url)
        fuzz_report.add("mqtt", cases=len(bad), good=len(good), stored_hostile=stored - before[0] - len(good),
                        dead_lettered=dead - before[1])

    try:
        publish_and_account()
        publisher.publish([(topics[0], orjson.dumps({"result": MARK + "last"}), FORGED)])
        wait_for(lambda: MARK + "last" in _stored_marks(database_url), what="the bridge alive after the fuzzing")
        fuzz_report.add("mqtt", crashes=0)
    finally:
        publisher.close()
