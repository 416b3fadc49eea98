"""The CQL2 text parser's worker process (geo/cql2_text.py): answers, errors, a crash and a timeout."""

from __future__ import annotations

import asyncio

import pytest

from geo.cql2_text import Cql2TextParser
from sensorthings.model.errors import BadRequest


def test_parses_reports_and_survives_a_crash_and_a_timeout() -> None:
    async def run() -> list[str]:
        parser = Cql2TextParser(timeout_s=1.0)
        outcomes = []
        try:
            tree = await parser.to_json("name = 'a' AND index > 3")
            outcomes.append(tree["op"])
            for text in ("name = ", "(" * 5000 + "name = 'a'" + ")" * 5000,  # a segfault in the worker
                         "x = " + "(1 * (" * 14 + "1 -" + "))" * 14):  # minutes of backtracking
                with pytest.raises(BadRequest) as refused:
                    await parser.to_json(text)
                outcomes.append(refused.value.message)
            outcomes.append((await parser.to_json("name = 'b'"))["op"])  # a new worker took over
        finally:
            await parser.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes[0] == "and" and outcomes[-1] == "="
    assert "not valid cql2-text" in outcomes[1]
    assert "could not be parsed" in outcomes[2]
    assert "too complex" in outcomes[3]


def test_concurrent_requests_share_one_worker_and_the_cache() -> None:
    async def run() -> list[object]:
        parser = Cql2TextParser()
        try:
            return await asyncio.gather(*(parser.to_json(f"name = '{n % 3}'") for n in range(30)))
        finally:
            await parser.close()

    trees = asyncio.run(run())
    assert len({str(t) for t in trees}) == 3


def test_a_request_that_goes_away_mid_parse_leaves_no_answer_for_the_next() -> None:
    async def run() -> tuple[object, object]:
        parser = Cql2TextParser(timeout_s=5.0)
        try:
            slow = asyncio.create_task(parser.to_json("x = " + "(1 * (" * 9 + "1 -" + "))" * 9))  # ~1 s
            await asyncio.sleep(0.3)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            return await parser.to_json("name = 'next'"), await parser.to_json("name = 'after'")
        finally:
            await parser.close()

    first, second = asyncio.run(run())
    assert first == {"op": "=", "args": [{"property": "name"}, "next"]}
    assert second == {"op": "=", "args": [{"property": "name"}, "after"]}
