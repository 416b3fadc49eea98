"""The `citystream` command's flags and environment, parsed in-process (no subprocess, no services).

Moved here from tests/platform/test_embedded_cli.py, which runs the command end to end.
"""

from __future__ import annotations

import pytest

from citystream.cli import build_parser, settings_from


def test_mqtt_host_flag_and_environment() -> None:
    parser = build_parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CITYSTREAM_MQTT_HOST", raising=False)
        assert settings_from(parser.parse_args(["up", "--host", "0.0.0.0"])).mqtt_host == "127.0.0.1"
        assert settings_from(parser.parse_args(["up", "--mqtt-host", "0.0.0.0"])).mqtt_host == "0.0.0.0"
        mp.setenv("CITYSTREAM_MQTT_HOST", "::")
        assert settings_from(parser.parse_args(["up"])).mqtt_host == "::"
