"""The Python pass-through of issue 10: an independent baseline for every worker's CPU.

A confluent-kafka (librdkafka) loop that consumes a topic and produces each record unchanged
(key, value, headers) to another, idempotent, acks=all, linger 5 ms, lz4: the settings the
issue measured it with (134 µs of CPU per event then). `worker-bench` runs it as a process of
its own on the raw demo records, before the workers, and measures it from /proc exactly as it
measures them; each worker's CPU per event is then also given as a ratio to this one.

Usage: passthrough.py BROKERS INPUT OUTPUT GROUP [key=value ...]   (extra librdkafka
properties for both clients, as worker-bench's --kafka-property). Runs until killed.
"""

import signal
import sys

from confluent_kafka import Consumer, KafkaException, Producer


def main() -> int:
    brokers, source, sink, group, *extra = sys.argv[1:]
    props = dict(kv.split("=", 1) for kv in extra)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            **props,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            **props,
        }
    )
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(err)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    consumer.subscribe([source])
    while not stop:
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            if msg.error():
                raise KafkaException(msg.error())
            while True:
                try:
                    producer.produce(
                        sink,
                        key=msg.key(),
                        value=msg.value(),
                        headers=msg.headers(),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        producer.poll(0)
        if failed:
            print(f"delivery failed: {failed[0]}", file=sys.stderr)
            return 1
    producer.flush(10)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
