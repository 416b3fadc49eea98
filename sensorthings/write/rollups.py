"""Rollup Datastreams (issue 18): created from their source, and kept equal to it.

A rollup is an ordinary Datastream with a `RollupOf` (its source) and a `rollup` (width, function, time
zone: sensorthings/model/rollups.py). Its Observations are computed, one per bucket, and never written by
clients. Two ways keep them true, both in the transaction of the write that changes the source:

- `merge_batch`: an ingest batch (MQTT, POST) adds its part to each touched bucket's running state
  (rollup_buckets: count, exact sum, extremes, first/last), read from the rows the batch just copied. A
  batch never reads a bucket's other raw Observations, so a P1M rollup costs a batch what a PT15M one does,
  and late or out-of-order Observations land in their bucket like any other.
- `recompute`: what cannot be merged (an Observation updated, moved or deleted) recomputes the buckets it
  touched from the raw Observations; creating a rollup recomputes all of its source's history.

Either way the changed buckets' Observations are then written (`_write_observations`): created for new
buckets, updated in place (same id) for changed ones, deleted for buckets left empty. Their phenomenonTime
is the bucket, `parameters.rollup` holds the bucket's count (and the width and function, so that a reader
of the Observation alone knows what it is).

Bucket boundaries in SQL are `sta_rollup_bucket_start/_end` (migration 0011), tested against the Python
definition. Only numeric results are aggregated (null results are not counted).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from sensorthings.model.entities import ENTITIES
from sensorthings.model.errors import BadRequest
from sensorthings.model.kinds import RESULT_NUMBER
from sensorthings.model.observation_ids import observation_id
from sensorthings.model.results import RESULT_TYPES
from sensorthings.model.rollups import DEFAULT_FINAL_AFTER, RollupSpec
from sensorthings.query import visibility
from sensorthings.write.ports import Change
from sensorthings.write.rollup_minutes import GROUPED_FROM, Merged, minute_arrays

EnsurePartition = Callable[[datetime], Awaitable[None]]
DATASTREAM = ENTITIES["Datastream"]
OBSERVATION = ENTITIES["Observation"]
ROLLUP_OF = DATASTREAM.relation("RollupOf")
ROLLUP_STREAM = OBSERVATION.relation("Datastream")
"""The stream of a rollup's Observations (a rollup is a Datastream)."""
FEATURE = OBSERVATION.relation("FeatureOfInterest")
RESULT_KIND, _, RESULT_TEXT = OBSERVATION.fields_by_name["result"].columns[:3]
"""The columns of a result's kind and its text (a number's exact digits)."""
NUMERIC_TYPES = frozenset(t for t, (kinds, _) in RESULT_TYPES.items() if kinds == {RESULT_NUMBER})
"""Sources a rollup may have: Datastreams whose observationType takes only numbers (results.RESULT_TYPES)."""
MEASUREMENT = next(t for t in NUMERIC_TYPES if t.endswith("/OM_Measurement"))
COUNT_OBSERVATION = next(t for t in NUMERIC_TYPES if t.endswith("/OM_CountObservation"))
COUNT_UNIT = {"name": "count", "symbol": "", "definition": "http://qudt.org/vocab/unit/NUM"}
"""The unitOfMeasurement of a count rollup (a number of Observations, whatever the source measures)."""
INHERITED = ("Thing", "Sensor", "ObservedProperty", "Project", "Party", "License")
"""What a rollup takes from its source unless the create says otherwise: where it is, what measured it,
what it measures, and who may read it (so that access control reaches the rollup without a second rule)."""


# ------------------------------------------------------------------------------------------ create


@dataclass(frozen=True, slots=True)
class _Source:
    id: int
    name: str
    observation_type: str
    unit: Any
    properties: Any
    rollup_of_id: int | None
    visibility: str | None
    links: dict[str, int | None]


async def _source(conn: AsyncConnection[Any], source_id: int, where: str) -> _Source:
    fields = DATASTREAM.fields_by_name
    columns = [fields[name].column for name in ("name", "observationType", "unitOfMeasurement", "properties")]
    columns += [ROLLUP_OF.column, fields["visibility"].column, *(DATASTREAM.relation(n).column for n in INHERITED)]
    row = await (await conn.execute(sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(DATASTREAM.table)), (source_id,))).fetchone()
    if row is None:
        raise BadRequest(f"{where}: there is no Datastream with @iot.id {source_id}", field=where)
    name, observation_type, unit, properties, rollup_of_id, visibility, *links = row
    return _Source(source_id, name, observation_type, unit, properties, rollup_of_id, visibility,
                   dict(zip(INHERITED, links, strict=True)))


def summable(source_type: str, properties: Any) -> bool:
    """Whether `sum` means something for a source: counts (OM_CountObservation), or a Datastream that says
    its results are totals over their phenomenonTime (`properties.resultsAreTotals: true`, e.g. rainfall
    per interval). A sum of temperatures is a number without a meaning."""
    return source_type == COUNT_OBSERVATION or (isinstance(properties, dict)
                                                and properties.get("resultsAreTotals") is True)


