"""OGC API – Features benchmark (issue 5): items pages over HTTP against the SQL of the same page.

    .venv/bin/python -m benchmarks.features [--observations 10000000] [--repeat 20] [--walks 10] [--data-dir DIR]
    (or: .venv/bin/python benchmarks/features.py ...)

Uses the query benchmark's synthetic city and, by default, its data directory (benchmarks/.data/query), so
the 10-million-observation load is generated once for both (see city.py). Serves the real app with
`citystream serve` and times, over HTTP (httpx, keep-alive, no gzip) and interleaved with the very
statement the server builds for the same page (geo.params + geo.query, on a warm psycopg connection):

1. a page of 1,000 `observations` filtered by bbox (the middle quarter of the city) and a 3-day datetime;
2. the `latest` collection in full (one feature per Datastream);
3. walking 100,000 observations by `next` links: the first and the 100th page, the whole walk, and pages
   1-10 against pages 91-100 (each page a sample: 10 per walk).

Targets: a 1,000-feature page within 1.5x its SQL time; the 100th page as fast as the first. Prints a table
and writes benchmarks/results/features-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg
from psycopg import sql
from starlette.datastructures import QueryParams

# query.py, city.py and harness.py import each other by bare name (they run as scripts), so their directory
# must be importable for `python -m benchmarks.features` too. Appended, not prepended: benchmarks/ingest.py
# must not shadow the `ingest` package.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from city import BBOX, START, CityParams, ensure_city  # noqa: E402
from harness import (  # noqa: E402
    CREDENTIALS,
    READERS,
    REPO,
    api_server,
    machine_info,
    reader_credential,
    write_report,
)
from query import WARMUP, Row, print_table, restrict_datastreams, time_http  # noqa: E402

from citystream.embedded import EmbeddedPostgres  # noqa: E402
from geo.collections import collections  # noqa: E402
from geo.filtering import compile_tree, parse_filter  # noqa: E402
from geo.params import parse_items  # noqa: E402
from geo.query import items_sql  # noqa: E402
from sensorthings.model.access import ANONYMOUS  # noqa: E402
from sensorthings.query import visibility  # noqa: E402
from sensorthings.query.sql import SqlBuilder  # noqa: E402
from sensorthings.schema.migrate import apply_migrations  # noqa: E402

RATIO_TARGET = 1.5
PAGE_SIZE, WALKED_OBSERVATIONS = 1000, 100_000
PAGES = WALKED_OBSERVATIONS // PAGE_SIZE
reader = ANONYMOUS  # whom the server sees (harness.READERS): the SQL-only timings run its statements
restrictions = visibility.Restrictions()  # what the server knows of restricted data (set by main)
BUCKET = 10  # pages 1-10 against pages 91-100: more samples than the single first and last page


def page_sql(collection_id: str, query: str, sta_root: str) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement the server runs for GET /ogcapi/collections/{id}/items?{query} (geo.api.OgcApi.items)."""
    view = visibility.view(reader, restrictions)  # as the server's OGC API compiles it
    collection = collections(view)[collection_id]
    builder = SqlBuilder(sta_root)
    request = parse_items(QueryParams(query), collection)
    if request.filter is not None:
        request.filter_tree = parse_filter(request.filter, request.filter_lang)
    statement = items_sql(collection, request, builder, compile_tree)
    # Composed: what psycopg's execute() is typed to take
    return sql.Composed([statement]), builder.params | visibility.params(reader)


def time_sql(conn: psycopg.Connection[Any], statement: tuple[sql.Composed, dict[str, Any]]) -> float:
    began = time.perf_counter()
    conn.execute(*statement).fetchall()
    return (time.perf_counter() - began) * 1000


def query_of(url: str) -> str:
    return urlsplit(url).query


def run_page(key: str, title: str, collection: str, params: dict[str, str], client: httpx.Client,
             conn: psycopg.Connection[Any], ogc: str, sta_root: str, repeat: int) -> Row:
    query = urlencode(params)
    row = Row(key, title, f"/collections/{collection}/items?{query}")
    try:
        for i in range(WARMUP + repeat):
            http_ms, response = time_http(client, f"{ogc}/collections/{collection}/items?{query}")
            sql_ms = time_sql(conn, page_sql(collection, query, sta_root))
            if i >= WARMUP:
                row.http_ms.append(http_ms)
                row.sql_ms.append(sql_ms)
                row.response_bytes = len(response.content)
    except Exception as exc:  # report and go on with the other requests
        row.error = f"{type(exc).__name__}: {exc}"
    return row


