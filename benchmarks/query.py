"""Query benchmark (issue 3): typical SensorThings reads against a synthetic city, HTTP time vs SQL-only time.

    .venv/bin/python benchmarks/query.py [--observations 10000000] [--repeat 20] [--data-dir DIR]

Starts a private PostgreSQL in DIR (default benchmarks/.data/query), migrates it, loads the synthetic city
once (cached between runs, see city.py), serves the real app with `citystream serve` in a subprocess and
times each request over HTTP (httpx, keep-alive) and, interleaved, the very statement the server compiles
for it (same parser, compiler, limits and base URL) on a warm psycopg connection. The ratio HTTP p50 /
SQL p50 is what the API layer costs on top of PostgreSQL. Prints a table and writes
benchmarks/results/query-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import httpx
import psycopg
from city import START, CityParams, ensure_city
from harness import (
    CREDENTIALS,
    READERS,
    REPO,
    api_server,
    machine_info,
    percentile,
    reader_credential,
    write_report,
)
from psycopg import sql

from citystream.embedded import EmbeddedPostgres
from citystream.settings import Settings
from sensorthings.model.access import ANONYMOUS
from sensorthings.query import visibility
from sensorthings.query.compiler import Compiled, Limits, compile_collection, compile_count_estimate
from sensorthings.query.options import QueryOptions, parse_query
from sensorthings.query.path import ResourcePath, parse_path
from sensorthings.schema.migrate import apply_migrations

SETTINGS = Settings.from_env()  # what `citystream serve` reads too (it inherits our environment)
LIMITS = Limits(SETTINGS.default_top, SETTINGS.max_top, exact_count_limit=SETTINGS.exact_count_limit)
RATIO_TARGET = 1.5
LATEST_P95_TARGET_MS = 100.0
PAGE_SIZE, PAGED_OBSERVATIONS = 1000, 100_000
WARMUP = 2
POLYGON = "POLYGON((9.90 53.53, 10.05 53.53, 10.05 53.58, 9.90 53.58, 9.90 53.53))"  # inner Hamburg


@dataclass(frozen=True)
class Probe:
    key: str
    title: str
    resource: str
    params: list[tuple[str, str]]

    @property
    def target(self) -> str:
        return self.resource + ("?" + urlencode(self.params, quote_via=quote) if self.params else "")


@dataclass
class Row:
    key: str
    title: str
    request: str
    http_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    compile_ms: list[float] = field(default_factory=list)
    response_bytes: int = 0
    error: str | None = None
    p95_target_ms: float | None = None

    def summary(self) -> dict[str, Any]:
        if not self.http_ms or not self.sql_ms:
            return {"key": self.key, "title": self.title, "request": self.request, "error": self.error}
        http50, http95 = percentile(self.http_ms, 50), percentile(self.http_ms, 95)
        sql50, sql95 = percentile(self.sql_ms, 50), percentile(self.sql_ms, 95)
        misses = []
        if http50 / sql50 > RATIO_TARGET:
            misses.append(f"ratio > {RATIO_TARGET}")
        if self.p95_target_ms is not None and http95 >= self.p95_target_ms:
            misses.append(f"p95 >= {self.p95_target_ms:.0f} ms")
        targets = f"ratio <= {RATIO_TARGET}"
        if self.p95_target_ms is not None:
            targets += f", p95 < {self.p95_target_ms:.0f} ms"
        s: dict[str, Any] = {
            "key": self.key, "title": self.title, "request": self.request, "error": self.error,
            "samples": len(self.http_ms), "response_bytes": self.response_bytes,
            "http_p50_ms": http50, "http_p95_ms": http95, "sql_p50_ms": sql50, "sql_p95_ms": sql95,
            "ratio_p50": http50 / sql50, "ratio_p95": http95 / sql95,
            "targets": targets, "meets_targets": not misses, "misses": misses,
            "compile_p50_ms": percentile(self.compile_ms, 50) if self.compile_ms else None,
            "http_ms": self.http_ms, "sql_ms": self.sql_ms,
        }
        return s


def probes(city: CityParams) -> list[Probe]:
    day = START + timedelta(days=city.days // 2)
    window = (f"phenomenonTime ge {day:%Y-%m-%dT%H:%M:%SZ} and "
              f"phenomenonTime lt {day + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}")
    datastream = city.datastreams // 2 + 1
    return [
        Probe("1", "latest value per Thing", "Things",
              [("$expand", "Datastreams($expand=Observations($orderby=phenomenonTime desc;$top=1))")]),
        Probe("2", "one Datastream, 24 h, $top=1000", f"Datastreams({datastream})/Observations",
              [("$filter", window), ("$top", "1000")]),
        Probe("3", "Observations $count", "Observations", [("$count", "true"), ("$top", "1")]),
        Probe("4", "Locations st_within polygon", "Locations",
              [("$filter", f"st_within(location, geometry'{POLYGON}')")]),
        Probe("5", "3-level $expand with $filter", "Things",
              [("$top", "10"), ("$expand", "Datastreams($filter=ObservedProperty/name eq 'NO2';$expand=Observations("
                                           "$top=10;$orderby=phenomenonTime desc;$expand=FeatureOfInterest))")]),
        Probe("6", "$filter across relations", "Observations",
              [("$filter", "Datastream/ObservedProperty/name eq 'NO2' and result gt 40"), ("$top", "100")]),
    ]


@dataclass(frozen=True)
class Statement:
    """The SQL the server runs for one collection GET: the page statement and, when the exact count went
    past the limit, the planner's count estimate (sensorthings.http.routes.StaApi.get/_count)."""

    compiled: Compiled
    path: ResourcePath
    options: QueryOptions


