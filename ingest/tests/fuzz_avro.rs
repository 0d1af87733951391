//! Proptest-driven fuzzing of the Kafka door's Avro path (no broker needed): `validate_raw` over
//! records in both Avro framings (single-object `C3 01` + fingerprint, Confluent `00` + id) whose
//! body is arbitrary bytes, a valid event's encoding mutated (bytes flipped, cut, inserted), or a
//! hostile length prefix. Whatever the input, nothing panics and every refusal carries a known
//! reason code; an unmutated encoding of any event is accepted with its id.

use ingest::validate::{validate_raw, ValidationContext};
use proptest::prelude::*;
use schemas::framing::{encode_confluent_event, encode_single_object_event, CatalogIdResolver};
use schemas::json::JsonLimits;
use schemas::{Ingress, IngressChannel};

/// The receive time `arb_json_event`'s events are valid against.
const NOW_US: i64 = schemas::testing::JSON_TEST_RECEIVE_US;

fn resolver() -> &'static CatalogIdResolver {
    static R: std::sync::LazyLock<CatalogIdResolver> =
        std::sync::LazyLock::new(|| CatalogIdResolver::new().expect("catalog"));
    &R
}

fn ctx() -> ValidationContext<'static> {
    ValidationContext {
        receive_time_us: NOW_US,
        ingress: Ingress {
            channel: IngressChannel::Kafka,
            topic: Some("fuzz.raw".into()),
            partition: Some(0),
            offset: Some(7),
            format: String::new(),
        },
        derived_event_id: "fuzz-derived-id".into(),
        limits: JsonLimits::default(),
        strict_labels: false,
        resolver: resolver(),
    }
}

/// Every code the Avro path may give (the schemas crate's decoding codes and the semantic
/// checks every door shares).
const KNOWN: &[&str] = &[
    "decode",
    "trailing_bytes",
    "unknown_fingerprint",
    "wrong_record_kind",
    "unknown_version",
    "unknown_schema_id",
    "bad_framing",
    "invalid_context",
    "incompatible_schema",
    "too_large",
    "invalid_value",
    "timestamp_out_of_range",
    "missing_field",
    "wrong_type",
    "too_deep",
    "empty_payload",
    "unknown_format",
    "invalid_json",
    "not_utf8",
    "not_an_object",
];

/// Validates `bytes`: no panic, and a known code with a message when refused.
fn check(bytes: &[u8]) -> Result<String, &'static str> {
    let r = validate_raw(bytes, &ctx());
    match r {
        Ok(e) => Ok(e.event_id),
        Err(rej) => {
            assert!(
                KNOWN.contains(&rej.code),
                "unknown code {:?}: {}",
                rej.code,
                rej.describe()
            );
            assert!(!rej.message.is_empty(), "a refusal says why ({})", rej.code);
            Err(rej.code)
        }
    }
}

/// The single-object header (marker + fingerprint) and the Confluent header of the current
/// AuditEvent schema, taken from real encodings.
fn headers() -> (Vec<u8>, Vec<u8>) {
    let e = schemas::testing::sample_event();
    let so = encode_single_object_event(&e).expect("encode");
    let cf = encode_confluent_event(&e, 1).expect("encode");
    (so[..10].to_vec(), cf[..5].to_vec())
}

/// Zig-zag varint of `n` (Avro's long encoding).
fn varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, i64),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        // A length or count prefix written over the record: from -1 to 2^62.
        (
            any::<usize>(),
            prop_oneof![Just(-1i64), Just(i64::MAX >> 1), 1i64..=(1 << 40)]
        )
            .prop_map(|(i, n)| Mutation::Splice(i, n)),
    ]
}

/// Applies `m` past the framing header (`skip` bytes), so the body is what gets mangled.
fn mutate(mut b: Vec<u8>, skip: usize, m: &Mutation) -> Vec<u8> {
    let span = b.len() - skip;
    match m {
        Mutation::Flip(i, x) => b[skip + i % span] ^= x,
        Mutation::Cut(i) => b.truncate(skip + i % span),
        Mutation::Insert(i, bytes) => {
            let at = skip + i % (span + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Splice(i, n) => {
            let at = skip + i % span;
            let v = varint(*n);
            let end = (at + v.len()).min(b.len());
            b.splice(at..end, v);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_behind_either_avro_header_are_refused_with_a_reason(
        body in prop::collection::vec(any::<u8>(), 0..512),
        confluent in any::<bool>(),
    ) {
        let (so, cf) = headers();
        let mut bytes = if confluent { cf } else { so };
        bytes.extend_from_slice(&body);
        // Random bytes may by chance decode to something; what matters is no panic and a
        // known reason whenever it is refused.
        let _ = check(&bytes);
    }

    #[test]
    fn every_event_encoded_is_accepted_and_every_mutation_is_handled(
        event in schemas::testing::arb_json_event(),
        confluent in any::<bool>(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let (encoded, skip) = if confluent {
            (encode_confluent_event(&event, 1).expect("encode"), 5)
        } else {
            (encode_single_object_event(&event).expect("encode"), 10)
        };
        // Unmutated: the door accepts what the producer encoded (valid events only: the
        // generator's events pass every shared check).
        prop_assert_eq!(check(&encoded), Ok(event.event_id.clone()));
        let mut bytes = encoded;
        for m in &mutations {
            if bytes.len() <= skip {
                break;
            }
            bytes = mutate(bytes, skip, m);
        }
        let _ = check(&bytes);
    }
}

/// Hostile length and count prefixes right after each header: a string of 2^40 bytes, an array
/// of 2^40 items, a negative block count. Each is refused `decode` (the record is a few bytes
/// long; apache-avro bounds a declared length by its allocation limit before reading it).
#[test]
fn hostile_lengths_are_refused_as_undecodable() {
    // The headers are right: the whole sample event behind each is accepted.
    let e = schemas::testing::sample_event();
    for bytes in [
        encode_single_object_event(&e).expect("encode"),
        encode_confluent_event(&e, 1).expect("encode"),
    ] {
        assert_eq!(check(&bytes), Ok(e.event_id.clone()));
    }
    let (so, cf) = headers();
    for header in [so, cf] {
        for n in [1i64 << 40, (1 << 31) - 1, i64::MAX >> 1, -1, -(1 << 40)] {
            for tail in [vec![], vec![0u8; 16], varint(n)] {
                let mut bytes = header.clone();
                bytes.extend(varint(n));
                bytes.extend(&tail);
                assert_eq!(
                    check(&bytes),
                    Err("decode"),
                    "{n}: a {}-byte record",
                    bytes.len()
                );
            }
        }
    }
}
