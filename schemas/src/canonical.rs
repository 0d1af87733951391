//! A hand-written Avro binary encoder of [`AuditEvent`] under the canonical schema
//! (`audit_event.v1.avsc`), the bytes the hash chain hashes.
//!
//! Why: the chainer encodes every event up to three times (content digest, canonical bytes, the
//! chained output), and apache-avro's schema-aware serde writer costs about six SHA-256s of the
//! input per encoding. This writes the same bytes directly: zig-zag varints, length-prefixed
//! strings, `["null", T]` unions as the branch index then the value, arrays as one block (count,
//! items, then the zero block, exactly as apache-avro's writer does for a sequence of known
//! length), enums by their symbol's index, records field by field in schema order.
//!
//! These bytes are hashed into the chain, so they must be identical to apache-avro's for every
//! event. The guards:
//! - property tests below compare with the apache-avro path
//!   ([`crate::avro::canonical_bytes_version_into_avro`]) over arbitrary events;
//! - [`applies`] checks at run time that the catalog's canonical schema is the one this encoder
//!   was written for ([`AUDIT_EVENT_V1_FINGERPRINT`]); if not, callers fall back to apache-avro;
//! - a test fails if that schema's fingerprint changes, telling the next person to update this
//!   encoder (or to stop using it for the new version).

use std::sync::LazyLock;

use crate::avro::{self, RecordKind, CANONICAL_VERSION};
use crate::event::*;
use crate::json::labels::ENRICH_PREFIX;

/// Rabin fingerprint of the Parsing Canonical Form of `audit_event.v1.avsc`, the schema this
/// encoder writes. If the schema's shape changes, this no longer matches, [`applies`] turns the
/// encoder off and `canonical_schema_is_the_one_the_encoder_was_written_for` fails: update the
/// encoder to the new shape (field by field, in schema order) and then this constant.
pub const AUDIT_EVENT_V1_FINGERPRINT: u64 = 0x5f51_ce0c_72a3_f06b;

/// Rabin fingerprint of `chained_event.v1.avsc`, whose datum [`crate::framing`] splices from
/// the leading fields plus the canonical bytes. Same rule as [`AUDIT_EVENT_V1_FINGERPRINT`].
pub const CHAINED_EVENT_V1_FINGERPRINT: u64 = 0x199f_b127_520e_aeb1;

static APPLIES: LazyLock<bool> = LazyLock::new(|| {
    avro::current_schema(RecordKind::AuditEvent).is_ok_and(|e| {
        e.version == CANONICAL_VERSION && e.fingerprint == AUDIT_EVENT_V1_FINGERPRINT
    })
});

/// Whether [`encode_event`] writes the canonical bytes of [`CANONICAL_VERSION`] (the catalog's
/// canonical schema is the one this encoder was written for). Checked once.
pub fn applies() -> bool {
    *APPLIES
}

/// Appends the canonical bytes of `event` to `out`. Only meaningful when [`applies`].
pub fn encode_event(event: &AuditEvent, out: &mut Vec<u8>) {
    write_event(event, View::Whole, out);
}

/// Appends the canonical bytes of `identity::producer_view(event)` to `out`, without building
/// that view: the pipeline-added fields are written as `producer_view` resets them. Only
/// meaningful when [`applies`]; `identity`'s property tests check it against the view.
pub fn encode_producer_view(event: &AuditEvent, out: &mut Vec<u8>) {
    write_event(event, View::Producer, out);
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Whole,
    /// `identity::producer_view`: receive time 0, no ingress position, no enrich-filled actor
    /// and tenant fields, enrichment status all false, no `audit.enrich.*` attributes.
    Producer,
}

