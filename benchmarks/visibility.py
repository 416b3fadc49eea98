"""How to hide restricted data, measured: the statements of benchmarks/query.py's requests, SQL only, run
three ways on the same city in one run, interleaved:

- `plain`: the statement as a principal who may read everything gets it (no hiding; the ceiling);
- `predicates`: the statement compiled to hide restricted data (sensorthings.query.visibility), as an
  anonymous reader gets it — what CityStream runs;
- `rls`: the plain statement under a role whose row-level security policies hide the same rows (what
  istSOS4 does), as a backstop or as the only mechanism;
- `checked` (only with `--restricted 0`): the plain statement with its tables behind the guard that fails
  it if restricted data exists (View.CHECKED) — what CityStream runs for anonymous readers while nothing
  is restricted.

A share of the Datastreams (`--restricted`, default 0.1) is put into a restricted Project first. The policies
and role exist only during the run. Prints a table of p50s and ratios to `plain`, writes JSON.

    python benchmarks/visibility.py --observations 200000 --data-dir /var/tmp/bench/q
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from city import CityParams, ensure_city
from harness import REPO, machine_info, percentile, write_report
from query import LIMITS, Statement, probes, restrict_datastreams

from citystream.embedded import EmbeddedPostgres
from sensorthings.model.access import ANONYMOUS
from sensorthings.query import visibility
from sensorthings.query.compiler import compile_collection
from sensorthings.query.options import parse_query
from sensorthings.query.path import parse_path
from sensorthings.query.visibility import View
from sensorthings.schema.migrate import apply_migrations

ROLE = "citystream_bench_rls_reader"
BASE = "http://127.0.0.1/v1.1"
HIDDEN = {  # the policies: exactly the rows an anonymous reader may see (as query.visibility has it)
    "datastreams": "NOT restricted",
    "multi_datastreams": "NOT restricted",
    "projects": "visibility IS DISTINCT FROM 'restricted'",
    "observations": "coalesce(datastream_id <> ALL(ARRAY(SELECT id FROM datastreams WHERE restricted)), true) "
                    "AND coalesce(multi_datastream_id <> ALL(ARRAY(SELECT id FROM multi_datastreams "
                    "WHERE restricted)), true)",
}


def statement(resource: str, params: list[tuple[str, str]], view: View) -> Statement:
    path = parse_path(resource)
    options = parse_query(params, default_top=LIMITS.default_top, max_top=LIMITS.max_top)
    return Statement(compile_collection(path, options, BASE, LIMITS, view=view), path, options)


def install_policies(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
    conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}")
    for table, condition in HIDDEN.items():
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY bench_visible ON {table} FOR SELECT TO {ROLE} USING ({condition})")


def remove_policies(conn: psycopg.Connection[Any]) -> None:
    conn.execute("RESET ROLE")
    for table in HIDDEN:
        conn.execute(f"DROP POLICY IF EXISTS bench_visible ON {table}")
        conn.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


def timed(conn: psycopg.Connection[Any], compiled: Statement, bound: dict[str, Any], as_role: bool
          ) -> tuple[float, int]:
    if as_role:
        conn.execute(f"SET ROLE {ROLE}")
    try:
        began = time.perf_counter()
        row = conn.execute(compiled.compiled.statement, compiled.compiled.params | bound).fetchone()
        elapsed = (time.perf_counter() - began) * 1000
    finally:
        if as_role:
            conn.execute("RESET ROLE")
    assert row is not None
    return elapsed, len(row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per request and way (30)")
    parser.add_argument("--restricted", type=float, default=0.1, metavar="SHARE",
                        help="share of the Datastreams in a restricted Project (0.1)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / ".data" / "query")
    args = parser.parse_args(argv)
    city = CityParams(observations=args.observations)
    results: list[dict[str, Any]] = []
    with EmbeddedPostgres(args.data_dir) as postgres:
        apply_migrations(postgres.dsn)
        ensure_city(postgres.dsn, city)
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            machine = machine_info(conn)
            restricted = restrict_datastreams(conn, args.restricted)
            print(f"{restricted} restricted Datastreams; {args.repeat} runs per request and way, interleaved")
            bound = visibility.params(ANONYMOUS)
            install_policies(conn)
            try:
                for probe in probes(city):
                    plain = statement(probe.resource, probe.params, View.ALL)
                    hidden = statement(probe.resource, probe.params, View.VISIBLE)
                    ways = {"plain": (plain, False), "predicates": (hidden, False), "rls": (plain, True)}
                    if not restricted:
                        ways["checked"] = (statement(probe.resource, probe.params, View.CHECKED), False)
                    samples: dict[str, list[float]] = {w: [] for w in ways}
                    sizes: dict[str, int] = {}
                    for i in range(args.repeat + 3):
                        for way, (compiled, as_role) in ways.items():
                            ms, size = timed(conn, compiled, bound, as_role)
                            sizes[way] = size
                            if i >= 3:
                                samples[way].append(ms)
                    p50 = {w: percentile(s, 50) for w, s in samples.items()}
                    results.append({"key": probe.key, "title": probe.title, "p50_ms": p50, "bytes": sizes,
                                    **{f"{w}_ratio": p50[w] / p50["plain"] for w in ways if w != "plain"}})
                    print(f"  {probe.key}. {probe.title}: done", flush=True)
            finally:
                remove_policies(conn)
                restrict_datastreams(conn, 0)
    ways = [w for w in ("predicates", "rls", "checked") if results and w in results[0]["p50_ms"]]
    print(f"\n{'#':<3}{'request':<34}{'plain':>9}" + "".join(f"{w:>12}" for w in ways)
          + "".join(f"{w[:5] + '/plain':>13}" for w in ways) + f"{'same answer':>13}")
    for r in results:
        p = r["p50_ms"]
        same = "yes" if len({r["bytes"][w] for w in ways if w != "checked"}) == 1 else "NO"
        print(f"{r['key']:<3}{r['title']:<34}{p['plain']:>7.2f}ms" + "".join(f"{p[w]:>10.2f}ms" for w in ways)
              + "".join(f"{r[w + '_ratio']:>13.2f}" for w in ways) + f"{same:>13}")
    report = {"benchmark": "visibility", "parameters": {"observations": args.observations, "repeat": args.repeat,
                                                          "restricted_share": args.restricted,
                                                          "restricted_datastreams": restricted},
              "machine": machine, "results": results}
    print(f"\nreport: {write_report('visibility', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
