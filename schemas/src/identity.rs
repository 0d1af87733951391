//! Event identity for the chainer's dedup window: which events are "the same event".
//!
//! An `event_id` alone does not say that (design.md, "Event ids"): two producers may both send
//! `evt-1`, a producer may pick an id that equals an id ingest will derive later, and a raw topic
//! that is deleted and recreated restarts its offsets, so position-derived ids come back. Ids
//! therefore live in namespaces, and the dedup key is a digest over (namespace, scope, id):
//!
//! | namespace | recognised by | scope |
//! |---|---|---|
//! | Kafka position | `ingress` is Kafka with a position, and `event_id` is the id ingest derives from that position ([`derived_kafka_event_id`], or the pre-timestamp [`legacy_derived_kafka_event_id`]) | the position itself: topic, partition, offset and the record timestamp (`receive_time_us`), so a recreated topic gives new keys |
//! | producer | Kafka ingress, any other id | `source_component` |
//! | door | HTTP or OTLP ingress (the id was assigned at acceptance, or given by the caller) | the channel and `source_component` |
//!
//! The scope holds only what the producer alone sets: enrich may fill `tenant_id` from the team
//! context, so two deliveries of one record enriched with different context would otherwise get
//! different keys and be chained twice.
//!
//! Derived ids are recognised by recomputing them from the event's own ingress, never by their
//! shape, so a producer cannot place its event in the position namespace by sending an id that
//! looks derived: its own position does not derive that id.
//!
//! [`content_digest`] is what the producer said: the canonical bytes with everything the
//! pipeline adds reset (receive time, ingress position, enrichment-owned fields), so a
//! redelivery enriched again with newer context is still the same content. The chainer drops
//! an event only when both key and content match; the same key with different content is an
//! id conflict: chained, and alarmed.
//!
//! Every digest starts with a domain tag and encodes variable-length fields with a length
//! prefix, so two different (namespace, scope, id) triples never feed SHA-256 the same bytes.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::dedup::IdDigest;
use crate::error::SchemaError;
use crate::event::{AuditEvent, EnrichmentStatus, IngressChannel};

/// UUIDv5 namespace of ids derived from a Kafka position (the same value ingest has always
/// used, so ids derived before this module existed are still recognised).
pub const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_2b9e_4d1a_4c57_9a3e_1f8b_7d25_c640);

