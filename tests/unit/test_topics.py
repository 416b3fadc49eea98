"""Which reply topics the bridge answers on (mqtt_bridge.bridge.reply_topic), without a broker.

Moved here from tests/mqtt/test_mqtt_hostile.py, which publishes hostile messages to a real Mosquitto.
"""

from __future__ import annotations

import pytest

from mqtt_bridge.bridge import reply_topic


@pytest.mark.parametrize(("requested", "allowed"), [
    ("citystream/errors/device-7/replies", True), ("replies/#", False), ("citystream/errors/+", False),
    ("v1.1/Things(1)", False), ("citystream/errors/" + "x" * 600, False), (None, False), ("", False),
    ("$SYS/broker", False), ("citystream/errors/a\x00b", False),
])
def test_reply_topics(requested: str | None, allowed: bool) -> None:
    assert reply_topic(requested) == (requested if allowed else None)