def run_walk(client: httpx.Client, conn: psycopg.Connection[Any], ogc: str, sta_root: str, walks: int
             ) -> tuple[list[Row], str | None]:
    """Follow `next` links through WALKED_OBSERVATIONS observations, `walks` times after one warm-up walk;
    every walk must see each id exactly once."""
    start = f"{ogc}/collections/observations/items?limit={PAGE_SIZE}"
    first = Row("3a", f"walk: page 1 of {PAGES}", start)
    last = Row("3b", f"walk: page {PAGES} of {PAGES}", f"{start} then next links")
    total = Row("3c", f"walk: {PAGES} pages, {WALKED_OBSERVATIONS:,} obs", last.request)
    head = Row("3d", f"walk: pages 1-{BUCKET}, each", last.request)
    tail = Row("3e", f"walk: pages {PAGES - BUCKET + 1}-{PAGES}, each", last.request)
    last_query: str | None = None
    try:
        for walk in range(1 + walks):
            link: str | None = start
            seen: set[int] = set()
            http_total = sql_total = 0.0
            walk_bytes = 0
            for page in range(1, PAGES + 1):
                if link is None:
                    raise RuntimeError("ran out of next links before the end of the walk (too few observations)")
                http_ms, response = time_http(client, link)
                sql_ms = time_sql(conn, page_sql("observations", query_of(link), sta_root))
                document = response.json()
                ids = [f["id"] for f in document["features"]]
                if len(ids) != PAGE_SIZE or seen.intersection(ids):
                    raise RuntimeError(f"page {page}: {len(ids)} features, {len(seen.intersection(ids))} seen before")
                seen.update(ids)
                http_total += http_ms
                walk_bytes += len(response.content)
                sql_total += sql_ms
                if walk > 0:
                    for row, wanted in ((first, page == 1), (last, page == PAGES), (head, page <= BUCKET),
                                        (tail, page > PAGES - BUCKET)):
                        if wanted:
                            row.http_ms.append(http_ms)
                            row.sql_ms.append(sql_ms)
                            row.response_bytes = len(response.content)
                if page == PAGES:
                    last_query = query_of(link)
                link = next((li["href"] for li in document["links"] if li["rel"] == "next"), None)
            if walk > 0:
                total.http_ms.append(http_total)
                total.sql_ms.append(sql_total)
                total.response_bytes = walk_bytes  # every id was seen exactly once (checked above)
    except Exception as exc:
        first.error = last.error = total.error = head.error = tail.error = f"{type(exc).__name__}: {exc}"
    return [first, last, total, head, tail], last_query