async def complete_rollup_create(conn: AsyncConnection[Any], body: dict[str, Any], where: str) -> dict[str, Any]:
    """The body of a rollup's create with what it inherits from its source filled in (see INHERITED; its
    name, description, observationType and unit follow from the source and the function). Refuses a
    rollup of a rollup, of a source without numeric results, and `sum` where it has no meaning."""
    rel_where = f"{where}.RollupOf"
    link = body.get("RollupOf")
    if not isinstance(link, dict) or set(link) != {"@iot.id"}:
        raise BadRequest(f"{rel_where}: a rollup names its existing source Datastream as {{\"@iot.id\": n}}",
                         field=rel_where)
    if "rollup" not in body or body["rollup"] is None:
        raise BadRequest(f"{where}: a Datastream with a RollupOf needs its rollup, e.g. "
                         f"{{\"width\": \"PT1H\", \"function\": \"mean\", \"timeZone\": \"Europe/Berlin\"}}",
                         field=f"{where}.rollup")
    raw_id = link["@iot.id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, int):
        raise BadRequest(f"{rel_where}.@iot.id must be a positive integer", field=rel_where)
    source = await _source(conn, raw_id, rel_where)
    if source.rollup_of_id is not None:
        raise BadRequest(f"{rel_where}: Datastream {source.id} is itself a rollup (of Datastream "
                         f"{source.rollup_of_id}); roll up that one instead", field=rel_where)
    if source.observation_type not in NUMERIC_TYPES:
        raise BadRequest(f"{rel_where}: Datastream {source.id} has observationType {source.observation_type}; "
                         f"rollups aggregate numbers ({' or '.join(sorted(NUMERIC_TYPES))})", field=rel_where)
    spec = RollupSpec.parse(body["rollup"], summable=summable(source.observation_type, source.properties),
                            where=f"{where}.rollup")
    completed = dict(body)
    for name in INHERITED:
        if name not in completed and source.links[name] is not None:
            completed[name] = {"@iot.id": source.links[name]}
    if "visibility" not in completed and source.visibility is not None:
        completed["visibility"] = source.visibility
    completed.setdefault("name", f"{source.name} ({spec.function} per {spec.width})")
    completed.setdefault("description", f"The {spec.function} of Datastream {source.id} ({source.name}) per "
                                        f"{spec.width}, in the time zone {spec.time_zone}; computed by the platform")
    counts = spec.function == "count"
    completed.setdefault("observationType", COUNT_OBSERVATION if counts or (
        spec.function != "mean" and source.observation_type == COUNT_OBSERVATION) else MEASUREMENT)
    completed.setdefault("unitOfMeasurement", COUNT_UNIT if counts else source.unit)
    return completed


def refuse_rollup_change(body: dict[str, Any], current: tuple[int | None, Any], where: str) -> None:
    """An update may send a rollup's RollupOf and rollup only unchanged: a rollup with another definition is
    another rollup (create it, delete this one), and a raw Datastream does not become one."""
    rollup_of_id, rollup = current
    if "RollupOf" in body:
        link = body["RollupOf"]
        sent = link.get("@iot.id") if isinstance(link, dict) else link
        if sent != rollup_of_id:
            raise BadRequest(f"{where}.RollupOf cannot change; create a new rollup Datastream (POST Datastreams "
                             f"with RollupOf and rollup) and delete this one", field=f"{where}.RollupOf")
    if "rollup" in body:
        try:
            sent_spec = RollupSpec.parse(body["rollup"], summable=True).to_json() if body["rollup"] else None
        except BadRequest:
            sent_spec = body["rollup"]
        if sent_spec != rollup:
            raise BadRequest(f"{where}.rollup cannot change; create a new rollup Datastream with the new "
                             f"definition and delete this one", field=f"{where}.rollup")


# ------------------------------------------------------------------------------------------ maintenance

# min and max of equal values keep an integer's form (3 rather than 3.0: the smaller scale, as
# sensorthings.model.rollups.BucketState does) whatever order they come in. An aggregate picks by the
# array [value, scale]; LEAST, GREATEST and min() return either of two equals.
def _least(value: str) -> str:
    return f"(min(ARRAY[{value}, scale({value})]))[1]"


def _greatest(value: str) -> str:
    return f"(max(ARRAY[{value}, -scale({value})]))[1]"


def _merged(extreme: str, closer: str) -> str:
    """The bucket's `extreme` (min or max) after merging EXCLUDED (the batch's part) into k (its state)."""
    return (f"CASE WHEN k.{extreme} IS NULL OR EXCLUDED.{extreme} {closer} k.{extreme} "
            f"OR (EXCLUDED.{extreme} = k.{extreme} "
            f"AND scale(EXCLUDED.{extreme}) < scale(k.{extreme})) THEN EXCLUDED.{extreme} ELSE k.{extreme} END")


def _names() -> dict[str, sql.Composable]:
    """The model's tables and columns the statements below name (they spell none themselves)."""
    result = OBSERVATION.fields_by_name["result"].columns
    return {
        "obs_table": sql.Identifier(OBSERVATION.table), "ds_table": sql.Identifier(DATASTREAM.table),
        "stream": sql.Identifier(OBSERVATION.relation("Datastream").column),
        "feature": sql.Identifier(OBSERVATION.relation("FeatureOfInterest").column),
        "start": sql.Identifier(OBSERVATION.fields_by_name["phenomenonTime"].columns[0]),
        "end": sql.Identifier(OBSERVATION.fields_by_name["phenomenonTime"].columns[1]),
        "kind": sql.Identifier(result[0]), "number": sql.Identifier(result[1]), "text": sql.Identifier(result[2]),
        "parameters": sql.Identifier(OBSERVATION.fields_by_name["parameters"].column),
        "of": sql.Identifier(ROLLUP_OF.column), "rollup": sql.Identifier(DATASTREAM.fields_by_name["rollup"].column),
        "numeric": sql.Literal(RESULT_NUMBER), "final_after": sql.Literal(DEFAULT_FINAL_AFTER),
        "grouped_from": sql.Literal(GROUPED_FROM),
        "least_of_v": sql.SQL(_least("v")), "greatest_of_v": sql.SQL(_greatest("v")),
        "least_of_lo": sql.SQL(_least("m.lo")), "greatest_of_hi": sql.SQL(_greatest("m.hi")),
        "least_merged": sql.SQL(_merged("min", "<")), "greatest_merged": sql.SQL(_merged("max", ">")),
        "retained_from": sql.Identifier(DATASTREAM.fields_by_name["retainedFrom"].column),
    }


_NAMES = _names()

def _value(text: str) -> str:
    """A result's number from its text, exact. A double's text that has no fraction (1e+20) keeps a scale of
    at least 1, so that `picked_number` gives it back as a double (the text's digits may name another
    integer than the double does: 6.323534683751134e+16)."""
    return (f"CASE WHEN {text} ~ '^-?[0-9]+$' THEN {text}::numeric "
            f"ELSE round({text}::numeric, greatest(scale({text}::numeric), 1)) END")


# The numeric raw Observations of sources (the statement adds which): (s, id, t, v, integral, f).
_RAW = """
SELECT o.{stream} AS s, o.id, o.{start} AS t, """ + _value("o.{text}") + """ AS v,
       o.{text} ~ '^-?[0-9]+$' AS integral, o.{feature} AS f
FROM {obs_table} o
WHERE o.{kind} = {numeric}
"""
# `raw` per source and UTC minute, for a recompute: rollup_minutes.py says why (an ingest batch's rows are
# grouped the same way there, in Python).
_MINUTES = """
SELECT s, CASE WHEN t >= {grouped_from} THEN date_trunc('minute', t, 'UTC') ELSE t END AS m,
       count(*) AS n, sum(v) AS sm, bool_and(integral) AS i, {least_of_v} AS lo, {greatest_of_v} AS hi,
       (array_agg(t ORDER BY t, id))[1] AS ft, (array_agg(id ORDER BY t, id))[1] AS fid,
       (array_agg(v ORDER BY t, id))[1] AS fv,
       (array_agg(t ORDER BY t DESC, id DESC))[1] AS lt, (array_agg(id ORDER BY t DESC, id DESC))[1] AS lid,
       (array_agg(v ORDER BY t DESC, id DESC))[1] AS lv, (array_agg(f ORDER BY t DESC, id DESC))[1] AS lf
FROM raw GROUP BY 1, 2
"""
# The part of each (rollup, bucket) in `minutes`, in key order (the order its rows are locked in).
_PARTS = """
SELECT p.*, sta_rollup_bucket_end(p.b, p.w, p.z) AS e FROM (
    SELECT r.id AS rollup_id, sta_rollup_bucket_start(m.m, r.w, r.z) AS b, min(r.w) AS w, min(r.z) AS z,
           min(r.fa) AS fa, bool_and(r.rel) AS rel, sum(m.n) AS n, sum(m.sm) AS s, bool_and(m.i) AS i,
           {least_of_lo} AS lo, {greatest_of_hi} AS hi,
           (array_agg(m.ft ORDER BY m.ft, m.fid))[1] AS ft, (array_agg(m.fid ORDER BY m.ft, m.fid))[1] AS fid,
           (array_agg(m.fv ORDER BY m.ft, m.fid))[1] AS fv,
           (array_agg(m.lt ORDER BY m.lt DESC, m.lid DESC))[1] AS lt,
           (array_agg(m.lid ORDER BY m.lt DESC, m.lid DESC))[1] AS lid,
           (array_agg(m.lv ORDER BY m.lt DESC, m.lid DESC))[1] AS lv,
           (array_agg(m.lf ORDER BY m.lt DESC, m.lid DESC))[1] AS lf
    FROM minutes m JOIN r ON r.source_id = m.s GROUP BY 1, 2) p
ORDER BY p.rollup_id, p.b
"""
_ROLLUPS = """
SELECT d.id, d.{of} AS source_id, d.{rollup}->>'width' AS w, coalesce(d.{rollup}->>'timeZone', 'UTC') AS z,
       coalesce(d.{rollup}->>'finalAfter', {final_after})::interval AS fa, NOT d.privacy_withholds AS rel
FROM {ds_table} d
"""
_RETURNING = """
RETURNING rollup_id, bucket_start, bucket_end, count, sum, integral, min, max, first_value, last_value,
          last_feature, observation, final
"""
_COLUMNS = ("rollup_id, bucket_start, bucket_end, count, sum, integral, min, max, first_time, first_id, "
            "first_value, last_time, last_id, last_value, last_feature, final, released")


_WITH_DEFINITION = "SELECT b.*, d.{rollup}::text FROM {ds_table} d JOIN"
"""Each changed bucket with its rollup's definition, in the same statement (`... JOIN <buckets> b ON ...`)."""
_FIRST = "(EXCLUDED.first_time, EXCLUDED.first_id) < (k.first_time, k.first_id)"
_LAST = "(EXCLUDED.last_time, EXCLUDED.last_id) > (k.last_time, k.last_id)"


def _statement(text: str) -> bytes:
    fragments = {name: sql.SQL(fragment).format(**_NAMES) for name, fragment in (
        ("rollups", _ROLLUPS), ("raw", _RAW), ("minutes", _MINUTES), ("parts", _PARTS), ("columns", _COLUMNS),
        ("returning", _RETURNING), ("first", _FIRST), ("last", _LAST), ("with_definition", _WITH_DEFINITION),
        *((f"value_of_{c}", _value(f"x.{c}")) for c in ("lo", "hi", "fv", "lv")))}
    return sql.SQL(text).format(**fragments, **_NAMES).as_bytes(None)


MERGE_SQL = _statement("""
WITH r AS MATERIALIZED ({rollups} WHERE d.{of} = ANY(%(sources)s)),
minutes AS (
    SELECT x.s, x.m, x.n, x.sm::numeric AS sm, x.i, {value_of_lo} AS lo, {value_of_hi} AS hi, x.ft, x.fid,
           {value_of_fv} AS fv, x.lt, x.lid, {value_of_lv} AS lv, x.lf
    FROM unnest(%(streams)b::bigint[], %(minutes)b::timestamptz[], %(counts)b::bigint[], %(sums)b::text[],
                %(integral)b::boolean[], %(lows)b::text[], %(highs)b::text[], %(first_times)b::timestamptz[],
                %(first_ids)b::bigint[], %(firsts)b::text[], %(last_times)b::timestamptz[], %(last_ids)b::bigint[],
                %(lasts)b::text[], %(last_features)b::bigint[])
         AS x(s, m, n, sm, i, lo, hi, ft, fid, fv, lt, lid, lv, lf)),
parts AS ({parts}),
merged AS (
INSERT INTO rollup_buckets AS k ({columns})
SELECT rollup_id, b, e, n, s, i, lo, hi, ft, fid, fv, lt, lid, lv, lf, e + fa <= now(), rel FROM parts
ON CONFLICT (rollup_id, bucket_start) DO UPDATE SET final = k.final OR EXCLUDED.final, released = EXCLUDED.released,
    count = k.count + EXCLUDED.count, sum = k.sum + EXCLUDED.sum, integral = k.integral AND EXCLUDED.integral,
    min = {least_merged}, max = {greatest_merged},
    first_time = CASE WHEN {first} THEN EXCLUDED.first_time ELSE k.first_time END,
    first_id = CASE WHEN {first} THEN EXCLUDED.first_id ELSE k.first_id END,
    first_value = CASE WHEN {first} THEN EXCLUDED.first_value ELSE k.first_value END,
    last_time = CASE WHEN {last} THEN EXCLUDED.last_time ELSE k.last_time END,
    last_id = CASE WHEN {last} THEN EXCLUDED.last_id ELSE k.last_id END,
    last_value = CASE WHEN {last} THEN EXCLUDED.last_value ELSE k.last_value END,
    last_feature = CASE WHEN {last} THEN EXCLUDED.last_feature ELSE k.last_feature END
{returning})
{with_definition} merged b ON b.rollup_id = d.id
""")
"""One ingest batch's part of every touched bucket, merged into its state (rows locked in key order). The
batch's rows come grouped per stream and minute (rollup_minutes.minute_arrays), as arrays in binary
(`%b`: psycopg writes timestamps as text at ~2 µs each in Python). Reading the rows back by id cost more
than the rest; grouping them in SQL cost the database more than the merge."""

RECOMPUTE_SQL = _statement("""
WITH r AS ({rollups} WHERE d.id = ANY(%(rollups)s)),
kept AS (SELECT r.id, sta_rollup_bucket_start(s.{retained_from}, r.w, r.z) AS b, s.{retained_from} AS t
         FROM r JOIN {ds_table} s ON s.id = r.source_id),
bounds AS (SELECT r.id, greatest(sta_rollup_bucket_start(%(low)s, r.w, r.z),
                                 CASE WHEN kept.t IS NULL OR kept.b = kept.t THEN kept.t
                                      ELSE sta_rollup_bucket_end(kept.b, r.w, r.z) END) AS low,
                  sta_rollup_bucket_end(sta_rollup_bucket_start(%(high)s, r.w, r.z), r.w, r.z) AS high
           FROM r JOIN kept ON kept.id = r.id),
raw AS ({raw} AND o.{stream} IN (SELECT source_id FROM r)
          AND o.{start} >= (SELECT min(low) FROM bounds) AND o.{start} < (SELECT max(high) FROM bounds)),
minutes AS ({minutes}),
parts AS ({parts}),
fresh AS (
    INSERT INTO rollup_buckets AS k ({columns})
    SELECT p.rollup_id, p.b, p.e, p.n, p.s, p.i, p.lo, p.hi, p.ft, p.fid, p.fv, p.lt, p.lid, p.lv, p.lf,
           p.e + p.fa <= now(), p.rel
    FROM parts p JOIN bounds ON bounds.id = p.rollup_id AND p.b >= bounds.low AND p.b < bounds.high
    ON CONFLICT (rollup_id, bucket_start) DO UPDATE SET
        bucket_end = EXCLUDED.bucket_end, count = EXCLUDED.count, sum = EXCLUDED.sum,
        integral = EXCLUDED.integral, min = EXCLUDED.min, max = EXCLUDED.max,
        first_time = EXCLUDED.first_time, first_id = EXCLUDED.first_id, first_value = EXCLUDED.first_value,
        last_time = EXCLUDED.last_time, last_id = EXCLUDED.last_id, last_value = EXCLUDED.last_value,
        last_feature = EXCLUDED.last_feature, final = k.final OR EXCLUDED.final, released = EXCLUDED.released
    {returning}),
emptied AS (
    DELETE FROM rollup_buckets k USING bounds
    WHERE k.rollup_id = bounds.id AND k.bucket_start >= bounds.low AND k.bucket_start < bounds.high
      AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.rollup_id = k.rollup_id AND p.b = k.bucket_start)
    RETURNING k.rollup_id, k.bucket_start, k.bucket_end, 0::bigint, 0::numeric, true, NULL::numeric,
              NULL::numeric, NULL::numeric, NULL::numeric, k.last_feature, k.observation, k.final)
{with_definition} (SELECT * FROM fresh UNION ALL SELECT * FROM emptied) b ON b.rollup_id = d.id
""")
"""The buckets of `rollups` that overlap [low, high] computed again from the raw Observations; those left
without any are deleted (returned with count 0, so that their Observations go too). Buckets that begin
before their source's retention horizon (`retainedFrom`: its older raw Observations are gone) are left as
they are: computed again, they would lose what retention took (`greatest` ignores the NULL of no horizon)."""


@dataclass(slots=True)
class Bucket:
    """A changed bucket of a rollup, as rollup_buckets returns it."""

    rollup_id: int
    start: datetime
    end: datetime
    count: int
    sum: Decimal
    integral: bool
    min: Decimal | None
    max: Decimal | None
    first: Decimal | None
    last: Decimal | None
    feature_id: int | None
    observation_id: int | None
    final: bool
    """Whether its rollup's `finalAfter` has passed since its end (else it is provisional)."""
    definition: str
    """The rollup's definition (its `rollup` as JSON text)."""
    created: bool = False
    """Whether its Observation was created by this write (`_write_observations` sets it)."""


async def merge_batch(conn: AsyncConnection[Any], rows: Iterable[Merged]) -> list[Bucket]:
    """Merge the Observations an ingest batch just stored in Datastreams with rollups into their rollups'
    buckets, and write those buckets' Observations. Returns the changed buckets."""
    arrays = minute_arrays(rows)
    if not arrays["streams"]:
        return []
    sources = sorted(set(arrays["streams"]))
    params = {"sources": sources, **arrays}
    async with conn.pipeline():
        await conn.execute(_LOCK_OF_SOURCES_SQL, (sources,))
        merged = await conn.execute(MERGE_SQL, params)
    buckets = [Bucket(*row) for row in await merged.fetchall()]
    await _write_observations(conn, buckets, restore=False)
    return buckets


async def recompute(conn: AsyncConnection[Any], rollup_ids: Sequence[int], low: datetime, high: datetime,
                    ensure_partition: EnsurePartition | None = None) -> list[Bucket]:
    """Compute the buckets of `rollup_ids` overlapping [low, high] again from the raw Observations and write
    their Observations (creating a rollup: its source's whole span). `ensure_partition` is called for the
    start of every new bucket before its Observation is written (the REST writer's check, which makes the
    request create a missing month partition and run again)."""
    if not rollup_ids:
        return []
    params = {"rollups": sorted(rollup_ids), "low": low, "high": high}
    await conn.execute(_LOCK_SQL, (params["rollups"],))  # before the recompute's snapshot: see _LOCK_SQL
    buckets = [Bucket(*row) for row in await (await conn.execute(RECOMPUTE_SQL, params)).fetchall()]
    if ensure_partition is not None:
        for bucket in buckets:
            if bucket.observation_id is None and bucket.count:
                await ensure_partition(bucket.start)
    await _write_observations(conn, buckets)
    return buckets


async def rollups_of(conn: AsyncConnection[Any], source_ids: Iterable[int]) -> list[tuple[int, int]]:
    """(rollup id, source id) of the rollup Datastreams of the given sources."""
    rows = await (await conn.execute(_ROLLUPS_OF_SQL, (sorted(set(source_ids)),))).fetchall()
    return [(int(r[0]), int(r[1])) for r in rows]


async def definition(conn: AsyncConnection[Any], datastream_id: int) -> tuple[int | None, Any] | None:
    """(RollupOf id, rollup) of a Datastream, None if there is none with that id."""
    row = await (await conn.execute(_SOURCE_SQL, (datastream_id,))).fetchone()
    return None if row is None else (row[0], row[1])


def bucket_value(bucket: Bucket, function: str) -> int | float | None:
    """The value of `function` over the bucket (rollups.BucketState.value's rules: a sum is an int where
    every input was one; min, max, first and last are the value they pick, in its form; mean is a float)."""
    if function == "count":
        return bucket.count
    if not bucket.count:
        return None
    if function == "mean":
        return float(bucket.sum / bucket.count)
    if function == "sum":
        return int(bucket.sum) if bucket.integral else float(bucket.sum)
    picked = {"min": bucket.min, "max": bucket.max, "first": bucket.first, "last": bucket.last}[function]
    assert picked is not None
    return picked_number(picked)


def picked_number(value: Decimal) -> int | float:
    """A raw result that a min, max, first or last picked, in its form: an int where its text was one (the
    numeric keeps the text's scale: 3 and 3.0 differ), so that 3 stays 3 beside a 4.5, and an int beyond
    2**53 stays exact."""
    exponent = value.as_tuple().exponent  # a str for NaN and infinities, which results never are
    return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)


