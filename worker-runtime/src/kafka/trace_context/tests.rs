use super::*;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn headers(tp: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("other".into(), b"x".to_vec()),
        ("TraceParent".into(), tp.as_bytes().to_vec()),
    ]
}

#[test]
fn extract_reads_traceparent_case_insensitively() {
    let cx = extract(&headers(PARENT));
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid());
    assert!(sc.is_remote());
    assert!(sc.is_sampled());
    assert_eq!(
        sc.trace_id(),
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
    );
}

#[test]
fn extract_ignores_malformed_and_non_utf8() {
    assert!(!extract(&headers("00-zz-yy-01"))
        .span()
        .span_context()
        .is_valid());
    let bad = vec![("traceparent".to_owned(), vec![0xff, 0xfe])];
    assert!(!extract(&bad).span().span_context().is_valid());
    assert!(!extract(&[]).span().span_context().is_valid());
}

#[test]
fn inject_replaces_a_copied_header() {
    let mut h = headers(PARENT);
    let cx = extract(&headers(PARENT));
    let sc = SpanContext::new(
        cx.span().span_context().trace_id(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    inject(&Context::new().with_remote_span_context(sc), &mut h);
    let tps: Vec<_> = h
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .collect();
    assert_eq!(tps.len(), 1, "{h:?}");
    assert_eq!(
        tps[0].1,
        b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01".to_vec()
    );
    assert!(h.iter().any(|(k, _)| k == "other"));
}

#[test]
fn remote_span_context_parses_event_fields() {
    let sc = remote_span_context(
        Some("0af7651916cd43dd8448eb211c80319c"),
        Some("b7ad6b7169203331"),
    )
    .unwrap();
    assert!(sc.is_valid() && sc.is_remote());
    assert!(remote_span_context(Some("0af7651916cd43dd8448eb211c80319c"), None).is_none());
    assert!(remote_span_context(
        Some("00000000000000000000000000000000"),
        Some("b7ad6b7169203331")
    )
    .is_none());
    assert!(remote_span_context(Some("not hex"), Some("b7ad6b7169203331")).is_none());
}

fn input(headers: Vec<(String, Vec<u8>)>) -> InputRecord {
    InputRecord {
        topic: "t.raw".into(),
        partition: 2,
        offset: 41,
        key: None,
        payload: Some(b"{}".to_vec()),
        headers,
        timestamp_ms: None,
    }
}

/// Disabled: no span, no header written, nothing read (this test runs with the flag off, as
/// every test of this module but the one below that turns it on under its own lock).
#[test]
fn disabled_makes_nothing() {
    let _g = FLAG.lock().unwrap_or_else(|e| e.into_inner());
    set_enabled(false);
    let span = process_span("ingest", &input(headers(PARENT)));
    assert!(span.context().is_none());
    let send = send_span("ingest", &span, "t.validated", None);
    let mut h = Vec::new();
    send.inject(&mut h);
    assert!(h.is_empty());
    let mut links = BatchLinks::new();
    links.add(&send);
    assert!(links.is_empty());
}

static FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// With a provider installed: process is the child of the incoming context, send the child of
/// process, the output header names the send span, and a batch span links to the record.
#[test]
fn spans_follow_the_record() {
    let _g = FLAG.lock().unwrap_or_else(|e| e.into_inner());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    set_enabled(true);

    let process = process_span("enrich", &input(headers(PARENT)));
    process.add_link(
        remote_span_context(
            Some("11111111111111111111111111111111"),
            Some("2222222222222222"),
        )
        .unwrap(),
        "event_trace",
    );
    let send = send_span("enrich", &process, "t.enriched", Some(2));
    let mut out = vec![("traceparent".to_owned(), PARENT.as_bytes().to_vec())];
    send.inject(&mut out);
    send.end();
    process.end();
    let mut links = BatchLinks::new();
    links.add(&send);
    batch_span("sink-clickhouse", "clickhouse insert", links, vec![]).end();
    set_enabled(false);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
    let p = by_name("t.raw process");
    let s = by_name("t.enriched send");
    let b = by_name("clickhouse insert");
    assert_eq!(p.span_kind, SpanKind::Consumer);
    assert_eq!(s.span_kind, SpanKind::Producer);
    assert_eq!(
        p.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(p.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(s.parent_span_id, p.span_context.span_id());
    assert_eq!(s.span_context.trace_id(), p.span_context.trace_id());
    assert_eq!(p.instrumentation_scope.name(), "enrich");
    assert!(p
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "messaging.kafka.offset" && kv.value.as_str() == "41"));
    assert!(p
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "messaging.system" && kv.value.as_str() == "kafka"));
    assert_eq!(p.links.links.len(), 1);
    // The output header names the send span, replacing the copied input header.
    let tp = HeaderExtractor(&out).get("traceparent").unwrap().to_owned();
    assert_eq!(
        tp,
        format!(
            "00-{}-{}-01",
            s.span_context.trace_id(),
            s.span_context.span_id()
        )
    );
    assert_eq!(out.len(), 1);
    assert_eq!(b.links.links.len(), 1);
    assert_eq!(b.links.links[0].span_context, s.span_context);
    let _ = provider.shutdown();
}

/// The provider `telemetry` installs takes its sampler from `OTEL_TRACES_SAMPLER` (the SDK's
/// default configuration): `always_off` records nothing even under a sampled parent, and
/// passes the trace id on unsampled; unset, the parent's decision is kept.
#[tokio::test]
async fn sampler_comes_from_the_environment() {
    let _g = FLAG.lock().unwrap_or_else(|e| e.into_inner());
    let sampled = |sampler: Option<&str>| {
        match sampler {
            Some(s) => std::env::set_var("OTEL_TRACES_SAMPLER", s),
            None => std::env::remove_var("OTEL_TRACES_SAMPLER"),
        }
        // Nothing listens there: export fails quietly in the background; only sampling matters.
        let provider =
            crate::telemetry::install_tracer_provider("http://127.0.0.1:9", "sampler-test")
                .unwrap();
        let span = process_span("ingest", &input(headers(PARENT)));
        let send = send_span("ingest", &span, "t.validated", None);
        let mut out = Vec::new();
        send.inject(&mut out);
        let sc = send.span_context().unwrap();
        std::env::remove_var("OTEL_TRACES_SAMPLER");
        let _ = crate::telemetry::uninstall_tracer_provider(provider);
        assert!(!enabled());
        (
            sc.is_sampled(),
            String::from_utf8(out[0].1.clone()).unwrap(),
        )
    };
    let (on, header) = sampled(None);
    assert!(on);
    assert!(header.ends_with("-01"), "{header}");
    let (on, header) = sampled(Some("always_off"));
    assert!(!on);
    assert!(
        header.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{header}"
    );
    assert!(header.ends_with("-00"), "{header}");
}

#[test]
fn traceparent_flags_are_read_without_parsing_the_rest() {
    assert_eq!(traceparent_sampled(PARENT.as_bytes()), Some(true));
    let unsampled = PARENT.replace("-01", "-00");
    assert_eq!(traceparent_sampled(unsampled.as_bytes()), Some(false));
    assert_eq!(
        traceparent_sampled(PARENT.replace("-01", "-03").as_bytes()),
        Some(true)
    );
    assert_eq!(traceparent_sampled(b"00-abc-def-00"), None);
    assert_eq!(
        traceparent_sampled(PARENT.replace("-01", "-zz").as_bytes()),
        None
    );
    assert_eq!(
        traceparent_sampled(PARENT.replacen("00-", "01-", 1).as_bytes()),
        None
    );
    assert!(sampler_is_parent_based(None));
    assert!(sampler_is_parent_based(Some("")));
    assert!(sampler_is_parent_based(Some("parentbased_traceidratio")));
    assert!(!sampler_is_parent_based(Some("traceidratio")));
    assert!(!sampler_is_parent_based(Some("always_on")));
}

/// A record whose producer did not sample it gets no span anywhere while the sampler follows
/// the parent, and its header is left as the processor copied it.
#[test]
fn an_unsampled_parent_skips_the_spans() {
    let _g = FLAG.lock().unwrap_or_else(|e| e.into_inner());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    set_parent_decides(true);
    set_enabled(true);
    let unsampled = PARENT.replace("-01", "-00");
    let process = process_span("enrich", &input(headers(&unsampled)));
    let send = send_span("enrich", &process, "t.enriched", None);
    let mut out = vec![("traceparent".to_owned(), unsampled.as_bytes().to_vec())];
    send.inject(&mut out);
    send.end();
    process.end();
    // A sampled one still gets its spans.
    let sampled = process_span("enrich", &input(headers(PARENT)));
    sampled.end();
    set_enabled(false);
    provider.force_flush().unwrap();
    assert!(process.context().is_none() && send.context().is_none());
    assert_eq!(
        out,
        vec![("traceparent".to_owned(), unsampled.into_bytes())]
    );
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let _ = provider.shutdown();
}
