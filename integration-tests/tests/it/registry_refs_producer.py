"""A real Confluent Avro producer using schema references, for tests/it/registry.rs.

confluent-kafka's SchemaRegistryClient registers the AuditEvent schema split into subjects the
way shared types are kept by real producers, and its AvroSerializer (handed a Schema with
`references`) resolves them, registers the root schema with its references and frames the
records (00 + schema id + datum); a plain Producer sends them to the raw topic.

Subjects (<t> = the raw topic):
  <t>-actor-type         the ActorType enum
  <t>-actor              the Actor record, referencing io.auditpipe.ActorType (<t>-actor-type v1)
  <t>-actor-shared       the Actor record with ActorType inline
  <t>-value              AuditEvent with actor: "io.auditpipe.Actor", twice:
                           shared  references <t>-actor-shared v1   (one level)
                           nested  references <t>-actor v1          (A -> B -> C)
  <t>-flat-value         the flat AuditEvent schema, for comparison

Each kind sends `count` records with the same content except the event id.

Argument: a JSON object (brokers, topic, registry_url, user, password, avsc, run_id, count).
Prints one JSON object: {"sent": [{"kind", "event_id", "schema_id"}, ...]}.
"""

import copy
import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

# The datum builder of the flat producer (this script's directory is on sys.path).
from registry_producer import datum

NS = "io.auditpipe"


def cut_out(node, name):
    """Cuts the first definition of the named type `name` out of `node`, leaving its full name
    in its place; returns the definition with its namespace made explicit."""
    if isinstance(node, dict):
        if node.get("name") == name and node.get("type") in ("record", "enum", "fixed"):
            return "replace", dict(node, namespace=NS)
        for key, child in node.items():
            found = cut_out(child, name)
            if found is not None:
                if found[0] == "replace":
                    node[key] = NS + "." + name
                    return "done", found[1]
                return found
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found = cut_out(child, name)
            if found is not None:
                if found[0] == "replace":
                    node[i] = NS + "." + name
                    return "done", found[1]
                return found
    return None


def cut(node, name):
    found = cut_out(node, name)
    if found is None or found[0] != "done":
        sys.exit("no %s in the schema" % name)
    return found[1]


def main():
    cfg = json.loads(sys.argv[1])
    topic = cfg["topic"]
    with open(cfg["avsc"], encoding="utf-8") as f:
        flat = json.load(f)

    root = copy.deepcopy(flat)
    actor_shared = cut(root, "Actor")
    actor_nested = copy.deepcopy(actor_shared)
    actor_type = cut(actor_nested, "ActorType")

    registry = SchemaRegistryClient({
        "url": cfg["registry_url"],
        "basic.auth.user.info": cfg["user"] + ":" + cfg["password"],
    })

    def register(subject, schema, references=None):
        registry.register_schema(subject, Schema(json.dumps(schema), "AVRO", references or []))
        return registry.get_latest_version(subject).version

    type_version = register(topic + "-actor-type", actor_type)
    actor_version = register(topic + "-actor", actor_nested, [
        SchemaReference(NS + ".ActorType", topic + "-actor-type", type_version)])
    shared_version = register(topic + "-actor-shared", actor_shared)

    producer = Producer({
        "bootstrap.servers": cfg["brokers"],
        "enable.idempotence": True,
        "acks": "all",
    })
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    now_us = int(time.time() * 1_000_000)
    plans = [
        ("flat", json.dumps(flat), topic + "-flat"),
        ("shared", Schema(json.dumps(root), "AVRO", [
            SchemaReference(NS + ".Actor", topic + "-actor-shared", shared_version)]), topic),
        ("nested", Schema(json.dumps(root), "AVRO", [
            SchemaReference(NS + ".Actor", topic + "-actor", actor_version)]), topic),
    ]
    sent = []
    for kind, schema, subject_topic in plans:
        serializer = AvroSerializer(registry, schema)
        ctx = SerializationContext(subject_topic, MessageField.VALUE)
        for i in range(cfg["count"]):
            d = datum(flat)
            d.update(
                event_id="%s-%s-%d" % (cfg["run_id"], kind, i),
                event_type="registry.referenced_event",
                event_time_us=now_us + i,
                source_component="registry-refs-producer",
            )
            d["actor"].update(
                id="svc-ref-producer-%d" % i, name="Referencing producer", actor_type="SERVICE")
            d["action"]["verb"] = "publish"
            d["tenant"]["tenant_id"] = "tenant-refs"
            d["attributes"] = [{"key": "n", "value": str(i)}]
            value = serializer(d, ctx)
            sent.append({
                "kind": kind,
                "event_id": d["event_id"],
                "schema_id": int.from_bytes(value[1:5], "big"),
            })
            producer.produce(topic, value=value, key=b"tenant-refs", on_delivery=delivered)

    left = producer.flush(60)
    if left or failures:
        sys.exit("not delivered: %d left, failures %s" % (left, failures))
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    main()