_INSERT_SQL = _statement("""
INSERT INTO {obs_table} (id, {start}, {end}, {kind}, {number}, {text}, {parameters}, {stream}, {feature})
SELECT v.id, v.ps, v.pe, {numeric}, v.n, v.s, v.p, v.d, v.f
FROM json_to_recordset(%s::json) AS v(id bigint, ps timestamptz, pe timestamptz, n float8, s text, p jsonb,
                                     d bigint, f bigint)
""")
_UPDATE_SQL = _statement("""
UPDATE {obs_table} o SET {end} = v.pe, {number} = v.n, {text} = v.s, {parameters} = v.p,
                            {feature} = coalesce(v.f, o.{feature})
FROM json_to_recordset(%s::json) AS v(id bigint, ps timestamptz, pe timestamptz, n float8, s text, p jsonb, f bigint)
WHERE o.id = v.id AND o.{start} = v.ps
""")
_RESTORE_SQL = _statement("""
INSERT INTO {obs_table} (id, {start}, {end}, {kind}, {number}, {text}, {parameters}, {stream}, {feature})
SELECT v.id, v.ps, v.pe, {numeric}, v.n, v.s, v.p, v.d, v.f
FROM json_to_recordset(%s::json) AS v(id bigint, ps timestamptz, pe timestamptz, n float8, s text, p jsonb,
                                     d bigint, f bigint)
WHERE v.f IS NOT NULL
ON CONFLICT DO NOTHING
""")
"""Writes a changed bucket's Observation again (same id) where it is gone: deleting a FeatureOfInterest
deletes the Observations that name it (a foreign key), rollup Observations included, while the bucket
keeps its other raw Observations and is recomputed from them."""
_DELETE_SQL = _statement("""
DELETE FROM {obs_table} o USING json_to_recordset(%s::json) AS v(id bigint, ps timestamptz)
WHERE o.id = v.id AND o.{start} = v.ps
""")
_LINK_SQL = _statement("""
UPDATE rollup_buckets k SET observation = v.id
FROM json_to_recordset(%s::json) AS v(d bigint, ps timestamptz, id bigint)
WHERE k.rollup_id = v.d AND k.bucket_start = v.ps
""")
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('citystream-rollup', r)) FROM unnest(%s::bigint[]) r"
"""Merges and recomputes of one rollup take turns (in id order). Otherwise a recompute could read the raw
Observations before a concurrent batch commits and then overwrite the state that batch merged into."""
_LOCK_OF_SOURCES_SQL = _statement(
    "SELECT pg_advisory_xact_lock(hashtextextended('citystream-rollup', id)) FROM "
    "(SELECT id FROM {ds_table} WHERE {of} = ANY(%s) ORDER BY id) r")
