"""A real Confluent Avro producer for tests/it/registry.rs.

confluent-kafka's AvroSerializer + SchemaRegistryClient (pointed at the schema-registry
fixture, with basic auth) register the writer schemas and frame the records (00 + schema id +
datum); a plain Producer sends them to the raw topic of the real broker.

Sends, per kind:
  current       the AuditEvent schema as compiled into ingest (subject <topic>-value, v1)
  evolved       fields reversed + an extra optional field (same subject, v2)
  incompatible  event_time_us as a string (subject <topic>-legacy-value: a registry would
                refuse it under the topic's own subject)
  unknown       a Confluent header naming a schema id the registry never issued

Argument: a JSON object (brokers, topic, registry_url, user, password, avsc, run_id, count,
unknown_id). Prints one JSON object: {"sent": [{"kind", "event_id", "schema_id"}, ...]}.
"""

import copy
import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

PRIMITIVES = {
    "null": None, "boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0,
    "bytes": b"", "string": "",
}


def datum(schema):
    """A value of `schema` made of the fields' defaults, or the first choice of each type."""
    named = {}

    def value(t):
        if isinstance(t, str):
            if t in PRIMITIVES:
                return PRIMITIVES[t]
            return value(named[t])
        if isinstance(t, list):
            return value(t[0])
        kind = t["type"]
        if kind in ("record", "enum", "fixed"):
            named[t["name"]] = t
            if "namespace" in t:
                named[t["namespace"] + "." + t["name"]] = t
        if kind == "record":
            out = {}
            for f in t["fields"]:
                # Defaults of named types define them too: walk the type either way.
                v = value(f["type"])
                out[f["name"]] = copy.deepcopy(f["default"]) if "default" in f else v
            return out
        if kind == "enum":
            return t.get("default", t["symbols"][0])
        if kind == "array":
            return []
        if kind == "map":
            return {}
        if kind == "fixed":
            return b"\0" * t["size"]
        return value(kind)  # a logical type over a primitive

    return value(schema)


def main():
    cfg = json.loads(sys.argv[1])
    topic = cfg["topic"]
    with open(cfg["avsc"], encoding="utf-8") as f:
        current = json.load(f)

    evolved = copy.deepcopy(current)
    evolved["fields"].reverse()
    evolved["fields"].append(
        {"name": "producer_build", "type": ["null", "string"], "default": None})

    incompatible = copy.deepcopy(current)
    for field in incompatible["fields"]:
        if field["name"] == "event_time_us":
            field["type"] = "string"

    registry = SchemaRegistryClient({
        "url": cfg["registry_url"],
        "basic.auth.user.info": cfg["user"] + ":" + cfg["password"],
    })
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
    sent = []
    plans = [
        ("current", current, topic),
        ("evolved", evolved, topic),
        ("incompatible", incompatible, topic + "-legacy"),
    ]
    for kind, schema, subject_topic in plans:
        serializer = AvroSerializer(registry, json.dumps(schema))
        ctx = SerializationContext(subject_topic, MessageField.VALUE)
        n = cfg["count"] if kind != "incompatible" else 1
        for i in range(n):
            event_id = "%s-%s-%d" % (cfg["run_id"], kind, i)
            d = datum(schema)
            d.update(
                event_id=event_id,
                event_type="registry.avro_event",
                event_time_us=now_us if kind != "incompatible" else str(now_us),
                source_component="registry-it-producer",
            )
            d["actor"]["id"] = "svc-avro-producer"
            d["actor"]["name"] = "Avro producer"
            d["action"]["verb"] = "publish"
            d["action"]["description"] = "%s writer schema" % kind
            d["tenant"]["tenant_id"] = "tenant-avro"
            d["attributes"] = [{"key": "writer", "value": kind}]
            if kind == "evolved":
                d["producer_build"] = "2.4.1"
            value = serializer(d, ctx)
            sent.append({
                "kind": kind,
                "event_id": event_id,
                "schema_id": int.from_bytes(value[1:5], "big"),
            })
            producer.produce(topic, value=value, key=b"tenant-avro", on_delivery=delivered)

    unknown = b"\x00" + int(cfg["unknown_id"]).to_bytes(4, "big") + b"\x02\x00"
    producer.produce(topic, value=unknown, key=b"tenant-avro", on_delivery=delivered)
    sent.append({"kind": "unknown", "event_id": "", "schema_id": int(cfg["unknown_id"])})

    left = producer.flush(60)
    if left or failures:
        sys.exit("not delivered: %d left, failures %s" % (left, failures))
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    main()