reader = ANONYMOUS  # whom the server sees (harness.READERS): the SQL-only timings run its statements
restrictions = visibility.Restrictions()  # what the server knows of restricted data (set by main)


def compile_request(resource: str, params: list[tuple[str, str]], base: str) -> Statement:
    """Exactly what the server compiles for GET base/resource?params (collections only), for `reader`."""
    path = parse_path(resource)
    if not path.is_collection:
        raise ValueError(f"{resource} is not a collection")
    options = parse_query(params, default_top=LIMITS.default_top, max_top=LIMITS.max_top)
    view = visibility.view(reader, restrictions)  # as the server's StaApi.get compiles it
    return Statement(compile_collection(path, options, base, LIMITS, view=view), path, options)


def time_sql(conn: psycopg.Connection[Any], statement: Statement) -> float:
    bound = visibility.params(reader)
    began = time.perf_counter()
    row = conn.execute(statement.compiled.statement, statement.compiled.params | bound).fetchone()
    assert row is not None
    if row[2] is not None and row[2] > LIMITS.exact_count_limit:
        hidden = visibility.view(reader, restrictions) is visibility.View.VISIBLE
        view = visibility.View.VISIBLE if hidden else visibility.View.ALL  # as StaApi._count estimates
        estimate = compile_count_estimate(statement.path, statement.options, view=view)
        conn.execute(estimate.statement, estimate.params | bound).fetchone()
    return (time.perf_counter() - began) * 1000


def restrict_datastreams(conn: psycopg.Connection[Any], share: float) -> int:
    """Put the first `share` of the Datastreams (by id) into a restricted Project, the others into none; how
    many are restricted. The cached city is reset first, so that every run starts from the same state."""
    conn.execute("UPDATE datastreams SET project_id = NULL, visibility = NULL "
                 "WHERE project_id IS NOT NULL OR visibility IS NOT NULL")
    conn.execute("DELETE FROM projects WHERE name = 'benchmark restricted'")
    if share <= 0:
        return 0
    project = conn.execute("INSERT INTO projects (name, terms_of_use, creation_time, visibility) "
                           "VALUES ('benchmark restricted', 'none', now(), 'restricted') RETURNING id").fetchone()
    assert project is not None
    cursor = conn.execute("UPDATE datastreams SET project_id = %s WHERE id IN (SELECT id FROM datastreams ORDER BY id "
                          "LIMIT greatest(1, round((SELECT count(*) FROM datastreams) * %s)::int))",
                          (project[0], share))
    return cursor.rowcount


def time_http(client: httpx.Client, url: str) -> tuple[float, httpx.Response]:
    began = time.perf_counter()
    response = client.get(url)
    response.read()
    elapsed = (time.perf_counter() - began) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return elapsed, response


def split_link(link: str, base: str) -> tuple[str, list[tuple[str, str]]]:
    """(resource, params) of an absolute link under the service root `base`."""
    parts = urlsplit(link)
    prefix = urlsplit(base).path.rstrip("/") + "/"
    path = unquote(parts.path)
    if not path.startswith(prefix):
        raise ValueError(f"{link} is not under {base}")
    return path[len(prefix):], parse_qsl(parts.query, keep_blank_values=True)