_ROLLUPS_OF_SQL = _statement("SELECT id, {of} FROM {ds_table} WHERE {of} = ANY(%s) ORDER BY id")
_SOURCE_SQL = _statement("SELECT {of}, {rollup} FROM {ds_table} WHERE id = %s")


async def _write_observations(conn: AsyncConnection[Any], buckets: list[Bucket], restore: bool = True) -> None:
    """Create, update or delete the Observation of each changed bucket; `restore`: write those that were
    taken away again (_RESTORE_SQL). An ingest batch need not: whatever took one (a FeatureOfInterest
    delete) recomputed and restored the bucket in its own transaction."""
    if not buckets:
        return
    new = [b for b in buckets if b.observation_id is None and b.count and b.feature_id is not None]
    sequence = [int(v) for (v,) in await (await conn.execute(
        "SELECT nextval(%s) FROM generate_series(1, %s)", (OBSERVATION.id_sequence, len(new)))).fetchall()
                ] if new else []
    inserts, updates, deletes, links = [], [], [], []
    for bucket in buckets:
        spec = orjson.loads(bucket.definition)
        value = bucket_value(bucket, spec["function"])
        document = {"ps": bucket.start.isoformat(), "pe": bucket.end.isoformat(),
                    "n": None if value is None else float(value),
                    "s": None if value is None else (str(value) if isinstance(value, int) else repr(value)),
                    "p": parameters(spec, bucket.count, bucket.final), "d": bucket.rollup_id,
                    "f": bucket.feature_id}
        if not bucket.count:
            if bucket.observation_id is not None:
                deletes.append({"id": bucket.observation_id, "ps": document["ps"]})
        elif bucket.observation_id is None:
            if bucket.feature_id is None:
                continue  # its FeatureOfInterest was deleted meanwhile: written with the next change
            new_id = observation_id(sequence.pop(0), bucket.start)
            bucket.observation_id, bucket.created = new_id, True
            inserts.append({**document, "id": new_id})
            links.append({"d": bucket.rollup_id, "ps": document["ps"], "id": new_id})
        else:
            updates.append({**document, "id": bucket.observation_id})
    async with conn.pipeline():  # one round trip for all five
        for statement, documents in ((_DELETE_SQL, deletes), (_INSERT_SQL, inserts), (_UPDATE_SQL, updates),
                                     (_RESTORE_SQL, updates if restore else []), (_LINK_SQL, links)):
            if documents:
                await conn.execute(statement, (orjson.dumps(documents).decode(),))