fn write_event(e: &AuditEvent, view: View, out: &mut Vec<u8>) {
    let producer = view == View::Producer;
    out.reserve(512);
    string(out, &e.event_id);
    string(out, &e.event_type);
    long(out, category_index(e.category));
    long(out, severity_index(e.severity));
    long(out, outcome_index(e.outcome));
    long(out, e.event_time_us);
    long(out, if producer { 0 } else { e.receive_time_us });
    string(out, &e.source_component);

    let i = &e.ingress;
    long(out, channel_index(i.channel));
    if producer {
        out.extend_from_slice(&[0, 0, 0]);
    } else {
        opt_string(out, i.topic.as_deref());
        opt_long(out, i.partition.map(i64::from));
        opt_long(out, i.offset);
    }
    string(out, &i.format);

    write_actor(&e.actor, view, out);
    write_tenant(&e.tenant, view, out);

    match &e.target {
        None => out.push(0),
        Some(t) => {
            out.push(2);
            string(out, &t.target_type);
            string(out, &t.id);
            opt_string(out, t.name.as_deref());
        }
    }

    let a = &e.action;
    string(out, &a.verb);
    opt_string(out, a.description.as_deref());
    opt_string(out, a.status.as_deref());
    opt_string(out, a.error.as_deref());

    let t = &e.trace;
    opt_string(out, t.trace_id.as_deref());
    opt_string(out, t.span_id.as_deref());
    opt_string(out, t.parent_span_id.as_deref());

    opt_string(out, e.request_id.as_deref());
    opt_string(out, e.parent_event_id.as_deref());
    opt_string(out, e.reason.as_deref());

    let d = &e.data;
    opt_string(out, d.payload_json.as_deref());
    opt_string(out, d.result_json.as_deref());
    opt_string(out, d.metadata_json.as_deref());
    opt_string(out, d.before_json.as_deref());
    opt_string(out, d.after_json.as_deref());
    strings(out, &d.changes);

    match &e.ai {
        None => out.push(0),
        Some(ai) => {
            out.push(2);
            opt_string(out, ai.agent_type.as_deref());
            opt_string(out, ai.model.as_deref());
            opt_long(out, ai.prompt_tokens);
            opt_long(out, ai.completion_tokens);
            match ai.confidence {
                None => out.push(0),
                Some(c) => {
                    out.push(2);
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            opt_string(out, ai.reasoning.as_deref());
            strings(out, &ai.tools);
            opt_long(out, ai.execution_time_ms);
        }
    }

    match &e.compliance {
        None => out.push(0),
        Some(c) => {
            out.push(2);
            strings(out, &c.regulations);
            opt_string(out, c.traffic_light.as_deref());
            opt_long(out, c.issues_found.map(i64::from));
            opt_long(out, c.critical_issues.map(i64::from));
            opt_string(out, c.findings_json.as_deref());
        }
    }

    match &e.security {
        None => out.push(0),
        Some(s) => {
            out.push(2);
            opt_string(out, s.data_classification.as_deref());
            opt_bool(out, s.encryption_used);
            opt_bool(out, s.pii_detected);
            opt_long(out, s.retention_days.map(i64::from));
        }
    }

    match &e.performance {
        None => out.push(0),
        Some(p) => {
            out.push(2);
            for v in [
                p.processing_time_ms,
                p.response_time_ms,
                p.db_query_time_ms,
                p.external_api_time_ms,
                p.memory_used_mb,
                p.resource_count,
            ] {
                opt_long(out, v);
            }
        }
    }

    write_attributes(&e.attributes, view, out);
}

/// The `actor` field (a part of [`write_event`]; also `crate::enrich_splice`'s).
pub(crate) fn write_actor(a: &Actor, view: View, out: &mut Vec<u8>) {
    let producer = view == View::Producer;
    long(out, actor_type_index(a.actor_type));
    string(out, &a.id);
    if producer {
        out.extend_from_slice(&[0, 0]);
    } else {
        opt_string(out, a.name.as_deref());
        opt_string(out, a.email.as_deref());
    }
    opt_string(out, a.ip.as_deref());
    opt_string(out, a.user_agent.as_deref());
    opt_string(out, a.session_id.as_deref());
    if producer {
        out.push(0);
    } else {
        strings(out, &a.roles);
    }
}

/// The `tenant` field (a part of [`write_event`]; also `crate::enrich_splice`'s).
pub(crate) fn write_tenant(t: &TenantContext, view: View, out: &mut Vec<u8>) {
    if view == View::Producer {
        // Six absent strings, then enriched/user_found/team_found all false.
        out.extend_from_slice(&[0; 9]);
    } else {
        for s in [
            &t.tenant_id,
            &t.team_id,
            &t.team_name,
            &t.project_id,
            &t.business_unit,
            &t.cost_center,
        ] {
            opt_string(out, s.as_deref());
        }
        boolean(out, t.enrichment.enriched);
        boolean(out, t.enrichment.user_found);
        boolean(out, t.enrichment.team_found);
    }
}

/// The `attributes` field, the event's last (a part of [`write_event`]; also
/// `crate::enrich_splice`'s).
pub(crate) fn write_attributes(attributes: &[KeyValue], view: View, out: &mut Vec<u8>) {
    if view == View::Producer {
        let kept = || {
            attributes
                .iter()
                .filter(|kv| !kv.key.starts_with(ENRICH_PREFIX))
        };
        key_values(out, kept().count(), kept());
    } else {
        key_values(out, attributes.len(), attributes.iter());
    }
}

// ---- primitives (Avro 1.11 spec, "Binary Encoding") ---------------------------------------------

/// `long` (and `int`: the zig-zag of an `i32` equals that of the same value as `i64`), also
/// union branch indexes, enum indexes, array counts and string lengths.
#[inline]
pub(crate) fn long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// `string` and `bytes`: length, then the bytes.
#[inline]
pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    // A Vec never holds more than isize::MAX bytes, so the length fits an i64.
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

#[inline]
fn string(out: &mut Vec<u8>, s: &str) {
    bytes(out, s.as_bytes());
}

#[inline]
fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

/// `["null", "string"]`: branch 0 (zig-zag 0) alone, or branch 1 (zig-zag 2) and the string.
#[inline]
fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(2);
            string(out, s);
        }
    }
}

