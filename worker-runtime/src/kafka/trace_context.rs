//! W3C trace context in Kafka record headers, and the spans every stage makes for a record.
//!
//! A record carries its trace context in the `traceparent` / `tracestate` headers (the W3C
//! format, [`TraceContextPropagator`]). Each stage extracts it from its input, makes a
//! `<topic> process` span (kind Consumer) as its child, a `<topic> send` span (kind Producer)
//! for each output, and injects the send span's context into the output's headers, so one
//! trace shows an event's whole path from the producer through ingest, enrich and the chainer
//! to both sinks. Sinks make one span per insert or put, linked to the records' spans.
//! Names and attributes follow the OpenTelemetry messaging conventions (`messaging.system`,
//! `messaging.destination.name`, `messaging.destination.partition.id`,
//! `messaging.kafka.offset`, `messaging.operation.type`).
//!
//! Tracing is on only when an exporter is installed ([`crate::telemetry`] sets [`set_enabled`]
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is given). While it is off every helper here returns at
//! its first branch, without reading a header or allocating, so the per-record cost is one
//! relaxed atomic load; the processors' own header copying still carries an incoming
//! `traceparent` downstream unchanged. Sampling is the SDK's (`OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`; default parent-based always-on): an unsampled record still
//! passes its trace id on (flag `00`), and its spans are not recorded.
//!
//! Spans are made through the global tracer provider, with the worker's name as the
//! instrumentation scope (and `audit.stage` attribute): a process normally runs one worker
//! (its `service.name` comes from [`crate::telemetry::init`]), while tests that run every
//! worker in one process still tell the stages apart.

use super::record::InputRecord;
use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
/// Span attributes (re-exported so that workers need no OpenTelemetry dependency of their own).
pub use opentelemetry::KeyValue;
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// The W3C header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Links per batch span at most (the SDK's default span limit; more would be dropped anyway).
pub const MAX_BATCH_LINKS: usize = 128;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The sampler follows the parent's decision (`parentbased_*`, the SDK's default).
static PARENT_DECIDES: AtomicBool = AtomicBool::new(true);

/// Tells the record helpers whether the installed sampler keeps the parent's sampling decision:
/// then a record whose `traceparent` says "not sampled" gets no span at all (no parsing
/// beyond the flags, no allocation), and its header travels on unchanged.
pub fn set_parent_decides(on: bool) {
    PARENT_DECIDES.store(on, Ordering::Relaxed);
}

/// Whether an `OTEL_TRACES_SAMPLER` value (unset = the SDK's `parentbased_always_on`) keeps a
/// remote parent's decision.
pub fn sampler_is_parent_based(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") => true,
        Some(v) => v.starts_with("parentbased_"),
    }
}

/// `Some(sampled)` for a well-formed version-00 `traceparent` value, from its flags alone.
fn traceparent_sampled(v: &[u8]) -> Option<bool> {
    // 00-<32 hex>-<16 hex>-<2 hex>
    if v.len() != 55 || !v.starts_with(b"00-") || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16);
    let flags = hex(v[53])? * 16 + hex(v[54])?;
    Some(flags & 1 == 1)
}

/// Turns span creation on or off process-wide (on once a tracer provider with an exporter is
/// installed as the global one).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether spans are made at all.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Reads trace context from a record's headers (names compared ASCII case-insensitively,
/// first occurrence wins; a value that is not UTF-8 is absent).
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a [(String, Vec<u8>)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Writes trace context into a record's headers, replacing any header of the same name (a
/// processor may have copied its input's, which must not travel on beside the new one); an
/// empty value only removes the old header.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        // The propagator writes an empty `tracestate` when there is none: not worth a header.
        if !value.is_empty() {
            self.0.push((key.to_owned(), value.into_bytes()));
        }
    }
}