def explain(conn: psycopg.Connection[Any], collection: str, query: str, sta_root: str) -> str:
    statement, params = page_sql(collection, query, sta_root)
    rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement, params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=10_000_000, help="observations in the city (10M)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per request (20)")
    parser.add_argument("--walks", type=int, default=10,  # ~5 s each; 3 gave page 1 and page 100 3 samples apiece
                        help=f"timed walks through {WALKED_OBSERVATIONS:,} observations by next links (10)")
    parser.add_argument("--credential", choices=CREDENTIALS, default="none",
                        help="read anonymously (none), with an API key (key) or an OIDC token (jwt)")
    parser.add_argument("--restricted", type=float, default=0.0, metavar="SHARE",
                        help="share of the Datastreams in a restricted Project (as in query.py; 0: all public)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / ".data" / "query",
                        help="private PostgreSQL and cached city, shared with query.py (benchmarks/.data/query)")
    args = parser.parse_args(argv)
    if args.observations < WALKED_OBSERVATIONS or args.repeat < 1 or args.walks < 1:
        parser.error(f"--observations must be at least {WALKED_OBSERVATIONS:,}; --repeat and --walks positive")
    city = CityParams(observations=args.observations)
    global reader
    reader = READERS[args.credential]
    west, south, east, north = BBOX
    width, height = east - west, north - south
    quarter = (west + width / 4, south + height / 4, east - width / 4, north - height / 4)
    day = START + timedelta(days=city.days // 2)
    window = f"{day:%Y-%m-%dT%H:%M:%SZ}/{day + timedelta(days=3):%Y-%m-%dT%H:%M:%SZ}"
    filtered = {"limit": str(PAGE_SIZE), "bbox": ",".join(f"{v:g}" for v in quarter), "datetime": window}

    with EmbeddedPostgres(args.data_dir) as postgres:
        dsn = postgres.dsn
        print(f"PostgreSQL {postgres.masked_dsn} (data in {args.data_dir})", flush=True)
        apply_migrations(dsn)
        generation = ensure_city(dsn, city)
        print(f"city: {'cached' if generation is None else f'generated in {generation:.1f} s'} "
              f"({city.observations:,} observations, {city.things * city.datastreams_per_thing:,} Datastreams)")
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = machine_info(conn)
            print(f"machine: {machine['nproc']} CPUs, {machine['memory']}, {machine['postgresql'].split(',')[0]}")
            restricted = restrict_datastreams(conn, args.restricted)
            restrictions.exist = bool(restricted)
            print(f"restricted Datastreams: {restricted}")
            with reader_credential(args.credential, dsn) as (credential, server_env), \
                    api_server(dsn, args.data_dir / "server.log", server_env) as sta_root, \
                    httpx.Client(timeout=120, headers={"Accept-Encoding": "identity", **credential}) as client:
                ogc = sta_root.rsplit("/", 1)[0] + "/ogcapi"
                print(f"API {ogc}; {args.repeat} timed runs per request after {WARMUP} warm-up runs", flush=True)
                rows = [run_page("1", f"observations: bbox + 3 days, limit={PAGE_SIZE}", "observations", filtered,
                                 client, conn, ogc, sta_root, args.repeat)]
                print("  1. bbox + datetime page: done", flush=True)
                latest_count = city.things * city.datastreams_per_thing
                rows.append(run_page("2", f"latest in full ({latest_count:,} features)", "latest",
                                     {"limit": "10000"}, client, conn, ogc, sta_root, args.repeat))
                print("  2. latest: done", flush=True)
                walk_rows, last_query = run_walk(client, conn, ogc, sta_root, args.walks)
                rows += walk_rows
                print("  3. walk: done\n", flush=True)
                summaries = [r.summary() for r in rows]
                timed = {s["key"]: s for s in summaries if "http_p50_ms" in s}
                for early, late, what in (("3a", "3b", "page 1"), ("3d", "3e", f"pages 1-{BUCKET}")):
                    if early in timed and late in timed:  # the walk's target: late pages as fast as early ones
                        timed[late]["targets"] += f"; p50 <= 1.2x {what}"
                        if timed[late]["http_p50_ms"] > 1.2 * timed[early]["http_p50_ms"]:
                            timed[late]["meets_targets"] = False
                            timed[late]["misses"].append(f"slower than {what}")
                print_table(summaries)
                plans = {"1": explain(conn, "observations", urlencode(filtered), sta_root),
                         "2": explain(conn, "latest", "limit=10000", sta_root)}
                if last_query is not None:
                    plans["3b"] = explain(conn, "observations", last_query, sta_root)
                for key, plan in plans.items():
                    print(f"\nEXPLAIN (ANALYZE, BUFFERS) of {key}:\n{plan}")
        report = {
            "benchmark": "features",
            "parameters": {**asdict(city), "credential": args.credential, "restricted_share": args.restricted,
                           "restricted_datastreams": restricted, "repeat": args.repeat, "warmup": WARMUP,
                           "walks": args.walks,
                           "page_size": PAGE_SIZE, "walked_observations": WALKED_OBSERVATIONS,
                           "bbox": quarter, "datetime": window},
            "targets": {"ratio_p50_max": RATIO_TARGET, "page_100_vs_page_1_max": 1.2},
            "machine": machine,
            "results": summaries,
            "plans": plans,
        }
        print(f"\nreport: {write_report('features', report)}")
    return 1 if any(s.get("error") for s in summaries) else 0  # missed targets are reported, not failed


if __name__ == "__main__":
    sys.exit(main())
