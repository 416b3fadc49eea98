"""Datastream rollups (issue 18): bucket widths, time zones and aggregate functions, defined once.

The SQL engine and the TimescaleDB path compute rollups in the database; this module is the plain-Python
definition both are tested against, so every rule (where buckets start across DST changes, how ties of
first/last are broken, how sums are rounded) is stated here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from functools import cache, lru_cache
from typing import Final
from zoneinfo import ZoneInfo, available_timezones

from sensorthings.model.errors import BadRequest
from sensorthings.model.times import EARLIEST, LATEST, parse_duration

Number = int | float

DAY_MINUTES: Final = 1440


def _spelling(minutes: int) -> str:
    """The one spelling a sub-day width is accepted in: whole hours as PTnH, else PTnM or PTnHnM."""
    hours, rest = divmod(minutes, 60)
    return "PT" + (f"{hours}H" if hours else "") + (f"{rest}M" if rest else "")


SUB_DAY_WIDTHS: Final[dict[str, timedelta]] = {
    _spelling(m): timedelta(minutes=m) for m in range(1, DAY_MINUTES) if DAY_MINUTES % m == 0}
"""Widths that step in elapsed time within a local day: every whole number of minutes that divides 24 h
(PT1M, PT2M, ... PT30M, PT1H, PT1H12M, ... PT12H), so a day always starts a bucket."""
CALENDAR_WIDTHS: Final = ("P1D", "P1W", "P1M")
"""Widths that follow the local calendar: a day, an ISO week (from Monday), a month."""
WIDTHS: Final[tuple[str, ...]] = (*SUB_DAY_WIDTHS, *CALENDAR_WIDTHS)
FUNCTIONS: Final = ("count", "sum", "mean", "min", "max", "first", "last")
MEMBERS: Final = ("width", "function", "timeZone", "finalAfter")
DEFAULT_FINAL_AFTER: Final = "PT1H"
"""How long after its end a bucket stays provisional unless the rollup says otherwise: late Observations
(a logger's backlog, a retried MQTT session) usually arrive within minutes."""
MAX_FINAL_AFTER: Final = timedelta(days=31)
MAX_CHARS: Final = 64
"""The longest string a rollup member may hold (the longest IANA zone name has 32 characters)."""
EXAMPLE: Final = '{"width": "PT1H", "function": "mean", "timeZone": "Europe/Berlin"}'
_EXCLUDED_ZONES: Final = frozenset({"localtime", "Factory"})
"""Names zoneinfo loads that are no place: the host's own setting, and tzdata's placeholder."""


@cache
def _zone_names() -> frozenset[str]:
    """The zones a rollup may name. An allow-list, so a client's string never becomes a path that
    zoneinfo opens (it refuses '..' but loads 'localtime' and 'right/...', whose leap seconds would shift
    every boundary)."""
    return frozenset(available_timezones() - _EXCLUDED_ZONES) | {"UTC"}


@cache
def _zone_by_casefold() -> dict[str, str]:
    return {name.casefold(): name for name in _zone_names()}


@cache
def _zone(name: str) -> tzinfo:
    """The time zone of a name from `_zone_names()`. "UTC" needs no tz database."""
    if name == "UTC":
        return UTC
    if name not in _zone_names():
        raise ValueError(f"{name[:MAX_CHARS]!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; the tz files can go away
        raise ValueError(f"the time zone {name!r} cannot be loaded") from None


@dataclass(frozen=True, slots=True)
class RollupSpec:
    """What a client asked for: `{"width": "PT1H", "function": "mean", "timeZone": "Europe/Berlin"}`."""

    width: str
    function: str
    time_zone: str = "UTC"
    final_after: str = DEFAULT_FINAL_AFTER
    """An ISO 8601 duration (days, hours, minutes, seconds): a bucket is final once its end is that long
    past, provisional until then (`parameters.rollup.final` of its Observation)."""

    def __post_init__(self) -> None:
        """Direct construction is for code, not clients: a bad value is a programming error here."""
        if self.width not in WIDTHS:
            raise ValueError(f"unknown rollup width {self.width!r}")
        if self.function not in FUNCTIONS:
            raise ValueError(f"unknown rollup function {self.function!r}")
        _zone(self.time_zone)
        _final_after(self.final_after, "finalAfter")

    @property
    def final_delay(self) -> timedelta:
        """`final_after` as a time span."""
        return _final_after(self.final_after, "finalAfter")

    @property
    def zone(self) -> tzinfo:
        return _zone(self.time_zone)

    @classmethod
    def parse(cls, data: object, *, summable: bool, where: str = "rollup") -> RollupSpec:
        """Read a client's rollup object. `summable` says the stream holds counts or totals: only then
        is `sum` meaningful (a sum of temperatures is a number without a meaning)."""
        if not isinstance(data, dict):
            raise BadRequest(f"{where} must be a JSON object such as {EXAMPLE}", field=where)
        unknown = [key for key in data if key not in MEMBERS]
        if unknown:
            names = ", ".join(repr(str(key)[:MAX_CHARS]) for key in unknown[:3])
            raise BadRequest(f"{where}: unknown member {names}; a rollup has {', '.join(MEMBERS)} "
                             f"(timeZone and finalAfter optional), e.g. {EXAMPLE}", field=where)
        width = _member(data, "width", where)
        if width not in WIDTHS:
            raise BadRequest(_width_error(width, where), field=f"{where}/width")
        function = _member(data, "function", where)
        if function not in FUNCTIONS:
            hint = f" (write it in lower case: {function.lower()!r})" if function.lower() in FUNCTIONS else ""
            raise BadRequest(f"{where}/function: {function!r} is not a rollup function{hint}; use one of "
                             f"{', '.join(FUNCTIONS)}", field=f"{where}/function")
        if function == "sum" and not summable:
            raise BadRequest(f"{where}/function: 'sum' is offered only for Datastreams whose results are counts "
                             f"or totals (a sum of, say, temperatures means nothing); use one of "
                             f"{', '.join(f for f in FUNCTIONS if f != 'sum')}", field=f"{where}/function")
        time_zone = _member(data, "timeZone", where) if "timeZone" in data else "UTC"
        if time_zone not in _zone_names():
            raise BadRequest(_zone_error(time_zone, where), field=f"{where}/timeZone")
        final_after = _member(data, "finalAfter", where) if "finalAfter" in data else DEFAULT_FINAL_AFTER
        try:
            _final_after(final_after, f"{where}/finalAfter")
        except ValueError as exc:
            raise BadRequest(str(exc), field=f"{where}/finalAfter") from None
        try:
            return cls(width, function, time_zone, final_after)
        except ValueError:  # listed, but its file is unreadable: the server's fault, said as plainly
            raise BadRequest(f"{where}/timeZone: {time_zone!r} cannot be loaded on this server; use another "
                             f"zone or 'UTC'", field=f"{where}/timeZone") from None

    def to_json(self) -> dict[str, str]:
        """The object `parse` reads, with the time zone and finalAfter always written out."""
        return {"width": self.width, "function": self.function, "timeZone": self.time_zone,
                "finalAfter": self.final_after}


def _final_after(text: str, where: str) -> timedelta:
    """A bucket's lateness allowance: a duration without years or months (PostgreSQL reads the same text
    as an interval), from zero to MAX_FINAL_AFTER. ValueError says what is wrong."""
    try:
        months, exact = parse_duration(text, where)
    except BadRequest as exc:
        raise ValueError(str(exc)) from None
    if months or exact < timedelta(0) or exact > MAX_FINAL_AFTER or "," in text:
        raise ValueError(f"{where}: {text!r} is not a lateness allowance; use a duration from PT0S to P31D in "
                         f"days, hours, minutes or seconds, e.g. 'PT15M', 'PT2H' or 'P1D'")
    return exact


def _member(data: dict[object, object], name: str, where: str) -> str:
    if name not in data:
        raise BadRequest(f"{where}: the member {name!r} is missing, e.g. {EXAMPLE}", field=where)
    value = data[name]
    if not isinstance(value, str):
        raise BadRequest(f"{where}/{name} must be a string, e.g. {EXAMPLE}", field=f"{where}/{name}")
    if len(value) > MAX_CHARS:
        raise BadRequest(f"{where}/{name}: {value[:30]!r}… is longer than {MAX_CHARS} characters",
                         field=f"{where}/{name}")
    return value


def _width_error(width: str, where: str) -> str:
    """Say which width the client meant where a spelling gives it away (PT60M, P7D, pt1h)."""
    hint = ""
    try:
        months, exact = parse_duration(width, where)
    except BadRequest:
        months, exact = -1, timedelta(0)
    if months == 1 and not exact:
        hint = " (write a month as 'P1M')"
    elif months == 0 and exact == timedelta(days=1):
        hint = " (a day is 'P1D': local midnight to local midnight, 23 or 25 hours on DST days)"
    elif months == 0 and exact == timedelta(days=7):
        hint = " (a week is 'P1W', Monday to Monday)"
    elif months == 0 and exact > timedelta(0) and not exact % timedelta(minutes=1):
        minutes = exact // timedelta(minutes=1)
        if minutes < DAY_MINUTES and DAY_MINUTES % minutes == 0:
            hint = f" (write it as {_spelling(minutes)!r})"
        else:
            hint = " (sub-day widths are whole minutes that divide 24 hours)"
    elif months == 0 and exact > timedelta(0):
        hint = " (sub-day widths are whole minutes that divide 24 hours)"
    return (f"{where}/width: {width!r} is not a rollup width{hint}; use one of {', '.join(WIDTHS)} "
            f"(PT1M is a minute, P1M a month)")


def _zone_error(name: str, where: str) -> str:
    hint = ""
    known = _zone_by_casefold().get(name.casefold())
    if known is not None:
        hint = f" (did you mean {known!r}?)"
    return (f"{where}/timeZone: {name!r} is not an IANA time zone name{hint}; use e.g. 'Europe/Berlin', "
            f"'America/New_York' or 'UTC'")


# ------------------------------------------------------------------------------------------ buckets

_SHIFT: Final = timedelta(days=146_097)
"""400 Gregorian years: the calendar, weekdays included, repeats after it."""
_EDGE: Final = timedelta(days=366)
"""Within this of year 1 or 9999 the local calendar around an instant may leave what `date` can hold."""


def bucket_start(t: datetime, spec: RollupSpec) -> datetime:
    """The start (UTC) of the bucket that holds the aware instant `t`.

    Buckets follow the local calendar of `spec.time_zone`, because a "day" of a city's data is its local
    day, not UTC's:

    - P1D runs from the start of a local day to the start of the next (23 or 25 hours on DST days), P1W
      from a local Monday (ISO weeks), P1M from the first of a local month.
    - A local day starts at the first instant whose local date is that day. That is local midnight, except
      where a DST change falls on midnight (America/Havana, America/Santiago, Asia/Beirut in some years):
      when 00:00 is skipped the day starts at the change (01:00), when it repeats, at the first 00:00.
    - Sub-day widths step in elapsed time from the start of the local day that holds `t`, and the day's
      last bucket is clipped at the next day's start: on a 25-hour day PT1H gives 25 buckets, on a
      23-hour day 23, and PT2H on a 25-hour day ends with a 1-hour bucket. Every day thus starts a bucket,
      so on ordinary days the buckets of a whole-hour-offset zone (Europe/Berlin, America/New_York) are
      the UTC-aligned ones, and those of a half-hour zone (Asia/Kolkata) start at its local midnight, on
      the half hour in UTC.

    Where the local day, week or month holding `t` is not a Python date (it begins before 0001-01-01 or
    ends after 9999-12-31), its bucket is clipped to the span of STA times: it starts at EARLIEST, or it
    ends at LATEST (and so, alone of all buckets, includes its end).
    """
    return _bounds(t, spec)[0]


def bucket_end(start: datetime, spec: RollupSpec) -> datetime:
    """The end (UTC, exclusive) of the bucket that holds `start`, normally a `bucket_start`; it is the start
    of the next bucket, so buckets tile time without gaps or overlaps."""
    return _bounds(start, spec)[1]


def _bounds(t: datetime, spec: RollupSpec) -> tuple[datetime, datetime]:
    if not isinstance(t, datetime) or t.utcoffset() is None:
        raise ValueError(f"rollup buckets need an aware datetime, got {t!r}")
    t = t.astimezone(UTC)
    zone = spec.zone
    if t < EARLIEST + _EDGE:  # reckon 400 years later, where the zone keeps the same rules (its LMT)
        start, end = _bucket(t + _SHIFT, spec.width, zone)
        return (EARLIEST if start < EARLIEST + _SHIFT else start - _SHIFT), end - _SHIFT
    if t > LATEST - _EDGE:  # reckon 400 years earlier, where the zone's yearly rule is the same
        start, end = _bucket(t - _SHIFT, spec.width, zone)
        return start + _SHIFT, (LATEST if end > LATEST - _SHIFT else end + _SHIFT)
    return _bucket(t, spec.width, zone)


def _bucket(t: datetime, width: str, zone: tzinfo) -> tuple[datetime, datetime]:
    day = _day_of(t, zone)
    if width == "P1D":
        return _day_start(day, zone), _day_start(day + timedelta(days=1), zone)
    if width == "P1W":
        monday = day - timedelta(days=day.weekday())
        return _day_start(monday, zone), _day_start(monday + timedelta(days=7), zone)
    if width == "P1M":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return _day_start(first, zone), _day_start(following, zone)
    step = SUB_DAY_WIDTHS[width]
    day_start, day_end = _day_start(day, zone), _day_start(day + timedelta(days=1), zone)
    start = day_start + (t - day_start) // step * step
    return start, min(start + step, day_end)


def _day_of(t: datetime, zone: tzinfo) -> date:
    """The local day whose span holds `t`: its local date, except where clocks went back across midnight
    (Alaska, 1867), where the repeated hours belong to the day that had already begun."""
    day = t.astimezone(zone).date()
    while _day_start(day, zone) > t:
        day -= timedelta(days=1)
    while _day_start(day + timedelta(days=1), zone) <= t:  # a skipped day (Pacific/Apia 2011) is empty
        day += timedelta(days=1)
    return day


@lru_cache(maxsize=8192)
def _day_start(day: date, zone: tzinfo) -> datetime:
    """The first instant (UTC) whose local date is `day` (or later, for a day the zone skipped)."""
    midnight = datetime.combine(day, time())
    earlier, later = sorted((midnight.replace(tzinfo=zone).astimezone(UTC),
                             midnight.replace(tzinfo=zone, fold=1).astimezone(UTC)))
    for candidate in (earlier, later):  # the first 00:00 where it repeats
        if candidate.astimezone(zone).replace(tzinfo=None) == midnight:
            return candidate
    # 00:00 was skipped: the day starts at the change, between the two readings of the gap. Changes fall
    # on whole seconds (tz files hold whole seconds), so a bisection over seconds finds it exactly.
    low, high = 0, int((later - earlier) // timedelta(seconds=1))
    while high - low > 1:
        middle = (low + high) // 2
        if (earlier + timedelta(seconds=middle)).astimezone(zone).replace(tzinfo=None) >= midnight:
            high = middle
        else:
            low = middle
    return earlier + timedelta(seconds=high)


# ------------------------------------------------------------------------------------------ aggregates


def _rank(value: Number) -> int:
    """Orders equal values of different forms (1 before 1.0 before -0.0), so that min, max, first and last
    never depend on the order values arrive in."""
    if isinstance(value, int):
        return 0
    return 2 if math.copysign(1.0, value) < 0 else 1


def _exact(value: Number) -> Fraction:
    """A number as written: an int, or a double's shortest decimal text (repr: 0.1 is 1/10, not the double's
    0.1000000000000000055...)."""
    return Fraction(value) if isinstance(value, int) else Fraction(Decimal(repr(value)))


@dataclass(slots=True)
class BucketState:
    """The running aggregate of one bucket, from which every function's value follows.

    `add` and `merge` commute and associate: any split of a bucket's observations into batches, merged in
    any order, gives the state of adding them all. Hence:

    - `sum` is exact over the numbers as written (a Fraction of each one's shortest decimal text, which is
      what a client sent and the platform stores: 0.1 + 0.2 is 0.3) and rounded once, when read: the same
      sum and mean in any order. A database's floating-point sum may differ in the last bits.
    - first is the observation with the earliest phenomenon time, last the one with the latest. Ties on
      time go to the smaller observation id for first and the larger for last; the same time and id twice
      (one observation counted twice) falls back on the value, smaller for first, larger for last.
    - min and max of equal values in different forms keep the int (3 rather than 3.0), and 0.0 rather
      than -0.0.
    """

    count: int = 0
    sum: Fraction = field(default_factory=Fraction)
    integral: bool = True
    """Every value was an int: sum, min, max, first and last are ints (mean is always a float)."""
    min: Number | None = None
    max: Number | None = None
    first_time: datetime | None = None
    first_id: int = 0
    first_value: Number | None = None
    last_time: datetime | None = None
    last_id: int = 0
    last_value: Number | None = None

    def add(self, t: datetime, value: Number, observation_id: int = 0) -> None:
        """Count one observation. Refuses bools (TypeError: true is not a number of anything), other
        non-numbers (TypeError), NaN and infinities (ValueError: they have no sum)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"a rollup aggregates numbers, not {type(value).__name__} {value!r}")
        if isinstance(value, float):
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"a rollup aggregates finite numbers, not {value!r}")
        else:
            value = int(value)
        if not isinstance(t, datetime) or t.utcoffset() is None:
            raise ValueError(f"an observation's phenomenon time must be an aware datetime, got {t!r}")
        if isinstance(observation_id, bool) or not isinstance(observation_id, int):
            raise TypeError(f"an observation id is an int, not {observation_id!r}")
        t = t.astimezone(UTC)
        self._combine(1, _exact(value), isinstance(value, int), value, value,
                      t, int(observation_id), value, t, int(observation_id), value)

    def merge(self, other: BucketState) -> None:
        """Fold another state of the same bucket into this one."""
        if other.count:
            assert other.min is not None and other.max is not None
            assert other.first_time is not None and other.first_value is not None
            assert other.last_time is not None and other.last_value is not None
            self._combine(other.count, other.sum, other.integral, other.min, other.max,
                          other.first_time, other.first_id, other.first_value,
                          other.last_time, other.last_id, other.last_value)

    def _combine(self, count: int, total: Fraction, integral: bool, low: Number, high: Number,
                 first_time: datetime, first_id: int, first_value: Number,
                 last_time: datetime, last_id: int, last_value: Number) -> None:
        empty = self.count == 0
        self.count += count
        self.sum += total
        self.integral = self.integral and integral
        if empty or self.min is None or (low, _rank(low)) < (self.min, _rank(self.min)):
            self.min = low
        if empty or self.max is None or (high, -_rank(high)) > (self.max, -_rank(self.max)):
            self.max = high
        first = (first_time, first_id, first_value, _rank(first_value))
        if empty or self.first_time is None or self.first_value is None or first < (
                self.first_time, self.first_id, self.first_value, _rank(self.first_value)):
            self.first_time, self.first_id, self.first_value = first_time, first_id, first_value
        last = (last_time, last_id, last_value, _rank(last_value))
        if empty or self.last_time is None or self.last_value is None or last > (
                self.last_time, self.last_id, self.last_value, _rank(self.last_value)):
            self.last_time, self.last_id, self.last_value = last_time, last_id, last_value

    def value(self, function: str) -> Number | None:
        """The function's value: None for an empty bucket (except count, 0). A sum or mean beyond the
        range of a double raises OverflowError (JSON has no infinity)."""
        if function == "count":
            return self.count
        if function not in FUNCTIONS:
            raise ValueError(f"unknown rollup function {function!r}; use one of {', '.join(FUNCTIONS)}")
        if not self.count:
            return None
        if function == "sum":
            return int(self.sum) if self.integral else float(self.sum)
        if function == "mean":
            return float(self.sum / self.count)
        if function == "min":
            return self.min
        if function == "max":
            return self.max
        return self.first_value if function == "first" else self.last_value


def reference_rollup(observations: Iterable[tuple[datetime, Number, int]],
                     spec: RollupSpec) -> dict[datetime, tuple[Number | None, int]]:
    """The rollup of (phenomenon time, result, observation id) triples, computed the plain way: bucket
    start (UTC) -> (the function's value, the number of observations), buckets in time order, empty
    buckets left out. The engine's rollups must equal it, except that a database's floating-point sum and
    mean may differ from these correctly rounded ones in the last bits."""
    states: dict[datetime, BucketState] = {}
    for t, value, observation_id in observations:
        start = bucket_start(t, spec)
        state = states.get(start)
        if state is None:
            state = states[start] = BucketState()
        state.add(t, value, observation_id)
    return {start: (states[start].value(spec.function), states[start].count) for start in sorted(states)}
