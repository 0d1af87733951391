"""Exports one trace of nested spans to ingest's OTLP receiver with the real OpenTelemetry
Python SDK exporters (PyPI opentelemetry-sdk, opentelemetry-exporter-otlp).

Usage: otlp_export.py grpc|http ENDPOINT RUN_ID none|gzip

The spans are recorded by the SDK (TracerProvider, an in-memory exporter), then handed to the
real OTLP exporter (gRPC or HTTP/protobuf); the script fails unless that export returns
SUCCESS, which the receiver answers only after the broker acknowledged the spans. Prints one
JSON line per span: name, trace id, span id, parent span id (hex), start/end (ns).
"""

import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def main():
    protocol, endpoint, run_id, compression = sys.argv[1:5]
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=endpoint,
            insecure=True,
            timeout=30,
            compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=endpoint + "/v1/traces",
            timeout=30,
            compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        )

    memory = InMemorySpanExporter()
    resource = Resource.create(
        {"service.name": f"checkout-{protocol}-{compression}", "deployment.environment": "test", "run.id": run_id}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("audit.test", "1.0")

    with tracer.start_as_current_span(
        "POST /orders",
        kind=SpanKind.SERVER,
        attributes={
            "enduser.id": f"user-{protocol}",
            "http.request.method": "POST",
            "http.route": "/orders",
            "http.response.status_code": 201,
            "client.address": "10.1.2.3",
            "run.id": run_id,
        },
    ) as root:
        with tracer.start_as_current_span(
            "reserve stock", kind=SpanKind.INTERNAL, attributes={"items": 3}
        ):
            with tracer.start_as_current_span(
                "UPDATE stock",
                kind=SpanKind.CLIENT,
                attributes={"db.system": "postgresql", "db.name": "shop", "db.sql.table": "stock"},
            ) as db:
                db.add_event("row locked", {"row": 17})
        with tracer.start_as_current_span(
            "charge card",
            kind=SpanKind.CLIENT,
            attributes={"cloud.resource_id": "arn:aws:lambda:eu-west-1:1:function:charge"},
        ) as charge:
            charge.set_status(Status(StatusCode.ERROR, "card declined"))
        root.set_status(Status(StatusCode.OK))

    spans = memory.get_finished_spans()
    result = exporter.export(spans)
    exporter.shutdown()
    if result != SpanExportResult.SUCCESS:
        print(f"export failed: {result}", file=sys.stderr)
        sys.exit(1)
    for s in spans:
        ctx = s.get_span_context()
        print(
            json.dumps(
                {
                    "name": s.name,
                    "traceId": format(ctx.trace_id, "032x"),
                    "spanId": format(ctx.span_id, "016x"),
                    "parentSpanId": format(s.parent.span_id, "016x") if s.parent else None,
                    "start": s.start_time,
                    "end": s.end_time,
                }
            )
        )


if __name__ == "__main__":
    main()