def run_probe(probe: Probe, client: httpx.Client, conn: psycopg.Connection[Any], base: str, repeat: int,
              latest_target: bool) -> Row:
    row = Row(probe.key, probe.title, probe.target, p95_target_ms=LATEST_P95_TARGET_MS if latest_target else None)
    url = f"{base}/{probe.target}"
    try:
        for i in range(WARMUP + repeat):
            http_ms, response = time_http(client, url)
            began = time.perf_counter()
            compiled = compile_request(probe.resource, probe.params, base)
            compile_ms = (time.perf_counter() - began) * 1000
            sql_ms = time_sql(conn, compiled)
            if i >= WARMUP:
                row.http_ms.append(http_ms)
                row.sql_ms.append(sql_ms)
                row.compile_ms.append(compile_ms)
                row.response_bytes = len(response.content)
    except Exception as exc:  # report and go on with the other requests
        row.error = f"{type(exc).__name__}: {exc}"
    return row


def run_paging(client: httpx.Client, conn: psycopg.Connection[Any], base: str, walks: int
               ) -> tuple[Row, Row, tuple[str, list[tuple[str, str]]] | None]:
    """Follow @iot.nextLink through PAGED_OBSERVATIONS observations, `walks` times (plus one warm-up walk)."""
    first = Probe("7", "paging", "Observations", [("$top", str(PAGE_SIZE))])
    pages = PAGED_OBSERVATIONS // PAGE_SIZE
    per_page = Row("7a", f"paging: one page of {PAGE_SIZE}", f"{first.target} then @iot.nextLink")
    total = Row("7b", f"paging: {pages} pages, {PAGED_OBSERVATIONS:,} obs", per_page.request)
    last: tuple[str, list[tuple[str, str]]] | None = None
    try:
        for walk in range(1 + walks):
            link: str | None = f"{base}/{first.target}"
            http_total = sql_total = 0.0
            for _ in range(pages):
                if link is None:
                    raise RuntimeError("ran out of @iot.nextLink before the end of the walk (too few observations)")
                resource, params = split_link(link, base)
                http_ms, response = time_http(client, link)
                began = time.perf_counter()
                compiled = compile_request(resource, params, base)
                compile_ms = (time.perf_counter() - began) * 1000
                sql_ms = time_sql(conn, compiled)
                http_total += http_ms
                sql_total += sql_ms
                if walk > 0:
                    per_page.http_ms.append(http_ms)
                    per_page.sql_ms.append(sql_ms)
                    per_page.compile_ms.append(compile_ms)
                    per_page.response_bytes = len(response.content)
                    total.response_bytes += len(response.content) if walk == 1 else 0
                last = (resource, params)
                link = response.json().get("@iot.nextLink")
            if walk > 0:
                total.http_ms.append(http_total)
                total.sql_ms.append(sql_total)
    except Exception as exc:
        per_page.error = total.error = f"{type(exc).__name__}: {exc}"
    return per_page, total, last


def http_floor(client: httpx.Client, base: str, repeat: int) -> list[float]:
    """GET of the service root: the HTTP stack alone (no database), the fixed cost inside every ratio."""
    samples = [time_http(client, base)[0] for _ in range(WARMUP + repeat)]
    return samples[WARMUP:]


