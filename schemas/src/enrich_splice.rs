//! An audit event's datum as enrich changes it: the fields enrich writes decoded, every other
//! field kept as the bytes it was read from.
//!
//! Why: enrich decoded every event into an `AuditEvent`, filled in its context and encoded the
//! whole event again, though the context writes only the actor, the tenant and the attributes
//! ([`crate::context::apply_context`]). Under `perf` (`worker-bench --perf enrich`) that was
//! about a fifth of enrich's CPU, most of it making and freeing the event's strings. An event's
//! fields come in `audit_event.v1.avsc`'s order: a head (`event_id` to `ingress`), `actor`,
//! `tenant`, a middle (`target` to `performance`), and `attributes`, last. [`EnrichSplice`]
//! reads the whole datum as the decoder does (`chained_row`'s walk of the event, writing
//! nothing), decodes only the actor, the tenant and the attributes, and writes the head and the
//! middle back as they were read.
//!
//! The contract, property-tested below on valid, re-blocked and mutated datums: when
//! [`EnrichSplice::new`] takes a datum, decoding it succeeds, and what
//! [`EnrichSplice::encode_into`] writes after [`EnrichSplice::apply_context`] is exactly what
//! encoding the decoded event after `apply_context` writes. It takes every datum that is its
//! event's own encoding (what ingest writes). It leaves to the caller's decoding path (`None`)
//! a datum that does not decode, and one whose copied parts are not an encoder's output (a
//! varint longer than needed, an array in several blocks), which that path writes the shortest
//! way and reports on as before.

use std::sync::LazyLock;

use crate::avro::{self, RecordKind, CANONICAL_VERSION};
use crate::canonical::{self, View};
use crate::canonical_decode::{self as cd, Reader};
use crate::chained_row::{event_head, event_middle, Skip};
use crate::context::{self, TeamContext, UserContext};
use crate::event::{Actor, KeyValue, TenantContext};
use crate::framing::SINGLE_OBJECT_MAGIC;

/// The splice needs the decoder and the encoder of the current `AuditEvent` schema, and that
/// schema to be the canonical one (what `framing::encode_single_object_event` then writes).
static APPLIES: LazyLock<bool> = LazyLock::new(|| {
    cd::applies()
        && canonical::applies()
        && avro::current_schema(RecordKind::AuditEvent)
            .is_ok_and(|e| e.version == CANONICAL_VERSION)
});

/// One event's datum (no framing) with its actor, tenant and attributes taken out to be
/// changed. Only [`EnrichSplice::new`] makes one.
#[derive(Debug)]
pub struct EnrichSplice<'a> {
    /// `event_id` to `ingress`, as read.
    head: &'a [u8],
    actor: Actor,
    tenant: TenantContext,
    /// `target` to `performance`, as read.
    middle: &'a [u8],
    attributes: Vec<KeyValue>,
}

impl<'a> EnrichSplice<'a> {
    /// `None` unless `datum` decodes under the current `AuditEvent` schema and is exactly what
    /// encoding the decoded event writes: the caller then takes the decoding path.
    pub fn new(datum: &'a [u8]) -> Option<Self> {
        if !*APPLIES {
            return None;
        }
        let mut r = Reader::new(datum);
        let at = |r: &Reader<'_>| datum.len() - r.remaining();
        event_head(&mut r, &mut Skip).ok()?;
        let head = &datum[..at(&r)];
        let actor = r.actor().ok()?;
        let tenant = r.tenant().ok()?;
        let middle_from = at(&r);
        event_middle(&mut r, &mut Skip).ok()?;
        let middle = &datum[middle_from..at(&r)];
        let attributes = r.attributes().ok()?;
        r.finish().ok()?;
        // The head and the middle are written back as they are, so they must be an encoder's
        // own output: every varint the shortest (`is_minimal`), every array in one block
        // (`event_middle` marks others). The decoded parts are written anew; how they were
        // encoded does not matter, and the flag covering them too only sends a rare datum to
        // the decoding path.
        r.is_minimal().then_some(EnrichSplice {
            head,
            actor,
            tenant,
            middle,
            attributes,
        })
    }

