"""One logging set-up for every CityStream process (`up`, `serve`, `bridge`, its workers, `demo`, `migrate`).

Why: an operator needs one stream of records to search, from every process, in one shape. Each record is
one line on stdout (where containers, systemd and `citystream up` collect it), written with a single
write(2), so processes sharing the stream never interleave within a line:

- `json` (default): one object per line - `time` (ISO 8601, UTC, milliseconds), `level`, `logger`,
  `message`, `pid`, every field given with `extra=`, `request_id` while an HTTP request is handled, and
  `exception` (the traceback) where there is one;
- `text`: `time level logger: message key=value ...`, for a person reading a terminal.

Records of every logger - `citystream.*`, uvicorn's, psycopg's - go through the root logger's one handler.
Call `configure` once, early in `main`.
"""

from __future__ import annotations

import contextvars
import faulthandler
import logging
import os
import re
import signal
import sys
import time
from typing import Any

import orjson

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("json", "text")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("citystream_request_id", default=None)
"""The id of the HTTP request being handled (set by the access-log middleware), added to every record."""

# What every LogRecord carries; anything else on a record came through `extra=`. uvicorn's `color_message`
# is its message with terminal colours, and `taskName` (3.12) a field we do not show.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "color_message", "taskName"}


class _Clock:
    """ISO 8601 UTC timestamps; the date-and-seconds part is formatted once per second, not per record."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def iso(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return f"{prefix}.{int((created - second) * 1000):03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given with `extra=` (and the current request id), in the order they were given."""
    fields = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
    current = request_id.get()
    if current is not None:
        fields.setdefault("request_id", current)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record (orjson: a few hundred nanoseconds per line)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def line(self, record: logging.LogRecord) -> bytes:
        """The record as one JSON line, newline included: what the handler writes."""
        return self.fields_line(record.created, record.levelname, record.name, record.getMessage(), record.process,
                                extra_fields(record), self._exception(record))

    def fields_line(self, created: float, level: str, logger: str, message: str, pid: int | None,
                    fields: dict[str, Any], exception: str | None = None) -> bytes:
        body: dict[str, Any] = {"time": self._clock.iso(created), "level": level, "logger": logger,
                                "message": message, "pid": pid, **fields}
        if exception:
            body["exception"] = exception
        return orjson.dumps(body, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)

    def _exception(self, record: logging.LogRecord) -> str | None:
        parts = [self.formatException(record.exc_info)] if record.exc_info else []
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts) or None

    def format(self, record: logging.LogRecord) -> str:
        return self.line(record)[:-1].decode()


class TextFormatter(JsonFormatter):
    """`2026-05-04T09:15:02.317Z INFO citystream.supervisor: API process 812 died ... child_pid=812`.

    Control characters in messages and values are escaped (`\\n`), and a traceback's lines are indented: a
    client's path or header must not be able to write a line that reads like a record of its own."""

    def fields_line(self, created: float, level: str, logger: str, message: str, pid: int | None,
                    fields: dict[str, Any], exception: str | None = None) -> bytes:
        text = f"{self._clock.iso(created)} {level} {logger}: {_escaped(message)}"
        if fields:
            text += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if exception:
            text += "".join("\n  " + _escaped(line) for line in exception.split("\n"))
        return (text + "\n").encode(errors="replace")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def _text_value(value: Any) -> str:
    text = _escaped(str(value))
    return orjson.dumps(text).decode() if (not text or " " in text or '"' in text or "=" in text) else text


class LineHandler(logging.Handler):
    """Writes each record with one os.write on a file descriptor: no Python-level buffer to lose in a crash,
    and lines from processes that share the descriptor stay whole (writes up to PIPE_BUF are atomic)."""

    def __init__(self, fd: int, formatter: JsonFormatter) -> None:
        super().__init__()
        self.fd = fd
        self.setFormatter(formatter)
        self.line_formatter = formatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.line_formatter.line(record))
        except Exception:
            self.handleError(record)

    def write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.fd, data):]


_handler: LineHandler | None = None
"""The handler `configure` installed on the root logger (None: not configured, e.g. under pytest)."""
_pid = os.getpid()  # getpid is a system call; ours changes only in a forked child
os.register_at_fork(after_in_child=lambda: globals().update(_pid=os.getpid()))


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, message, extra=fields)`, written straight to the line handler when the standard
    set-up is all there is between the two (no other handler, no filter on the way).

    Why: the HTTP access log writes a record per request, and in a busy server the logging module's path
    (LogRecord, makeRecord, the handler chain and its lock) cost ~30 µs of CPU per record, a tenth of a
    small GET; the direct path writes the same line for about a third of that (docs/configuration.md, Logs).
    """
    if not logger.isEnabledFor(level):
        return
    handler = _handler
    if handler is None or not _only(handler, logger):
        logger.log(level, message, extra=fields)
        return
    try:
        handler.write(handler.line_formatter.fields_line(time.time(), logging.getLevelName(level), logger.name,
                                                         message, _pid, fields))
    except Exception:  # e.g. a closed stdout: as for any record, the log line is lost, not the request
        pass


def _only(handler: LineHandler, logger: logging.Logger) -> bool:
    """True when a record of `logger` would reach `handler` and nothing else."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    root = logging.root
    return len(root.handlers) == 1 and root.handlers[0] is handler and not root.filters and not handler.filters


def describe_exit(returncode: int) -> str:
    """`died from SIGSEGV` or `exited with code 1`, for a subprocess returncode (negative: a signal)."""
    if returncode < 0:
        return f"died from {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def exit_fields(returncode: int) -> dict[str, Any]:
    """The same as record fields: `signal` or `exit_code`."""
    return {"signal": signal_name(-returncode)} if returncode < 0 else {"exit_code": returncode}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger through one handler on stdout, in `fmt`, at `level`; enable faulthandler.

    Also switches off what no CityStream record shows but every record would pay for: the caller's frame
    lookup (file, line, function) and thread and multiprocessing names.
    """
    if level.upper() not in LEVELS:
        raise SystemExit(f"CITYSTREAM_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise SystemExit(f"CITYSTREAM_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    logging._srcfile = None  # documented optimisation: no sys._getframe walk per record
    logging.logThreads = False
    logging.logMultiprocessing = False
    sys.stdout.flush()  # what was printed before must come before our first record
    global _handler
    handler = LineHandler(sys.stdout.fileno(), JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    _handler = handler
    root.setLevel(level.upper())
    # httpx logs every request at INFO (the demo makes hundreds); keep its warnings only.
    logging.getLogger("httpx").setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))
    # A segfault in a native library prints the Python stack of every thread to stderr, not just "died".
    faulthandler.enable()