def explain(conn: psycopg.Connection[Any], statement: Statement) -> str:
    analyze = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement.compiled.statement
    bound = statement.compiled.params | visibility.params(reader)
    return "\n".join(str(r[0]) for r in conn.execute(analyze, bound).fetchall())


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("#", "request", "HTTP p50", "HTTP p95", "SQL p50", "SQL p95", "ratio", "compile", "size", "targets")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        if "http_p50_ms" not in r:
            lines.append((r["key"], r["title"], "-", "-", "-", "-", "-", "-", "-", f"ERROR {r['error']}"[:200]))
            continue
        verdict = "ok" if r["meets_targets"] else "MISS: " + "; ".join(r["misses"])
        lines.append((
            r["key"], r["title"], f"{r['http_p50_ms']:.1f} ms", f"{r['http_p95_ms']:.1f} ms",
            f"{r['sql_p50_ms']:.1f} ms", f"{r['sql_p95_ms']:.1f} ms", f"{r['ratio_p50']:.2f}",
            "-" if r["compile_p50_ms"] is None else f"{r['compile_p50_ms']:.2f} ms",
            f"{r['response_bytes'] / 1024:.0f} kB", f"{r['targets']}: {verdict}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    right = {2, 3, 4, 5, 6, 7, 8}
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        print("  ".join([*cells, line[-1]]))
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=10_000_000, help="observations in the city (10M)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per request (20)")
    parser.add_argument("--page-walks", type=int, default=2,
                        help=f"timed walks through {PAGED_OBSERVATIONS:,} observations by @iot.nextLink (2)")
    parser.add_argument("--credential", choices=CREDENTIALS, default="none",
                        help="read anonymously (none), with an API key (key) or an OIDC token (jwt)")
    parser.add_argument("--restricted", type=float, default=0.0, metavar="SHARE",
                        help="share of the Datastreams in a restricted Project (0: all public, comparable with "
                             "code before access control; anonymous readers then see less)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / ".data" / "query",
                        help="private PostgreSQL and cached city (benchmarks/.data/query)")
    args = parser.parse_args(argv)
    if args.observations < 1 or args.repeat < 1:
        parser.error("--observations and --repeat must be positive")
    city = CityParams(observations=args.observations)
    global reader
    reader = READERS[args.credential]

    with EmbeddedPostgres(args.data_dir) as postgres:
        dsn = postgres.dsn
        print(f"PostgreSQL {postgres.masked_dsn} (data in {args.data_dir})", flush=True)
        apply_migrations(dsn)
        generation = ensure_city(dsn, city)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT generation_seconds, loaded_at FROM benchmark_city WHERE id = 1").fetchone()
            assert row is not None
            if generation is None:
                print(f"city: cached ({city.observations:,} observations, generated in {row[0]:.1f} s "
                      f"on {row[1]:%Y-%m-%d %H:%M})")
            else:
                print(f"city: generated {city.observations:,} observations in {generation:.1f} s")
            machine = machine_info(conn)
            print(f"machine: {machine['nproc']} CPUs, {machine['memory']}, {machine['postgresql'].split(',')[0]}")
            restricted = restrict_datastreams(conn, args.restricted)
            restrictions.exist = bool(restricted)
            print(f"restricted Datastreams: {restricted}")
            with reader_credential(args.credential, dsn) as (credential, server_env), \
                    api_server(dsn, args.data_dir / "server.log", server_env) as base, \
                    httpx.Client(timeout=120, headers={"Accept-Encoding": "identity", **credential}) as client:
                print(f"API {base}; {args.repeat} timed runs per request after {WARMUP} warm-up runs", flush=True)
                floor = http_floor(client, base, args.repeat)
                print(f"  HTTP floor (GET /v1.1, no database): p50 {percentile(floor, 50):.1f} ms, "
                      f"p95 {percentile(floor, 95):.1f} ms", flush=True)
                rows: list[Row] = []
                specs: dict[str, tuple[str, list[tuple[str, str]]]] = {}
                for probe in probes(city):
                    rows.append(run_probe(probe, client, conn, base, args.repeat, latest_target=probe.key == "1"))
                    specs[probe.key] = (probe.resource, probe.params)
                    print(f"  {probe.key}. {probe.title}: done", flush=True)
                per_page, total, last_page = run_paging(client, conn, base, args.page_walks)
                rows += [per_page, total]
                if last_page is not None:
                    specs[per_page.key] = last_page
                print("  7. paging: done\n", flush=True)
                summaries = [r.summary() for r in rows]
                print_table(summaries)
                timed = [s for s in summaries if "sql_p50_ms" in s and s["key"] in specs]
                plan = None
                if timed:
                    slowest = max(timed, key=lambda s: s["sql_p50_ms"])
                    resource, params = specs[slowest["key"]]
                    note = " (its last page)" if slowest["key"] == per_page.key else ""
                    plan = {"key": slowest["key"], "request": f"{resource}?{urlencode(params, quote_via=quote)}",
                            "plan": explain(conn, compile_request(resource, params, base))}
                    print(f"\nslowest statement: {slowest['key']}. {slowest['title']}{note}\n"
                          f"EXPLAIN (ANALYZE, BUFFERS):\n{plan['plan']}")
        report = {
            "benchmark": "query",
            "parameters": {**asdict(city), "credential": args.credential, "restricted_share": args.restricted,
                           "restricted_datastreams": restricted, "repeat": args.repeat, "warmup": WARMUP,
                           "page_walks": args.page_walks,
                           "page_size": PAGE_SIZE, "paged_observations": PAGED_OBSERVATIONS,
                           "limits": asdict(LIMITS)},
            "targets": {"ratio_p50_max": RATIO_TARGET, "latest_value_p95_ms_max": LATEST_P95_TARGET_MS},
            "machine": machine,
            "generation_seconds": generation if generation is not None else row[0],
            "generated_this_run": generation is not None,
            "http_floor_ms": {"p50": percentile(floor, 50), "p95": percentile(floor, 95), "samples": floor},
            "results": summaries,
            "slowest_statement": plan,
        }
        print(f"\nreport: {write_report('query', report)}")
    return 1 if any(s.get("error") for s in summaries) else 0  # missed targets are reported, not failed


if __name__ == "__main__":
    sys.exit(main())