    /// The actor's id (whose user context enrich looks up).
    pub fn actor_id(&self) -> &str {
        &self.actor.id
    }

    /// The team the event names, if any.
    pub fn team_id(&self) -> Option<&str> {
        self.tenant.team_id.as_deref()
    }

    /// [`context::apply_context`] on this event.
    pub fn apply_context(&mut self, user: Option<&UserContext>, team: Option<&TeamContext>) {
        context::apply_to_parts(
            &mut self.actor,
            &mut self.tenant,
            &mut self.attributes,
            user,
            team,
        );
    }

    /// Appends the event's datum to `out`: the canonical encoding of the event it holds.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.head.len() + self.middle.len() + 256);
        out.extend_from_slice(self.head);
        canonical::write_actor(&self.actor, View::Whole, out);
        canonical::write_tenant(&self.tenant, View::Whole, out);
        out.extend_from_slice(self.middle);
        canonical::write_attributes(&self.attributes, View::Whole, out);
    }

    /// The event's single-object encoding under the current `AuditEvent` schema: what
    /// `framing::encode_single_object_event` writes for the event it holds.
    pub fn encode_single_object(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.head.len() + self.middle.len() + 256);
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        // `APPLIES` held when `new` made this, so the current schema is there.
        if let Ok(entry) = avro::current_schema(RecordKind::AuditEvent) {
            out.extend_from_slice(&entry.fingerprint.to_le_bytes());
        }
        self.encode_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical_decode::decode_event;
    use crate::canonical_decode::tests::{mutate, mutation, reblock};
    use crate::context::apply_context;
    use crate::framing;
    use crate::testing::arb_audit_event;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn arb_user() -> impl Strategy<Value = Option<UserContext>> {
        proptest::option::of(
            (
                "[a-z]{0,6}",
                "[a-zA-Z ]{0,8}",
                "[a-z@.]{0,10}",
                vec("[a-c]{0,3}", 0..4),
                proptest::option::of("[a-z]{0,4}"),
                proptest::option::of("[a-zé ]{0,6}"),
            )
                .prop_map(|(user_id, name, email, roles, team_id, department)| {
                    UserContext {
                        user_id,
                        name,
                        email,
                        roles,
                        team_id,
                        department,
                    }
                }),
        )
    }

    fn arb_team() -> impl Strategy<Value = Option<TeamContext>> {
        let s = || proptest::option::of("[a-z0-9-]{0,6}");
        proptest::option::of(
            (("[a-z]{0,6}", "[a-zA-Z ]{0,8}"), s(), s(), s(), s()).prop_map(
                |((team_id, name), tenant_id, project_id, business_unit, cost_center)| {
                    TeamContext {
                        team_id,
                        name,
                        tenant_id,
                        project_id,
                        business_unit,
                        cost_center,
                    }
                },
            ),
        )
    }

    /// What the decoding path makes of `datum`: decode, apply, encode; `None` if it does not
    /// decode.
    fn decoded(
        datum: &[u8],
        user: Option<&UserContext>,
        team: Option<&TeamContext>,
    ) -> Option<Vec<u8>> {
        let mut event = decode_event(datum).ok()?;
        apply_context(&mut event, user, team);
        Some(framing::encode_single_object_event(&event).expect("encodes"))
    }

    /// The splice's output, if it takes the datum.
    fn spliced(
        datum: &[u8],
        user: Option<&UserContext>,
        team: Option<&TeamContext>,
    ) -> Option<Vec<u8>> {
        let mut splice = EnrichSplice::new(datum)?;
        splice.apply_context(user, team);
        Some(splice.encode_single_object())
    }

    /// Whether encoding what `datum` decodes to gives `datum` back.
    fn own_encoding(datum: &[u8]) -> bool {
        decode_event(datum).is_ok_and(|e| {
            let mut out = Vec::new();
            canonical::encode_event(&e, &mut out);
            out == datum
        })
    }

    /// The contract: a splice only of what decodes, and then the decoding path's bytes; every
    /// encoder's own output taken. (A datum with the actor's roles or the attributes in several
    /// blocks may be taken too: those parts are decoded and written anew, as that path does.)
    fn agrees(
        datum: &[u8],
        user: &Option<UserContext>,
        team: &Option<TeamContext>,
    ) -> std::result::Result<(), TestCaseError> {
        let (user, team) = (user.as_ref(), team.as_ref());
        let got = spliced(datum, user, team);
        if let Some(got) = &got {
            let want = decoded(datum, user, team);
            prop_assert!(want.is_some(), "spliced a datum that does not decode");
            prop_assert_eq!(Some(got), want.as_ref());
        }
        if own_encoding(datum) {
            prop_assert!(got.is_some(), "an encoder's output was not taken");
        }
        Ok(())
    }

    proptest! {
        // Boxed strategies: the unboxed value trees overflow a test thread's stack in debug.
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any event, any user and team context: the same bytes as decoding, applying and
        /// encoding, and the key lookups read the decoded event's values.
        #[test]
        fn spliced_events_are_the_decoded_events_enriched(
            e in arb_audit_event().boxed(),
            user in arb_user(),
            team in arb_team(),
        ) {
            let datum = avro::encode_event_datum(&e).expect("encodes");
            let splice = EnrichSplice::new(&datum).expect("an encoder's output is taken");
            prop_assert_eq!(splice.actor_id(), e.actor.id.as_str());
            prop_assert_eq!(splice.team_id(), e.tenant.team_id.as_deref());
            agrees(&datum, &user, &team)?;
        }

        /// Arrays in any blocks (negative counts with byte sizes included): the decoding path's
        /// bytes whenever the datum is taken. A copied array in several blocks is not taken.
        #[test]
        fn reblocked_events_give_the_decoding_paths_bytes_when_spliced(
            e in arb_audit_event().boxed(),
            seed in any::<u64>(),
            user in arb_user(),
            team in arb_team(),
        ) {
            let datum = reblock(RecordKind::AuditEvent, &avro::encode_event_datum(&e).expect("encodes"), seed);
            agrees(&datum, &user, &team)?;
        }

        /// Corrupted bytes (cuts, inserts, flipped bytes, hostile varints): a splice only of
        /// bytes that decode, and then the decoding path's output.
        #[test]
        fn corrupted_events_are_spliced_only_when_they_decode(
            e in arb_audit_event().boxed(),
            ms in vec(mutation(), 1..4),
            user in arb_user(),
            team in arb_team(),
        ) {
            let datum = mutate(avro::encode_event_datum(&e).expect("encodes"), &ms);
            agrees(&datum, &user, &team)?;
        }
    }

    /// A padded varint in the copied head (`event_id`'s length, the datum's first byte: still
    /// the same value to any Avro reader) leaves the datum to the decoding path, which writes
    /// it the shortest way.
    #[test]
    fn an_over_long_varint_is_left_to_the_decoding_path() {
        let e = crate::testing::sample_event();
        let datum = avro::encode_event_datum(&e).expect("encodes");
        assert!(e.event_id.len() < 64, "a one-byte length");
        assert_eq!(usize::from(datum[0] >> 1), e.event_id.len());
        let mut padded = vec![datum[0] | 0x80, 0];
        padded.extend_from_slice(&datum[1..]);
        assert_eq!(decode_event(&padded).expect("still decodes"), e);
        assert!(EnrichSplice::new(&padded).is_none());
        assert!(EnrichSplice::new(&datum).is_some());
        let (user, team) = (None, None);
        assert_eq!(decoded(&padded, user, team), spliced(&datum, user, team));
    }
}