def parameters(spec: dict[str, Any], count: int, final: bool) -> dict[str, Any]:
    """The `parameters` of a bucket's Observation: what it is (the rollup's definition), how many raw
    Observations it holds, and whether it is final."""
    return {"rollup": {**spec, "count": count, "final": final}}


_NO_STREAM: dict[str, int | None] = {name: None for name in OBSERVATION.exactly_one_of}


def rollup_changes(buckets: Iterable[Bucket]) -> list[Change]:
    """The notifications a write's changed buckets make (after commit): their Observations created or
    updated (result and parameters; a bucket's phenomenonTime never changes). Emptied buckets' Observations
    went, which STA does not notify."""
    changes = []
    for bucket in buckets:
        if not bucket.count or bucket.observation_id is None:
            continue
        links = {**_NO_STREAM, ROLLUP_STREAM.name: bucket.rollup_id}
        if bucket.feature_id is not None:
            links[FEATURE.name] = bucket.feature_id
        changes.append(Change(OBSERVATION, bucket.observation_id, created=bucket.created,
                              properties=() if bucket.created else UPDATED_PROPERTIES, links=links))
    return changes


UPDATED_PROPERTIES = ("result", "parameters")
"""What changes in a bucket's Observation when its bucket does."""


# ------------------------------------------------------------------------------------------ finalizing