/// `["null", "long"]` and `["null", "int"]`.
#[inline]
fn opt_long(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        None => out.push(0),
        Some(n) => {
            out.push(2);
            long(out, n);
        }
    }
}

#[inline]
fn opt_bool(out: &mut Vec<u8>, b: Option<bool>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(2);
            boolean(out, b);
        }
    }
}

/// An array of strings: one block of all items (omitted when empty), then the zero block.
fn strings(out: &mut Vec<u8>, items: &[String]) {
    if !items.is_empty() {
        long(out, items.len() as i64);
        for s in items {
            string(out, s);
        }
    }
    out.push(0);
}

fn key_values<'a>(out: &mut Vec<u8>, count: usize, items: impl Iterator<Item = &'a KeyValue>) {
    if count > 0 {
        long(out, count as i64);
        for kv in items {
            string(out, &kv.key);
            string(out, &kv.value);
        }
    }
    out.push(0);
}

// Enum indexes are the symbol's position in the schema's `symbols`, spelled out per variant
// (not `as i64`) so that reordering the Rust enum cannot change the bytes.

fn category_index(c: EventCategory) -> i64 {
    match c {
        EventCategory::UserInteraction => 0,
        EventCategory::SystemProcessing => 1,
        EventCategory::Governance => 2,
        EventCategory::Infrastructure => 3,
        EventCategory::Security => 4,
        EventCategory::Telemetry => 5,
        EventCategory::Other => 6,
    }
}

fn severity_index(s: Severity) -> i64 {
    match s {
        Severity::Debug => 0,
        Severity::Info => 1,
        Severity::Notice => 2,
        Severity::Warning => 3,
        Severity::Error => 4,
        Severity::Critical => 5,
    }
}

fn outcome_index(o: Outcome) -> i64 {
    match o {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Denied => 2,
        Outcome::Pending => 3,
        Outcome::Unknown => 4,
    }
}

fn channel_index(c: IngressChannel) -> i64 {
    match c {
        IngressChannel::Kafka => 0,
        IngressChannel::Http => 1,
        IngressChannel::Otlp => 2,
    }
}

