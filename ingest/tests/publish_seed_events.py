#!/usr/bin/env python3
"""Publishes audit events in seed 000 §3.2's structure to a Kafka topic with the confluent-kafka
Python client (librdkafka), as platform components do. Used by ingest/tests/producer_labels.rs.

    python3 publish_seed_events.py BROKERS TOPIC COUNT SEED

Every event gets a unique requestId (`req-<seed>-<n>`) and a category from the producers' own
vocabulary that the enum lacks (ai_processing, policy_decision, approval, deployment), or a random
string (ASCII, Unicode, empty, enum-looking), or (one in ten) a known one; some also carry an unknown severity, outcome or
actor type, and one in four has no id (ingest derives one). Prints one JSON line per event
(`{"requestId", "category", "severity", "outcome", "actorType"}`, absent labels null), then
exits 0 once every record is acknowledged by the broker (non-zero otherwise).
"""

import datetime
import json
import random
import string
import sys

from confluent_kafka import Producer

PRODUCER_CATEGORIES = ["ai_processing", "policy_decision", "approval", "deployment"]


def random_label(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return "".join(rng.choice(string.ascii_letters + "_- .") for _ in range(rng.randrange(1, 24)))
    if kind == 1:
        return "".join(chr(rng.randrange(0xA0, 0x2FFF)) for _ in range(rng.randrange(1, 8)))
    if kind == 2:
        return ""
    if kind == 3:
        return rng.choice(["AI Processing", "policy-decision", "x" * 200, "🙂 approval", "null"])
    return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(1, 16)))


def event(n: int, seed: int, rng: random.Random, now: datetime.datetime):
    if n % 10 == 9:
        category = rng.choice(["user_interaction", "Governance", "INFRASTRUCTURE"])
    else:
        category = PRODUCER_CATEGORIES[n % 4] if n % 5 else random_label(rng)
    ev = {
        "id": f"evt-{seed}-{n}",
        "eventType": "infrastructure_request",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "userId": f"user-{n % 7}",
        "teamId": f"team-{n % 3}",
        "sessionId": "session-789",
        "requestId": f"req-{seed}-{n}",
        "source": "natural_language_interface",
        "category": category,
        "action": "create_api_server",
        "data": {
            "naturalLanguageRequest": "I need a new API server for user management",
            "extractedParameters": {"name": "user-management-api", "runtime": "nodejs"},
            "confidence": 0.95,
            "tools": ["create_api_server", "create_database"],
        },
        "result": {"status": "success", "deploymentId": f"dep-{n}", "estimatedCost": 85.00},
        "metadata": {"clientIp": "192.168.1.100", "userAgent": "Mozilla/5.0...", "processingTime": 1250},
        "traceId": f"trace-{seed}-{n}",
        "spanId": "span-2c3d",
        "parentId": "parent-span-4e5f",
    }
    labels = {"requestId": ev["requestId"], "category": category, "severity": None,
              "outcome": None, "actorType": None}
    if n % 4 == 3:
        del ev["id"]
    if n % 3 == 0:
        ev["severity"] = labels["severity"] = random_label(rng)
    if n % 7 == 0:
        ev["outcome"] = labels["outcome"] = rng.choice(["partially_applied", random_label(rng)])
    if n % 11 == 0:
        ev["actor"] = {"type": rng.choice(["robot", random_label(rng)])}
        labels["actorType"] = ev["actor"]["type"]
    return {"event": ev}, labels


def main() -> int:
    brokers, topic, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    now = datetime.datetime.now(datetime.timezone.utc)
    failures = []

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))

    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    for n in range(count):
        value, labels = event(n, seed, rng, now)
        p.produce(topic, key=labels["requestId"].encode(), value=json.dumps(value).encode(),
                  on_delivery=delivered)
        p.poll(0)
        print(json.dumps(labels))
    left = p.flush(60)
    if left or failures:
        print(f"{left} records unacknowledged, {len(failures)} failed: {failures[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
