"""Prometheus metrics of a running bot (served by :mod:`engine.monitoring` when RAPPORT_METRICS_PORT is set).

Labels never hold a user id or text: only the platform, the kind of answer, a stage or an error type.
The process collector adds ``process_resident_memory_bytes`` and CPU time on Linux.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

MESSAGES_RECEIVED = Counter("rapport_messages_received_total", "Messages the engine was given", ["platform"])
MESSAGES_ANSWERED = Counter(
    "rapport_messages_answered_total",
    "Answers by kind: reply (generated), memory (from stored facts or the persona), command, safety, "
    "rate_limited, notice, duplicate, ignored", ["platform", "kind"])
REPLY_LATENCY = Histogram("rapport_reply_latency_seconds",
                          "Seconds per answer: end_to_end (engine, per message) or model (per reply batch)",
                          ["stage"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("rapport_batch_size", "Requests answered together in one model batch", buckets=SIZE_BUCKETS)
DECODE_ROWS = Histogram("rapport_decode_rows", "Sequences decoded together in one decoder run",
                        buckets=SIZE_BUCKETS)
CANDIDATES = Histogram("rapport_candidates_per_reply", "Candidates ranked for one reply (after the output filter)",
                       buckets=SIZE_BUCKETS)
ERRORS = Counter("rapport_errors_total", "Failures while answering, by exception type", ["type"])
REDIS_ROUNDTRIP = Histogram("rapport_redis_roundtrip_seconds", "PING round trip to Redis",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
SPLIT_QUEUE = Gauge("rapport_split_queue_depth", "Split mode: entries in the request stream")
SPLIT_PENDING = Gauge("rapport_split_pending", "Split mode: entries delivered to workers and not yet answered")
GATEWAY_WAITING = Gauge("rapport_gateway_waiting", "Split mode: messages this gateway waits a reply for")
REACTIONS = Counter("rapport_reactions_total", "Reactions to the bot's replies: used (tied to a reply the bot "
                    "knows) or ignored (unknown or expired message, or an account kept out)", ["platform", "outcome"])
SAFETY_DECISIONS = Counter("rapport_safety_decisions_total", "Safety decisions by layer (pattern, classifier, "
                           "context, profanity; for dropped candidates: unsafe, agreeing, pair; borderline "
                           "messages) and category", ["layer", "category"])
