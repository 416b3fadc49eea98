"""The API process stops its background parts side by side (citystream.app.stop_all): a SIGTERM's grace
period is not the sum of their waits, and one that fails does not keep the others running."""

from __future__ import annotations

import asyncio
import logging

import pytest

from citystream import app


def test_parts_stop_side_by_side_and_a_failure_stops_no_other(caplog: pytest.LogCaptureFixture) -> None:
    started: list[str] = []
    stopped: list[str] = []

    async def scenario() -> None:
        both_waiting = asyncio.Event()

        async def waits(name: str) -> None:
            started.append(name)
            if len(started) == 2:
                both_waiting.set()
            await asyncio.wait_for(both_waiting.wait(), 5)  # only ends if the other one started meanwhile
            stopped.append(name)

        async def fails() -> None:
            raise RuntimeError("cannot stop")

        async def first() -> None:
            await waits("first")

        async def second() -> None:
            await waits("second")

        await app.stop_all({"first": first, "broken": fails, "second": second})

    with caplog.at_level(logging.ERROR, logger="citystream"):
        asyncio.run(scenario())
    assert sorted(stopped) == ["first", "second"]
    assert "stopping the broken failed" in caplog.text


def test_a_slow_part_is_named_while_it_is_still_stopping(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(app, "SLOW_STOP_SECONDS", 0.05)

    async def slow() -> None:
        await asyncio.sleep(0.3)

    async def quick() -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="citystream"):
        asyncio.run(app.stop_all({"retention": slow, "audit log": quick}))
    assert "still stopping after" in caplog.text and ": retention" in caplog.text
    assert "stopping the retention took" in caplog.text
    assert "audit log" not in caplog.text