FINALIZE_BATCH = 5000
"""Buckets made final per transaction (a pass runs transactions until none are due)."""
_DUE_SQL = _statement("""
SELECT DISTINCT k.rollup_id FROM rollup_buckets k JOIN {ds_table} d ON d.id = k.rollup_id
WHERE NOT k.final AND k.bucket_end <= now()
  AND k.bucket_end + coalesce(d.{rollup}->>'finalAfter', {final_after})::interval <= now()
ORDER BY k.rollup_id
""")
_FINALIZE_SQL = _statement("""
WITH due AS (
    SELECT k.rollup_id, k.bucket_start FROM rollup_buckets k JOIN {ds_table} d ON d.id = k.rollup_id
    WHERE k.rollup_id = ANY(%(rollups)s) AND NOT k.final AND k.bucket_end <= now()
      AND k.bucket_end + coalesce(d.{rollup}->>'finalAfter', {final_after})::interval <= now()
    ORDER BY k.rollup_id, k.bucket_start LIMIT %(limit)s FOR UPDATE OF k),
made AS (
    UPDATE rollup_buckets k SET final = true FROM due
    WHERE k.rollup_id = due.rollup_id AND k.bucket_start = due.bucket_start
    RETURNING k.rollup_id, k.bucket_start, k.observation)
UPDATE {obs_table} o SET {parameters} = jsonb_set(o.{parameters}, '{{rollup,final}}', 'true')
FROM made WHERE o.id = made.observation AND o.{start} = made.bucket_start
RETURNING o.id, made.rollup_id, o.{feature}
""")


