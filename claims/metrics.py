"""Prometheus metrics of the pipeline (served by the listener on `METRICS_PORT`).

Counters are incremented where things happen (pipeline, listener); the gauges that
describe database state (inbox backlog, claims by status) are refreshed by the
listener's heartbeat from `claims.selectors`, so a scrape never queries the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "evops_nats_messages_total",
    "NATS messages handled, by type and outcome.",
    ["type", "outcome"],
)
MESSAGES_RECEIVED = Counter(
    "evops_nats_messages_received_total", "NATS messages recorded in the inbox."
)
MESSAGES_DROPPED = Counter(
    "evops_nats_messages_dropped_total",
    "Received messages lost before they were stored, by reason "
    "(slow_consumer: nats-py's pending limits; intake_full: INTAKE_QUEUE_LIMIT).",
    ["reason"],
)
NATS_READER_DEATHS = Counter(
    "evops_nats_reader_deaths_total",
    "Times the NATS read loop was found dead while connected (then reconnected).",
)
INBOX_BACKLOG = Gauge("evops_inbox_backlog", "Inbound messages still pending.")
INBOX_OLDEST_AGE = Gauge(
    "evops_inbox_oldest_pending_seconds", "Age of the oldest pending inbound message."
)
CLAIMS_BY_STATUS = Gauge("evops_claims", "Claim records by status.", ["status"])
PUBLICATIONS = Counter(
    "evops_publications_total",
    "DID-document publications, by result (written, already_present, failed).",
    ["result"],
)
RETRIES = Counter(
    "evops_retries_total", "Transient failures scheduled for retry.", ["what"]
)
CACHE_SERVER_LATENCY = Histogram(
    "evops_cache_server_seconds", "Cache-server call latency.", ["call"]
)
CHAIN_LATENCY = Histogram("evops_chain_seconds", "Chain call latency.", ["call"])
STORE_LATENCY = Histogram("evops_credential_store_seconds", "Credential store latency.")
NATS_CONNECTED = Gauge(
    "evops_nats_connected", "1 when the listener is connected to NATS."
)
RECONCILE_RUNS = Counter(
    "evops_reconcile_assets_total", "Assets reconciled, by result.", ["result"]
)


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    """Observe the duration of the block (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        target = histogram.labels(*labels) if labels else histogram
        target.observe(time.perf_counter() - start)