/// The trace context carried by `headers` (an empty context when there is none or it is
/// malformed).
pub fn extract(headers: &[(String, Vec<u8>)]) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx`'s span context into `headers` (nothing when it has no valid span context).
pub fn inject(cx: &Context, headers: &mut Vec<(String, Vec<u8>)>) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The span context of a W3C-style `(trace id, span id)` pair in hex (as events carry them:
/// `AuditEvent.trace`), as a remote, sampled context; `None` when either is missing or invalid.
pub fn remote_span_context(trace_id: Option<&str>, span_id: Option<&str>) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace_id?.trim()).ok()?;
    let span_id = SpanId::from_hex(span_id?.trim()).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Links the span of the current context (a processor runs inside its record's `process`
/// span) to the trace an event names in its own fields, so an event that arrived with a trace
/// id but no `traceparent` header still leads to its producer's trace. Nothing while tracing
/// is off or the ids are missing or invalid.
pub fn link_current(trace_id: Option<&str>, span_id: Option<&str>) {
    if !enabled() {
        return;
    }
    if let Some(sc) = remote_span_context(trace_id, span_id) {
        Context::current()
            .span()
            .add_link(sc, vec![KeyValue::new("audit.link.reason", "event_trace")]);
    }
}

fn tracer(scope: &'static str) -> BoxedTracer {
    global::tracer_provider().tracer_with_scope(InstrumentationScope::builder(scope).build())
}

fn messaging_attributes(
    scope: &'static str,
    operation: &'static str,
    topic: &str,
    partition: Option<i32>,
) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("audit.stage", scope),
    ];
    if let Some(p) = partition {
        attrs.push(KeyValue::new(
            "messaging.destination.partition.id",
            p.to_string(),
        ));
    }
    attrs
}

/// A span a stage made (or not, while tracing is off): the context to run work in and to
/// inject into outputs.
#[derive(Debug, Clone, Default)]
pub struct RecordSpan {
    cx: Option<Context>,
    /// No span because the record's trace is not sampled (its parent said so and the sampler
    /// follows the parent): spans made from this one are skipped too, and the record's own
    /// `traceparent` travels on as the processors copy it.
    unsampled: bool,
}

impl RecordSpan {
    /// No span (tracing off); a span made from it with [`send_span`] starts a new trace.
    pub fn none() -> Self {
        RecordSpan {
            cx: None,
            unsampled: false,
        }
    }

    fn unsampled() -> Self {
        RecordSpan {
            cx: None,
            unsampled: true,
        }
    }

    /// The context holding this span; `None` while tracing is off.
    pub fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// The span's own span context (for links); `None` while tracing is off.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.cx.as_ref().map(|cx| cx.span().span_context().clone())
    }

    /// Writes this span's context into `headers` (nothing while tracing is off).
    pub fn inject(&self, headers: &mut Vec<(String, Vec<u8>)>) {
        if let Some(cx) = &self.cx {
            inject(cx, headers);
        }
    }

    /// Adds an attribute (e.g. the offset a send landed at).
    pub fn set_attribute(&self, kv: impl FnOnce() -> KeyValue) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(kv());
        }
    }

    /// Links this span to a context the work also belongs to (an event's own trace ids).
    pub fn add_link(&self, sc: SpanContext, why: &'static str) {
        if let Some(cx) = &self.cx {
            cx.span()
                .add_link(sc, vec![KeyValue::new("audit.link.reason", why)]);
        }
    }

    /// Marks the span failed.
    pub fn set_error(&self, message: impl std::fmt::Display) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(message.to_string()));
        }
    }

    /// Ends the span (also done when the last clone is dropped; ending here fixes the time).
    pub fn end(&self) {
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }

    /// Ends the span with the outcome of the work it covered.
    pub fn end_with<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        if let Err(e) = result {
            self.set_error(e);
        }
        self.end();
    }
}

/// `<topic> process` (kind Consumer), the child of the trace context `input` carries, for a
/// stage's handling of one input record.
pub fn process_span(scope: &'static str, input: &InputRecord) -> RecordSpan {
    if !enabled() {
        return RecordSpan::none();
    }
    if PARENT_DECIDES.load(Ordering::Relaxed)
        && HeaderExtractor(&input.headers)
            .get(TRACEPARENT)
            .and_then(|v| traceparent_sampled(v.as_bytes()))
            == Some(false)
    {
        return RecordSpan::unsampled();
    }
    let parent = extract(&input.headers);
    let tracer = tracer(scope);
    let mut attrs = messaging_attributes(scope, "process", &input.topic, Some(input.partition));
    attrs.push(KeyValue::new("messaging.kafka.offset", input.offset));
    let span = tracer
        .span_builder(format!("{} process", input.topic))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attrs)
        .start_with_context(&tracer, &parent);
    RecordSpan {
        unsampled: false,
        cx: Some(parent.with_span(span)),
    }
}

/// `<topic> send` (kind Producer), a child of `parent` (or a root when `parent` is none), for
/// producing one record; inject it into that record's headers.
pub fn send_span(
    scope: &'static str,
    parent: &RecordSpan,
    topic: &str,
    partition: Option<i32>,
) -> RecordSpan {
    if parent.unsampled {
        return RecordSpan::unsampled();
    }
    if !enabled() {
        return RecordSpan::none();
    }
    let empty;
    let parent_cx = match &parent.cx {
        Some(cx) => cx,
        None => {
            empty = Context::new();
            &empty
        }
    };
    let tracer = tracer(scope);
    let span = tracer
        .span_builder(format!("{topic} send"))
        .with_kind(SpanKind::Producer)
        .with_attributes(messaging_attributes(scope, "send", topic, partition))
        .start_with_context(&tracer, parent_cx);
    RecordSpan {
        unsampled: false,
        cx: Some(parent_cx.with_span(span)),
    }
}

/// A span (kind Server) for a request that arrived at a worker's own door (ingest's HTTP and
/// OTLP receivers), the child of the `traceparent` / `tracestate` the caller sent, if any.
/// Run the request's work inside its context (`opentelemetry::context::FutureExt`, or
/// [`RecordSpan::context`]) so that [`current`] finds it.
pub fn server_span(
    scope: &'static str,
    name: impl Into<Cow<'static, str>>,
    traceparent: Option<&[u8]>,
    tracestate: Option<&[u8]>,
) -> RecordSpan {
    if !enabled() {
        return RecordSpan::none();
    }
    let mut headers = Vec::with_capacity(2);
    if let Some(v) = traceparent {
        headers.push((TRACEPARENT.to_owned(), v.to_vec()));
    }
    if let Some(v) = tracestate {
        headers.push((TRACESTATE.to_owned(), v.to_vec()));
    }
    let parent = extract(&headers);
    let tracer = tracer(scope);
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("audit.stage", scope)])
        .start_with_context(&tracer, &parent);
    RecordSpan {
        unsampled: false,
        cx: Some(parent.with_span(span)),
    }
}

/// Runs `work` inside `span`'s context (so that [`current`] and [`link_current`] find the
/// span), or as it is while tracing is off.
pub async fn in_span<F: std::future::Future>(span: &RecordSpan, work: F) -> F::Output {
    match &span.cx {
        Some(cx) => opentelemetry::context::FutureExt::with_context(work, cx.clone()).await,
        None => work.await,
    }
}

/// The span of the current context (none while tracing is off, or outside any span): the
/// parent for the records a request handler produces.
pub fn current() -> RecordSpan {
    if !enabled() {
        return RecordSpan::none();
    }
    let cx = Context::current();
    if cx.has_active_span() {
        RecordSpan {
            cx: Some(cx),
            unsampled: false,
        }
    } else {
        RecordSpan::none()
    }
}

/// An internal span (`name`, kind Internal) for work that is not one record's: a partition's
/// recovery, a checkpoint. A root unless `parent` holds a span.
pub fn internal_span(
    scope: &'static str,
    name: impl Into<Cow<'static, str>>,
    parent: Option<&Context>,
    attributes: Vec<KeyValue>,
) -> RecordSpan {
    if !enabled() {
        return RecordSpan::none();
    }
    let tracer = tracer(scope);
    let mut attrs = attributes;
    attrs.push(KeyValue::new("audit.stage", scope));
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attrs);
    let cx = match parent {
        Some(p) => {
            let span = builder.start_with_context(&tracer, p);
            p.with_span(span)
        }
        None => Context::new().with_span(builder.start(&tracer)),
    };
    RecordSpan {
        cx: Some(cx),
        unsampled: false,
    }
}

/// The record spans a batch (an insert, a segment put) covers, for its span's links.
#[derive(Debug, Default)]
pub struct BatchLinks {
    links: Vec<SpanContext>,
    /// Records beyond [`MAX_BATCH_LINKS`] (counted on the batch span, not linked).
    dropped: u64,
}

impl BatchLinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `span`'s context (nothing while tracing is off or it is not sampled).
    pub fn add(&mut self, span: &RecordSpan) {
        let Some(cx) = &span.cx else { return };
        let sc = cx.span().span_context().clone();
        if !sc.is_sampled() {
            return;
        }
        if self.links.len() < MAX_BATCH_LINKS {
            self.links.push(sc);
        } else {
            self.dropped += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// A span for one batch write (kind Client: an insert into ClickHouse, a put to the archive),
/// linked to the spans of the records it stores, so each event's trace reaches its storage.
pub fn batch_span(
    scope: &'static str,
    name: impl Into<Cow<'static, str>>,
    links: BatchLinks,
    mut attributes: Vec<KeyValue>,
) -> RecordSpan {
    if !enabled() {
        return RecordSpan::none();
    }
    let tracer = tracer(scope);
    attributes.push(KeyValue::new("audit.stage", scope));
    attributes.push(KeyValue::new(
        "audit.batch.unlinked_records",
        i64::try_from(links.dropped).unwrap_or(i64::MAX),
    ));
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .with_links(links.links.into_iter().map(Link::with_context).collect())
        .start_with_context(&tracer, &Context::new());
    RecordSpan {
        unsampled: false,
        cx: Some(Context::new().with_span(span)),
    }
}

#[cfg(test)]
mod tests;