async def finalize_due(conn: AsyncConnection[Any], limit: int = FINALIZE_BATCH) -> list[Change]:
    """Make final (in the caller's transaction) up to `limit` provisional buckets whose rollup's
    `finalAfter` has passed since their end, and mark their Observations; returns their notifications.
    Takes the rollups' locks in id order first, as merges and recomputes do, so that it never deadlocks
    with them and never interleaves with a batch that is writing the same bucket."""
    rollups = [int(r) for (r,) in await (await conn.execute(_DUE_SQL)).fetchall()]
    if not rollups:
        return []
    await conn.execute(_LOCK_SQL, (rollups,))
    rows = await (await conn.execute(_FINALIZE_SQL, {"rollups": rollups, "limit": limit})).fetchall()
    return [Change(OBSERVATION, int(obs_id), created=False, properties=("parameters",),
                   links={**_NO_STREAM, ROLLUP_STREAM.name: int(rollup_id),
                          **({FEATURE.name: int(feature)} if feature is not None else {})})
            for obs_id, rollup_id, feature in rows]


# ------------------------------------------------------------------------------------------ releasing

_RELEASE_DUE_SQL = _statement("""
SELECT DISTINCT k.rollup_id FROM rollup_buckets k JOIN {ds_table} d ON d.id = k.rollup_id
WHERE NOT k.released AND (d.privacy_delay IS NULL OR k.bucket_end + d.privacy_delay <= now())
ORDER BY k.rollup_id
""")
_RELEASE_SQL = sql.SQL("""
WITH due AS (
    SELECT k.rollup_id, k.bucket_start FROM rollup_buckets k JOIN {ds_table} d ON d.id = k.rollup_id
    WHERE k.rollup_id = ANY(%(rollups)s) AND NOT k.released
      AND (d.privacy_delay IS NULL OR k.bucket_end + d.privacy_delay <= now())
    ORDER BY k.rollup_id, k.bucket_start LIMIT %(limit)s FOR UPDATE OF k),
made AS (
    UPDATE rollup_buckets k SET released = true FROM due
    WHERE k.rollup_id = due.rollup_id AND k.bucket_start = due.bucket_start
    RETURNING k.rollup_id, k.bucket_start, k.observation)
SELECT o.id, made.rollup_id, o.{feature} FROM made JOIN {obs_table} o ON o.id = made.observation
    AND o.{start} = made.bucket_start
WHERE {public}
""").format(public=visibility.public_release(OBSERVATION, sql.Identifier("o")).condition, **_NAMES).as_bytes(None)