/// The event id ingest gives a Kafka record whose event carries none: UUIDv5 over
/// `"{topic}/{partition}/{offset}/{timestamp_ms}"`. The record timestamp is part of it so that a
/// recreated topic, whose offsets restart, does not hand out the ids of the old topic's records
/// again; a redelivery of the same record keeps its timestamp, so it keeps its id.
pub fn derived_kafka_event_id(
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
) -> String {
    let name = format!("{topic}/{partition}/{offset}/{timestamp_ms}");
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The derivation ingest used before the timestamp was added (`"{topic}/{partition}/{offset}"`);
/// events already in the log carry such ids and must still be recognised as derived.
pub fn legacy_derived_kafka_event_id(topic: &str, partition: i32, offset: i64) -> String {
    let name = format!("{topic}/{partition}/{offset}");
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Where an event's id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdNamespace {
    /// Derived by ingest from the raw record's position.
    KafkaPosition,
    /// The producer's own id, on Kafka.
    Producer,
    /// Assigned (or accepted) at the HTTP or OTLP door.
    Door(IngressChannel),
}

/// The namespace of `event`'s id (see the module doc).
pub fn namespace(event: &AuditEvent) -> IdNamespace {
    match event.ingress.channel {
        IngressChannel::Kafka if is_position_derived(event) => IdNamespace::KafkaPosition,
        IngressChannel::Kafka => IdNamespace::Producer,
        ch => IdNamespace::Door(ch),
    }
}

fn is_position_derived(event: &AuditEvent) -> bool {
    let i = &event.ingress;
    let (Some(topic), Some(partition), Some(offset)) = (&i.topic, i.partition, i.offset) else {
        return false;
    };
    // Both derivations print a version-5 UUID in lowercase hyphenated form; an id of any other
    // shape cannot equal either, so most producer ids are settled without hashing (the two
    // derivations were 4% of the chainer's CPU under `perf`). The shape only ever says "no": a
    // "yes" still needs the recomputed id.
    if !could_be_derived(&event.event_id) {
        return false;
    }
    // For Kafka input, receive_time_us is the record timestamp (ms) in µs.
    let ts_ms = event.receive_time_us.div_euclid(1000);
    let mut name = String::with_capacity(topic.len() + 48);
    // `fmt::Write` into a String cannot fail.
    let _ = write!(name, "{topic}/{partition}/{offset}/{ts_ms}");
    if equals_derived(&event.event_id, &name) {
        return true;
    }
    name.clear();
    let _ = write!(name, "{topic}/{partition}/{offset}");
    equals_derived(&event.event_id, &name)
}

/// Whether `id` has the shape `Uuid::new_v5(..).to_string()` always has: 36 lowercase hex digits
/// and hyphens in the 8-4-4-4-12 layout, version digit `5`, variant digit `8`–`b`.
fn could_be_derived(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b[14] == b'5'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && b.iter().enumerate().all(|(k, &c)| match k {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Whether `id` is the derived id of `name`, compared on a stack buffer.
fn equals_derived(id: &str, name: &str) -> bool {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let derived = Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes())
        .hyphenated()
        .encode_lower(&mut buf);
    id == derived
}

/// 128-bit digest of what the producer said (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContentDigest(pub [u8; 16]);

/// Builds a digest input: a domain tag, then length-prefixed fields.
struct Fields(Sha256);

impl Fields {
    fn new(tag: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(tag);
        Self(h)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_be_bytes());
        self.0.update(b);
        self
    }
    fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.0.update([0u8]),
            Some(s) => {
                self.0.update([1u8]);
                self.bytes(s.as_bytes());
            }
        }
        self
    }
    fn int(&mut self, n: i64) -> &mut Self {
        self.0.update(n.to_be_bytes());
        self
    }
    fn finish(&mut self) -> [u8; 16] {
        let d = std::mem::take(&mut self.0).finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }
}

fn channel_tag(ch: IngressChannel) -> &'static [u8] {
    match ch {
        IngressChannel::Kafka => b"kafka",
        IngressChannel::Http => b"http",
        IngressChannel::Otlp => b"otlp",
    }
}

/// The dedup key of `event`: a digest over (namespace, scope, id).
pub fn dedup_key(event: &AuditEvent) -> IdDigest {
    let bytes = match namespace(event) {
        IdNamespace::KafkaPosition => {
            let i = &event.ingress;
            Fields::new(b"audit-id/kafka-position/v1")
                .opt(i.topic.as_deref())
                .int(i.partition.map_or(-1, i64::from))
                .int(i.offset.unwrap_or(-1))
                .int(event.receive_time_us)
                .finish()
        }
        IdNamespace::Producer => Fields::new(b"audit-id/producer/v1")
            .bytes(event.source_component.as_bytes())
            .bytes(event.event_id.as_bytes())
            .finish(),
        IdNamespace::Door(ch) => Fields::new(b"audit-id/door/v1")
            .bytes(channel_tag(ch))
            .bytes(event.source_component.as_bytes())
            .bytes(event.event_id.as_bytes())
            .finish(),
    };
    IdDigest::from_bytes(bytes)
}

