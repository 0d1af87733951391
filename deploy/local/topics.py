#!/usr/bin/env python3
"""Kafka helper for the local stack (tansu): readiness check, topics, smoke test.

    topics.py ping   [--timeout S]   exit 0 once the broker answers a Metadata request
    topics.py ensure                 create the project's topics if missing, set the configs
                                     they need (also on existing topics), verify them
    topics.py list                   print topics and partition counts
    topics.py smoke                  produce one record and consume it back

Uses confluent-kafka (librdkafka 2.x from its PyPI wheel, verified against
tansu). Settings come from the environment (deploy/local/env.sh):
KAFKA_BROKERS, AUDIT_TOPIC_PREFIX, AUDIT_TOPIC_PARTITIONS.
tansu has no topic auto-creation, so the project creates its topics here.

The chained and checkpoints topics are the audit record: they get infinite retention
(retention.ms=-1, retention.bytes=-1), as worker_runtime::kafka::admin gives them. On existing
topics `ensure` sets it with IncrementalAlterConfigs (tansu 0.6 implements it and
DescribeConfigs, not the older AlterConfigs). cleanup.policy is never set to `delete`: tansu 0.6
with an explicit `cleanup.policy=delete` and `retention.ms=-1` deletes every record (its
retention SQL compares the record age with -1); without it tansu never deletes by age.
"""

import argparse
import logging
import os
import sys
import time
import uuid

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                      NewTopic)
except ImportError:  # pragma: no cover
    sys.exit("topics.py: python module confluent_kafka missing (run: deploy/local/stack.sh install)")

# Topics of the pipeline (design.md), without the prefix.
PLAIN = ["raw", "validated", "rejected", "enriched", "chained", "checkpoints"]
COMPACTED = ["context.users", "context.teams"]
# Kept forever (the chain and its signed checkpoints): see the module doc.
FOREVER = ["chained", "checkpoints"]
INFINITE_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}