async def release_due(conn: AsyncConnection[Any], limit: int = FINALIZE_BATCH) -> list[Change]:
    """The public's notifications of buckets of rollups whose privacy class withholds something (migration
    0016: their members were notified live, with a restricted audience): up to `limit` buckets that changed
    since their last release and whose stream's publication delay (if any) has passed since their end are
    marked released, in the caller's transaction; those the public may now see (visibility.public_release:
    not narrower than the minimum aggregation, not below the minimum count, not restricted) come back as
    changes for everyone. Locks as `finalize_due` does."""
    rollups = [int(r) for (r,) in await (await conn.execute(_RELEASE_DUE_SQL)).fetchall()]
    if not rollups:
        return []
    await conn.execute(_LOCK_SQL, (rollups,))
    rows = await (await conn.execute(_RELEASE_SQL, {"rollups": rollups, "limit": limit})).fetchall()
    return [Change(OBSERVATION, int(obs_id), created=False, properties=UPDATED_PROPERTIES, public=True,
                   links={**_NO_STREAM, ROLLUP_STREAM.name: int(rollup_id),
                          **({FEATURE.name: int(feature)} if feature is not None else {})})
            for obs_id, rollup_id, feature in rows]


def rollup_write_error(rollup_id: int, source_id: int) -> str:
    """Why an Observation cannot be written to a rollup Datastream."""
    return (f"Datastream {rollup_id} is a rollup of Datastream {source_id}: its Observations are computed "
            f"from that one's; write Observations to Datastream {source_id}")