/// `event` with everything the pipeline adds after the producer reset: the receive time, the
/// ingress position, and what enrich fills (`schemas::context::apply_context`: actor name, email
/// and roles; tenant, team, project, team name, business unit, cost center; the enrichment
/// status). Fill-if-missing fields are reset too: from the enriched event alone one cannot tell
/// whether the producer or the context supplied them, and a redelivery enriched with other
/// context must not look like different content.
pub fn producer_view(event: &AuditEvent) -> AuditEvent {
    let mut e = event.clone();
    e.receive_time_us = 0;
    e.ingress.topic = None;
    e.ingress.partition = None;
    e.ingress.offset = None;
    e.actor.name = None;
    e.actor.email = None;
    e.actor.roles.clear();
    // Attributes enrich writes (`audit.enrich.*`; ingest renames a producer's own).
    e.attributes
        .retain(|kv| !kv.key.starts_with(crate::json::labels::ENRICH_PREFIX));
    let t = &mut e.tenant;
    t.tenant_id = None;
    t.team_id = None;
    t.team_name = None;
    t.project_id = None;
    t.business_unit = None;
    t.cost_center = None;
    t.enrichment = EnrichmentStatus {
        enriched: false,
        user_found: false,
        team_found: false,
    };
    e
}

/// Digest of [`producer_view`]'s canonical bytes.
///
/// The chainer computes this for every record, so the view is not built: the hand encoder
/// writes the view's bytes straight from `event` into a per-thread buffer (same bytes, checked
/// by property tests against `producer_view` + apache-avro). If the hand encoder does not
/// apply to the catalog's canonical schema, the view is built and encoded by apache-avro.
pub fn content_digest(event: &AuditEvent) -> Result<ContentDigest, SchemaError> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(2048));
    }
    if !crate::canonical::applies() {
        return content_digest_avro(event);
    }
    Ok(BUF.with(|buf| {
        // `try_borrow_mut` rather than `borrow_mut`: never panic (no re-entrancy is possible
        // here, but a fresh buffer is a correct fallback).
        let digest = |bytes: &mut Vec<u8>| {
            bytes.clear();
            crate::canonical::encode_producer_view(event, bytes);
            ContentDigest(Fields::new(b"audit-content/v1").bytes(bytes).finish())
        };
        match buf.try_borrow_mut() {
            Ok(mut b) => digest(&mut b),
            Err(_) => digest(&mut Vec::new()),
        }
    }))
}