_quiet = logging.getLogger("topics.py.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.setLevel(logging.CRITICAL)
_quiet.propagate = False


def brokers() -> str:
    return os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")


def prefix() -> str:
    return os.environ.get("AUDIT_TOPIC_PREFIX", "audit.")


def partitions() -> int:
    return int(os.environ.get("AUDIT_TOPIC_PARTITIONS", "4"))


def admin() -> AdminClient:
    return AdminClient({"bootstrap.servers": brokers(), "logger": _quiet, "socket.timeout.ms": 5000})


def wanted():
    """(name, partitions, config) of every topic the project needs."""
    n = partitions()
    out = [(prefix() + t, n, dict(INFINITE_RETENTION) if t in FOREVER else {}) for t in PLAIN]
    out += [(prefix() + t, n, {"cleanup.policy": "compact"}) for t in COMPACTED]
    return out


def metadata(client: AdminClient, timeout: float):
    return client.list_topics(timeout=timeout).topics


def cmd_ping(args) -> int:
    try:
        md = admin().list_topics(timeout=args.timeout)
    except KafkaException as e:
        print(f"kafka: no answer from {brokers()}: {e}", file=sys.stderr)
        return 1
    if not md.brokers:
        print(f"kafka: {brokers()} answered without brokers", file=sys.stderr)
        return 1
    return 0


def create(client: AdminClient, specs) -> None:
    """Create the topics of specs that do not exist yet (idempotent)."""
    existing = metadata(client, 10)
    missing = [NewTopic(name, num_partitions=n, replication_factor=1, config=cfg)
               for (name, n, cfg) in specs if name not in existing]
    if not missing:
        return
    for name, fut in client.create_topics(missing, request_timeout=15).items():
        try:
            fut.result()
            print(f"kafka: created topic {name}")
        except KafkaException as e:
            if e.args and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently
            raise SystemExit(f"kafka: cannot create topic {name}: {e}")


def wait_for_partitions(client: AdminClient, specs, timeout: float = 20.0) -> None:
    """Verify through Metadata that each topic exists with its partition count."""
    deadline = time.monotonic() + timeout
    while True:
        md = metadata(client, 10)
        problems = []
        for name, n, _ in specs:
            t = md.get(name)
            if t is None or t.error is not None:
                problems.append(f"{name}: missing ({t.error if t is not None else 'not in metadata'})")
            elif len(t.partitions) != n:
                problems.append(f"{name}: {len(t.partitions)} partitions, wanted {n}")
        if not problems:
            return
        mismatch = [p for p in problems if "partitions, wanted" in p]
        if mismatch or time.monotonic() > deadline:
            msg = "; ".join(problems)
            hint = " (partition counts differ: 'deploy/local/stack.sh reset' wipes the broker)" if mismatch else ""
            raise SystemExit(f"kafka: topics not as wanted: {msg}{hint}")
        time.sleep(0.5)


def config_differences(client: AdminClient, specs):
    """(name, {key: (got, wanted)}) of the topics whose configs differ from what specs ask
    (DescribeConfigs; tansu lists only the configs set on the topic: absent = None)."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for (name, _, cfg) in specs if cfg]
    if not resources:
        return []
    out = []
    for res, fut in client.describe_configs(resources, request_timeout=15).items():
        got = {k: v.value for k, v in fut.result().items()}
        want = dict(next(cfg for (name, _, cfg) in specs if name == res.name))
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if diff:
            out.append((res.name, diff))
    return sorted(out)


def fix_configs(client: AdminClient, wrong) -> None:
    """Set the wanted configs of existing topics (IncrementalAlterConfigs SET: other configs stay).
    Only what may be changed safely: retention, never a compaction switch (that is a reset)."""
    resources = []
    for name, diff in wrong:
        entries = [ConfigEntry(k, want, incremental_operation=AlterConfigOpType.SET)
                   for k, (_, want) in diff.items() if k in INFINITE_RETENTION]
        if entries:
            resources.append(ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries))
    if not resources:
        return
    for res, fut in client.incremental_alter_configs(resources, request_timeout=15).items():
        try:
            fut.result()
        except KafkaException as e:
            raise SystemExit(f"kafka: cannot set the retention of {res.name}: {e}")
        print(f"kafka: set {', '.join(f'{k}=-1' for k in INFINITE_RETENTION)} on existing topic {res.name}")


def verify_configs(client: AdminClient, specs) -> None:
    """Verify through DescribeConfigs the topic configs we asked for (compaction, retention)."""
    wrong = [f"{name}: {k}={got!r}, wanted {want!r}"
             for name, diff in config_differences(client, specs) for k, (got, want) in diff.items()]
    if wrong:
        raise SystemExit("kafka: topic configs differ: " + "; ".join(wrong)
                         + " ('deploy/local/stack.sh reset' wipes the broker)")


def cmd_ensure(args) -> int:
    client = admin()
    specs = wanted()
    create(client, specs)
    wait_for_partitions(client, specs)
    fix_configs(client, config_differences(client, specs))
    verify_configs(client, specs)
    print(f"kafka: {len(specs)} topics ready with {partitions()} partitions each "
          f"(prefix '{prefix()}', {', '.join(prefix() + t for t in COMPACTED)} compacted, "
          f"{', '.join(prefix() + t for t in FOREVER)} kept forever)")
    return 0


def cmd_list(args) -> int:
    md = metadata(admin(), 10)
    for name in sorted(md):
        print(f"{name}\t{len(md[name].partitions)}")
    return 0


def cmd_smoke(args) -> int:
    """Produce one record with headers and read it back with a fresh group."""
    client = admin()
    topic = "stack-check"  # outside the project's prefix: tests never see it
    specs = [(topic, 1, {})]
    create(client, specs)
    wait_for_partitions(client, specs)
    value = f"stack-check {uuid.uuid4()}".encode()
    delivered = []
    p = Producer({"bootstrap.servers": brokers(), "enable.idempotence": True, "acks": "all",
                  "logger": _quiet})
    p.produce(topic, key=b"k", value=value, headers=[("h", b"1")],
              on_delivery=lambda err, msg: delivered.append((err, msg)))
    if p.flush(15) != 0 or not delivered or delivered[0][0] is not None:
        raise SystemExit(f"kafka smoke: produce failed: {delivered}")
    offset = delivered[0][1].offset()
    c = Consumer({"bootstrap.servers": brokers(), "group.id": f"stack-check-{uuid.uuid4()}",
                  "enable.auto.commit": False, "logger": _quiet})
    try:
        c.assign([TopicPartition(topic, 0, offset)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                raise SystemExit(f"kafka smoke: consume error: {m.error()}")
            if m.value() == value and m.headers() == [("h", b"1")]:
                print(f"kafka smoke: produced and consumed {topic}[0]@{offset} OK")
                return 0
        raise SystemExit("kafka smoke: record not read back within 20 s")
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ping = sub.add_parser("ping")
    ping.add_argument("--timeout", type=float, default=3.0)
    sub.add_parser("ensure")
    sub.add_parser("list")
    sub.add_parser("smoke")
    args = ap.parse_args()
    return {"ping": cmd_ping, "ensure": cmd_ensure, "list": cmd_list, "smoke": cmd_smoke}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