fn actor_type_index(a: ActorType) -> i64 {
    match a {
        ActorType::User => 0,
        ActorType::Service => 1,
        ActorType::System => 2,
        ActorType::AiAgent => 3,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::avro::canonical_bytes_version_into_avro;
    use crate::testing::{arb_audit_event, sample_event};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn via_avro(e: &AuditEvent) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_bytes_version_into_avro(e, CANONICAL_VERSION, &mut out).expect("apache-avro");
        out
    }

    fn by_hand(e: &AuditEvent) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(e, &mut out);
        out
    }

    /// Strings long enough for multi-byte length varints, any Unicode.
    fn long_string() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", ".{60,300}"]
    }

    /// `arb_audit_event` with long arrays (counts ≥ 128 need a two-byte varint), long strings,
    /// attribute keys under the enrich prefix, and extreme numbers.
    pub(crate) fn arb_stretched_event() -> impl Strategy<Value = AuditEvent> {
        // Boxed: the unboxed value tree of this tuple overflows a test thread's stack in debug.
        (
            arb_audit_event().boxed(),
            vec(long_string(), 0..200),
            vec(".{0,4}", 0..300),
            vec((any::<bool>(), ".{0,6}", long_string()), 0..150),
            long_string(),
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(-1i64),
                Just(0i64),
                any::<i64>()
            ],
            any::<bool>(),
        )
            .prop_map(|(mut e, roles, changes, attrs, s, n, stretch)| {
                if stretch {
                    e.actor.roles = roles;
                    e.data.changes = changes;
                    e.attributes = attrs
                        .into_iter()
                        .map(|(enrich, k, value)| KeyValue {
                            key: if enrich {
                                format!("{ENRICH_PREFIX}{k}")
                            } else {
                                k
                            },
                            value,
                        })
                        .collect();
                    e.data.payload_json = Some(s);
                    e.event_time_us = n;
                    e.receive_time_us = n.wrapping_neg();
                    if let Some(ai) = &mut e.ai {
                        ai.prompt_tokens = Some(n);
                        ai.confidence = Some(f64::from_bits(n as u64));
                    }
                    if let Some(c) = &mut e.compliance {
                        c.issues_found = Some(n as i32);
                    }
                }
                e
            })
            .boxed()
    }

    #[test]
    fn the_encoder_applies_to_the_current_catalog() {
        assert!(applies());
    }

    /// If this fails, `audit_event.v1.avsc` (or `chained_event.v1.avsc`) changed shape. The
    /// hand encoder in this file (and the spliced chained encoding in `framing`) writes the OLD
    /// shape and is switched off at run time until you update it field by field to the new
    /// schema, then update the constants. A new canonical version normally means a new
    /// `audit_event.vN.avsc`, not an edit of v1.
    #[test]
    fn canonical_schema_is_the_one_the_encoder_was_written_for() {
        let c = avro::catalog().expect("catalog");
        let audit = c
            .by_version(RecordKind::AuditEvent, CANONICAL_VERSION)
            .expect("audit v1");
        let chained = c.current(RecordKind::ChainedEvent).expect("chained");
        assert_eq!(
            (audit.fingerprint, chained.fingerprint),
            (AUDIT_EVENT_V1_FINGERPRINT, CHAINED_EVENT_V1_FINGERPRINT),
            "the canonical schema changed: update crate::canonical's encoder, then the \
             constants (audit {:#018x}, chained {:#018x})",
            audit.fingerprint,
            chained.fingerprint
        );
    }

    #[test]
    fn sample_event_matches_apache_avro() {
        let e = sample_event();
        assert_eq!(by_hand(&e), via_avro(&e));
    }

    #[test]
    fn varints_match_the_spec_examples() {
        // Avro spec, "Binary Encoding": 0 → 00, -1 → 01, 1 → 02, -2 → 03, 2 → 04, -64 → 7f,
        // 64 → 80 01.
        for (n, want) in [
            (0i64, &[0x00u8][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (2, &[0x04]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            long(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
        let mut out = Vec::new();
        long(&mut out, i64::MIN);
        assert_eq!(
            out,
            [0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Byte for byte what apache-avro writes, for any event the schema carries.
        #[test]
        fn hand_encoder_equals_apache_avro(e in arb_audit_event()) {
            prop_assert_eq!(by_hand(&e), via_avro(&e));
        }
    }

    proptest! {
        // Fewer cases: each is large (hundreds of array items, long strings).
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Same with long arrays and strings and extreme numbers, appended after existing bytes
        /// (the encoder appends, it never clears).
        #[test]
        fn hand_encoder_equals_apache_avro_stretched(
            e in arb_stretched_event(),
            prefix in vec(any::<u8>(), 0..8),
        ) {
            let mut out = prefix.clone();
            encode_event(&e, &mut out);
            let mut want = prefix;
            want.extend_from_slice(&via_avro(&e));
            prop_assert_eq!(out, want);
        }

        /// The producer view written directly equals the view built and encoded by apache-avro.
        #[test]
        fn producer_view_encoding_equals_the_built_view(
            e in prop_oneof![arb_audit_event().boxed(), arb_stretched_event()],
        ) {
            let mut out = Vec::new();
            encode_producer_view(&e, &mut out);
            prop_assert_eq!(out, via_avro(&crate::identity::producer_view(&e)));
        }
    }
}
