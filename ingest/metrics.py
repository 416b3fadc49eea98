"""Ingest counters for `/metrics` (Prometheus text format, through prometheus_client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("citystream_ingest_received", "Observation payloads received", ["source"])
STORED = Counter("citystream_ingest_stored", "Observations committed", ["source"])
REJECTED = Counter("citystream_ingest_rejected", "Observation payloads rejected (dead letters for MQTT)",
                   ["source"])
BATCH_ROWS = Histogram("citystream_ingest_batch_rows", "Payloads per committed batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
COMMIT_SECONDS = Histogram("citystream_ingest_commit_seconds", "Time to write and commit one batch",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
QUEUED = Gauge("citystream_ingest_queued", "Payloads waiting for a batch")
RETRIES = Counter("citystream_ingest_batch_retries", "Batches retried after a database error")
