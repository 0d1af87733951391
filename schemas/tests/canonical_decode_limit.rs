//! The hand decoder (`schemas::canonical_decode`) enforces apache-avro's allocation limit on
//! string lengths the way apache-avro's reader does. The limit is process-wide and set once, so
//! this lives in its own test binary: it lowers the limit before anything decodes.

use schemas::avro::{self, decode_datum_avro};
use schemas::canonical_decode::{decode_event, DecodeError, Problem};
use schemas::testing::sample_event;
use schemas::AuditEvent;

#[test]
fn a_string_over_apache_avros_allocation_limit_fails_in_both_decoders() {
    assert_eq!(apache_avro::util::max_allocation_bytes(64), 64);
    let mut e = sample_event();
    e.event_id = "x".repeat(65);
    let over = avro::canonical_bytes(&e).expect("encode");
    let err = decode_event(&over).expect_err("over the limit");
    assert_eq!(
        err,
        DecodeError::Field {
            field: "event_id",
            problem: Problem::LengthOverLimit {
                length: 65,
                limit: 64
            }
        }
    );
    decode_datum_avro::<AuditEvent>(&over).expect_err("apache-avro rejects it too");

    e.event_id = "x".repeat(64);
    let at = avro::canonical_bytes(&e).expect("encode");
    assert_eq!(decode_event(&at).expect("at the limit"), e);
    assert_eq!(
        decode_datum_avro::<AuditEvent>(&at).expect("apache-avro"),
        e
    );
}