/// [`content_digest`] by its definition: [`producer_view`] built, then encoded by apache-avro.
pub fn content_digest_avro(event: &AuditEvent) -> Result<ContentDigest, SchemaError> {
    let mut bytes = Vec::with_capacity(1024);
    crate::avro::canonical_bytes_version_into_avro(
        &producer_view(event),
        crate::avro::CANONICAL_VERSION,
        &mut bytes,
    )?;
    Ok(ContentDigest(
        Fields::new(b"audit-content/v1").bytes(&bytes).finish(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arb_audit_event, sample_event};
    use proptest::prelude::*;

    fn kafka_derived(mut e: AuditEvent, topic: &str, p: i32, o: i64, ts_ms: i64) -> AuditEvent {
        e.ingress.channel = IngressChannel::Kafka;
        e.ingress.topic = Some(topic.into());
        e.ingress.partition = Some(p);
        e.ingress.offset = Some(o);
        e.receive_time_us = ts_ms * 1000;
        e.event_id = derived_kafka_event_id(topic, p, o, ts_ms);
        e
    }

    #[test]
    fn derived_ids_are_recognised_by_recomputation_only() {
        let e = kafka_derived(sample_event(), "a.raw", 1, 7, 1_700_000_000_123);
        assert_eq!(namespace(&e), IdNamespace::KafkaPosition);
        let mut legacy = e.clone();
        legacy.event_id = legacy_derived_kafka_event_id("a.raw", 1, 7);
        assert_eq!(namespace(&legacy), IdNamespace::KafkaPosition);
        // The same id at another position is a producer's id.
        let mut moved = e.clone();
        moved.ingress.offset = Some(8);
        assert_eq!(namespace(&moved), IdNamespace::Producer);
        let mut http = e.clone();
        http.ingress.channel = IngressChannel::Http;
        assert_eq!(namespace(&http), IdNamespace::Door(IngressChannel::Http));
        // Known vector: the legacy derivation is the one ingest used.
        assert_eq!(
            legacy_derived_kafka_event_id("t.raw", 2, 41),
            Uuid::new_v5(&DERIVED_ID_NAMESPACE, b"t.raw/2/41").to_string()
        );
    }

    proptest! {
        /// The shape filter never turns away an id a derivation prints (it may only say "no"),
        /// and ids of another shape are producer ids even when everything else fits.
        #[test]
        fn the_shape_filter_only_refuses_what_no_derivation_prints(
            topic in "[a-z._-]{1,40}", p in 0i32..1000, o in 0i64..1_000_000_000, ts in 0i64..4_000_000_000_000,
            other in "[0-9a-fA-F-]{0,40}",
        ) {
            let id = derived_kafka_event_id(&topic, p, o, ts);
            prop_assert!(could_be_derived(&id));
            prop_assert!(could_be_derived(&legacy_derived_kafka_event_id(&topic, p, o)));
            let mut e = kafka_derived(sample_event(), &topic, p, o, ts);
            prop_assert_eq!(namespace(&e), IdNamespace::KafkaPosition);
            e.event_id = id.to_uppercase();
            prop_assert_eq!(namespace(&e), IdNamespace::Producer);
            e.event_id = other;
            prop_assert_eq!(namespace(&e), IdNamespace::Producer);
        }
    }

    #[test]
    fn ids_of_other_shapes_are_not_derived() {
        let v4 = Uuid::new_v4().to_string();
        assert!(!could_be_derived(&v4));
        let v5 = Uuid::new_v5(&Uuid::NAMESPACE_DNS, b"x").to_string();
        assert!(could_be_derived(&v5));
        assert!(!could_be_derived(&v5.replace('-', "_")));
        assert!(!could_be_derived(&format!("{v5} ")));
        assert!(!could_be_derived("evt-1"));
        assert!(!could_be_derived(""));
    }

    #[test]
    fn a_producer_id_equal_to_a_future_derived_id_gets_another_key() {
        let future = kafka_derived(sample_event(), "a.raw", 0, 100, 5_000);
        // A producer sends that id from offset 3 (another position).
        let mut forged = kafka_derived(sample_event(), "a.raw", 0, 3, 4_000);
        forged.event_id = future.event_id.clone();
        assert_eq!(namespace(&forged), IdNamespace::Producer);
        assert_ne!(dedup_key(&forged), dedup_key(&future));
    }

    #[test]
    fn a_recreated_topic_gives_new_keys_even_with_legacy_ids() {
        let mut old = kafka_derived(sample_event(), "a.raw", 0, 5, 1_000);
        old.event_id = legacy_derived_kafka_event_id("a.raw", 0, 5);
        let mut new = kafka_derived(sample_event(), "a.raw", 0, 5, 2_000);
        new.event_id = legacy_derived_kafka_event_id("a.raw", 0, 5);
        assert_eq!(old.event_id, new.event_id);
        assert_ne!(dedup_key(&old), dedup_key(&new));
        let a = kafka_derived(sample_event(), "a.raw", 0, 5, 1_000);
        let b = kafka_derived(sample_event(), "a.raw", 0, 5, 2_000);
        assert_ne!(a.event_id, b.event_id);
    }

    #[test]
    fn producer_ids_are_scoped_by_source_not_by_enrichable_tenant() {
        let mut a = sample_event();
        a.ingress.channel = IngressChannel::Kafka;
        a.ingress.offset = None;
        a.event_id = "evt-1".into();
        let mut b = a.clone();
        b.source_component = "other".into();
        assert_ne!(dedup_key(&a), dedup_key(&b));
        // enrich may fill the tenant on one delivery and not on another: same key.
        let mut c = a.clone();
        c.tenant.tenant_id = Some("t2".into());
        assert_eq!(dedup_key(&a), dedup_key(&c));
        // A redelivery from another raw position keeps the producer's key.
        let mut d = a.clone();
        d.ingress.offset = Some(99);
        d.receive_time_us += 5;
        assert_eq!(dedup_key(&a), dedup_key(&d));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Derived keys and producer/door keys never collide, whatever the ids.
        #[test]
        fn namespaces_never_collide(
            e in arb_audit_event(),
            topic in "[a-z.]{1,12}", p in 0i32..8, o in 0i64..1_000_000, ts in 0i64..4_000_000_000_000,
        ) {
            let derived = kafka_derived(e.clone(), &topic, p, o, ts);
            let mut producer = derived.clone();
            // The producer claims the derived id but sits elsewhere.
            producer.ingress.offset = Some(o + 1);
            let mut door = derived.clone();
            door.ingress.channel = IngressChannel::Otlp;
            prop_assert_eq!(namespace(&derived), IdNamespace::KafkaPosition);
            prop_assert_eq!(namespace(&producer), IdNamespace::Producer);
            let keys = [dedup_key(&derived), dedup_key(&producer), dedup_key(&door)];
            prop_assert_ne!(keys[0], keys[1]);
            prop_assert_ne!(keys[0], keys[2]);
            prop_assert_ne!(keys[1], keys[2]);
        }

        /// Enrichment-only differences (and receive position/time) are the same content; a
        /// change to what the producer said is not.
        #[test]
        fn enrichment_only_differences_are_duplicates(
            e in arb_audit_event(),
            email in proptest::option::of("[a-z]{1,8}@x"),
            team in proptest::option::of("[A-Za-z ]{1,10}"),
            found in any::<bool>(),
        ) {
            let mut again = e.clone();
            again.actor.email = email;
            again.actor.roles = vec!["r".into()];
            again.actor.name = Some("Renamed".into());
            again.tenant.team_name = team.clone();
            again.tenant.business_unit = team.clone();
            again.tenant.cost_center = team.clone();
            again.tenant.project_id = Some("p".into());
            if let Some(d) = &team {
                // What enrich records of the user's department (schemas::context).
                again.attributes.retain(|kv| kv.key != crate::context::DEPARTMENT_ATTRIBUTE);
                again.attributes.push(crate::event::KeyValue {
                    key: crate::context::DEPARTMENT_ATTRIBUTE.into(),
                    value: d.clone(),
                });
                again.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            }
            again.tenant.enrichment.user_found = found;
            again.tenant.enrichment.enriched = !again.tenant.enrichment.enriched;
            again.receive_time_us = e.receive_time_us.wrapping_add(1);
            again.ingress.offset = Some(e.ingress.offset.unwrap_or(0).wrapping_add(1));
            prop_assert_eq!(content_digest(&e).unwrap(), content_digest(&again).unwrap());
            let mut changed = e.clone();
            changed.event_type.push('x');
            prop_assert_ne!(content_digest(&e).unwrap(), content_digest(&changed).unwrap());
        }

        /// The fast digest equals the digest by definition (view built, apache-avro), also with
        /// attributes under the enrich prefix mixed in.
        #[test]
        fn content_digest_equals_the_definition(
            e in arb_audit_event(),
            enrich_attrs in proptest::collection::vec(("[a-z.]{0,6}", ".{0,8}"), 0..4),
        ) {
            prop_assert_eq!(content_digest(&e).unwrap(), content_digest_avro(&e).unwrap());
            let mut with = e.clone();
            for (k, v) in enrich_attrs {
                with.attributes.push(crate::event::KeyValue {
                    key: format!("{}{k}", crate::json::labels::ENRICH_PREFIX),
                    value: v,
                });
            }
            with.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            prop_assert_eq!(content_digest(&with).unwrap(), content_digest_avro(&with).unwrap());
            prop_assert_eq!(content_digest(&with).unwrap(), content_digest(&e).unwrap());
        }
    }
}
