"""CQL2 text -> CQL2 JSON with cql2-rs, in a worker process of its own, with a time limit.

Why a process: cql2-rs parses by backtracking on the native stack while holding the GIL. Nesting deep
enough overflows that stack (a segfault: issue 13, 2,000 brackets in a 4 KB URL), and a text that fails to
parse costs time exponential in its nesting (`x = (1 * (1 * (… 1 -))`: ~4x per level, 47 s at 12 levels),
during which the whole API process - HTTP and the MQTT bridge - stands still. The text bounds in
geo/filtering.py keep known shapes small; this keeps unknown ones from mattering: the API waits for the
worker asynchronously, a parse that takes longer than the limit gets its worker killed (and a new one
started) and a 400, and a worker that crashes costs one 400. Results are cached, since dashboards send the
same filters again and again.

Protocol on the worker's stdin/stdout: a 4-byte big-endian length, then that many bytes; requests are the
UTF-8 text, answers orjson `{"json": tree}` or `{"error": message}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import struct
import sys
from collections import OrderedDict
from typing import Any

import orjson

from sensorthings.model.errors import BadRequest, ServiceUnavailable

log = logging.getLogger("citystream.geo")

TIMEOUT_S = 1.0
"""A valid filter parses in well under a millisecond; one that needs more is hostile."""
CACHE_ENTRIES = 1024
_LENGTH = struct.Struct("!I")


class Cql2TextParser:
    """One worker process, used by one request at a time; started on first use, restarted after a crash
    or a timeout."""

    def __init__(self, timeout_s: float = TIMEOUT_S, cache_entries: int = CACHE_ENTRIES) -> None:
        self.timeout_s = timeout_s
        self.cache_entries = cache_entries
        self._cache: OrderedDict[str, tuple[bool, Any]] = OrderedDict()
        self._lock = asyncio.Lock()
        self._worker: asyncio.subprocess.Process | None = None

    async def to_json(self, text: str) -> Any:
        """The CQL2 JSON tree of `text`; BadRequest when it is not CQL2 text or cannot be parsed in time."""
        found = self._cache.get(text)
        if found is None:
            async with self._lock:
                found = self._cache.get(text) or await self._parse(text)
            self._cache[text] = found
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        self._cache.move_to_end(text)
        parsed, value = found
        if not parsed:
            raise BadRequest(f"filter: {value}", field="filter")
        return value

    async def _parse(self, text: str) -> tuple[bool, Any]:
        try:
            worker = await self._running()
        except OSError as exc:  # no process to be had (out of processes or file descriptors)
            log.error("cannot start the CQL2 parser process: %s", exc)
            raise ServiceUnavailable("the CQL2 parser cannot be started right now; try again shortly") from None
        assert worker.stdin is not None and worker.stdout is not None
        data = text.encode()
        try:
            worker.stdin.write(_LENGTH.pack(len(data)) + data)
            await worker.stdin.drain()
            answer = await asyncio.wait_for(_read_frame(worker.stdout), self.timeout_s)
        except asyncio.CancelledError:  # the request went away: its answer would be read by the next one
            self._discard()
            raise
        except TimeoutError:
            log.warning("a CQL2 text took the parser more than %.1f s; restarting it", self.timeout_s,
                        extra={"filter_chars": len(text)})
            await self._kill()
            return False, f"the CQL2 text is too complex to parse within {self.timeout_s:g} s; simplify it"
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            code = worker.returncode
            log.error("the CQL2 parser process failed (exit %s) on a filter; restarting it", code,
                      extra={"filter_chars": len(text)})
            await self._kill()
            return False, "the CQL2 text could not be parsed; simplify it"
        document = orjson.loads(answer)
        if "json" in document:
            return True, document["json"]
        return False, f"not valid cql2-text: {document['error']}"

    async def _running(self) -> asyncio.subprocess.Process:
        if self._worker is None or self._worker.returncode is not None:
            self._worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "geo.cql2_text", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONSAFEPATH": "1"})  # not the cwd's geo/
        return self._worker

    def _discard(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()

    async def _kill(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
            await worker.wait()

    async def close(self) -> None:
        await self._kill()


async def _read_frame(stream: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    return await stream.readexactly(length)


# ---------------------------------------------------------------------------------------------- the worker


def _die_with_parent() -> None:
    """SIGKILL when the API process dies, even in the middle of a parse that never ends (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(0)


def serve(stdin: Any, stdout: Any) -> None:
    """Answer requests until stdin closes."""
    import cql2

    while header := stdin.read(_LENGTH.size):
        if len(header) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack(header)
        text = stdin.read(length).decode()
        try:
            answer = orjson.dumps({"json": cql2.parse_text(text).to_json()})
        except (cql2.ParseError, ValueError) as exc:
            answer = orjson.dumps({"error": " ".join(str(exc).split()) or type(exc).__name__})
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    _die_with_parent()
    serve(sys.stdin.buffer, sys.stdout.buffer)
