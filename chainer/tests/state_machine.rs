//! The chainer's pure parts, without a broker: the per-partition state machine, recovery from a
//! synthetic chained tail, checkpoint ranges, and configuration.

use chainer::checkpoints::{range_start, CheckpointRange};
use chainer::partition::{Decision, Input, PartitionChain, Resume, MAX_STALE_AFTER_SEEK};
use chainer::recovery::{CheckpointFinder, TailReader, TailSummary};
use clap::Parser;
use integrity::chain::{hash32, ChainHead};
use integrity::checkpoint::{generate_pkcs8, KeySet, SigningKey};
use integrity::verify::{verify_partition, OwnedRecord, VerifyOptions};
use proptest::prelude::*;
use schemas::avro::canonical_bytes;
use schemas::dedup::DedupWindow;
use schemas::framing::{
    decode_chained, encode_single_object_chained, encode_single_object_checkpoint,
    encode_single_object_event,
};
use schemas::testing::sample_event;
use schemas::{ChainedEvent, Checkpoint};

const P: i32 = 3;
const SRC: &str = "t.enriched";

fn event_bytes(id: &str, n: i64) -> Vec<u8> {
    let mut e = sample_event();
    e.event_id = id.to_owned();
    e.event_time_us += n;
    encode_single_object_event(&e).unwrap()
}

/// A new partition as the chainer starts it: `audit-chain/v2`, bound to chain id "c" (the id
/// recovery is given in `resume_from`).
fn genesis(window: usize) -> PartitionChain {
    PartitionChain::new(
        P,
        SRC,
        Resume {
            head: ChainHead::genesis_v2("c", P as u32),
            dedup: DedupWindow::new(window),
            expected: 0,
        },
    )
}

fn feed(m: &mut PartitionChain, offset: i64, bytes: &[u8]) -> Decision {
    m.process(Input {
        offset,
        payload: Some(bytes),
    })
    .unwrap()
}

fn chained(d: &Decision) -> ChainedEvent {
    match d {
        Decision::Chain(c) => decode_chained(&c.payload, None).unwrap(),
        other => panic!("expected a chained record, got {other:?}"),
    }
}

fn verify(
    records: &[ChainedEvent],
    checkpoints: &[Checkpoint],
    keys: &KeySet,
) -> integrity::verify::PartitionReport {
    let owned: Vec<OwnedRecord> = records
        .iter()
        .map(|r| OwnedRecord::from_chained(r).unwrap())
        .collect();
    verify_partition(
        P as u32,
        keys,
        checkpoints,
        VerifyOptions::default(),
        owned.iter().map(|r| r.as_stored()),
    )
}

#[test]
fn chains_contiguously_and_every_link_verifies() {
    let mut m = genesis(100);
    let mut out = Vec::new();
    for i in 0..20 {
        let d = feed(&mut m, i, &event_bytes(&format!("e{i}"), i));
        out.push(chained(&d));
    }
    // A new partition's chain is audit-chain/v2: seq 1 links to the chain id's genesis, and
    // every link binds the canonical schema's fingerprint.
    let mut prev = integrity::chain::genesis_v2("c", P as u32);
    let fp = integrity::chain::schema_fingerprint(schemas::avro::CANONICAL_VERSION).unwrap();
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        assert_eq!(
            (r.chain_partition, r.source_partition, r.source_offset),
            (P, P, i as i64)
        );
        assert_eq!(r.source_topic, SRC);
        assert_eq!(r.canonical_version, schemas::avro::CANONICAL_VERSION);
        assert_eq!(r.prev_hash, prev.to_vec());
        let h = integrity::chain::link_hash_v2(
            P as u32,
            r.seq as u64,
            fp,
            &prev,
            &canonical_bytes(&r.event).unwrap(),
        );
        assert_eq!(r.hash, h.to_vec());
        prev = h;
    }
    assert_eq!(m.head().seq, 20);
    assert_eq!(m.head().head, prev);
    let report = verify(&out, &[], &KeySet::default());
    assert!(report.ok, "{report:?}");
    assert_eq!(report.head_seq, 20);
}

#[test]
fn duplicates_are_dropped_without_using_a_seq_and_the_window_is_the_last_w_chained() {
    let mut m = genesis(2);
    assert_eq!(chained(&feed(&mut m, 0, &event_bytes("a", 0))).seq, 1);
    assert_eq!(chained(&feed(&mut m, 1, &event_bytes("b", 1))).seq, 2);
    // Same id, same content: dropped.
    assert_eq!(
        feed(&mut m, 2, &event_bytes("a", 0)),
        Decision::Duplicate {
            event_id: "a".into()
        }
    );
    assert_eq!(
        feed(&mut m, 3, &event_bytes("b", 1)),
        Decision::Duplicate {
            event_id: "b".into()
        }
    );
    assert_eq!(chained(&feed(&mut m, 4, &event_bytes("c", 2))).seq, 3);
    // Window is now {b, c}: a fell out (a dropped duplicate never counts as a chained record).
    assert_eq!(chained(&feed(&mut m, 5, &event_bytes("a", 0))).seq, 4);
    assert!(matches!(
        feed(&mut m, 6, &event_bytes("c", 2)),
        Decision::Duplicate { .. }
    ));
    assert_eq!(
        m.expected(),
        7,
        "dropped duplicates still consume their offset"
    );
}

#[test]
fn undecodable_input_is_dead_lettered_without_a_seq() {
    let mut m = genesis(10);
    // (Bytes in a framing this instance cannot resolve stop the worker instead: see
    // `partition::tests::an_unknown_schema_stops_the_worker_but_garbage_is_dead_lettered`.)
    let d = feed(&mut m, 0, b"\x07garbage");
    assert!(
        matches!(
            d,
            Decision::DeadLetter {
                code: "chainer_undecodable",
                ..
            }
        ),
        "{d:?}"
    );
    let d = m
        .process(Input {
            offset: 1,
            payload: None,
        })
        .unwrap();
    assert!(
        matches!(
            d,
            Decision::DeadLetter {
                code: "chainer_null_value",
                ..
            }
        ),
        "{d:?}"
    );
    let d = feed(&mut m, 2, b"{\"json\":true}");
    assert!(matches!(d, Decision::DeadLetter { .. }));
    assert_eq!(chained(&feed(&mut m, 3, &event_bytes("x", 0))).seq, 1);
    assert_eq!(m.expected(), 4);
}

fn resumed(expected: i64) -> PartitionChain {
    let head = ChainHead::resume(P as u32, 41, [9; 32]).unwrap();
    PartitionChain::new(
        P,
        SRC,
        Resume {
            head,
            dedup: DedupWindow::new(10),
            expected,
        },
    )
}

#[test]
fn offsets_below_the_resume_point_are_skipped() {
    let mut m = resumed(10);
    for o in 7..10 {
        assert_eq!(
            feed(&mut m, o, &event_bytes(&format!("old{o}"), o)),
            Decision::Skip
        );
    }
    let r = chained(&feed(&mut m, 10, &event_bytes("new", 0)));
    assert_eq!((r.seq, r.source_offset), (42, 10));
    assert_eq!(r.prev_hash, vec![9; 32]);
}

#[test]
fn an_offset_above_the_resume_point_seeks_back_and_discards_stale_records() {
    let mut m = resumed(10);
    // The committed offset ran ahead of the chain: first record of the assignment is 15.
    assert_eq!(
        feed(&mut m, 15, &event_bytes("e15", 15)),
        Decision::Seek { to: 10 }
    );
    // Records fetched before the seek took effect.
    assert_eq!(feed(&mut m, 16, &event_bytes("e16", 16)), Decision::Discard);
    assert_eq!(feed(&mut m, 17, &event_bytes("e17", 17)), Decision::Discard);
    // After the seek: 10, 11, … in order, nothing lost.
    for (i, o) in (10..=17).enumerate() {
        let r = chained(&feed(&mut m, o, &event_bytes(&format!("e{o}"), o)));
        assert_eq!((r.seq, r.source_offset), (42 + i as i64, o));
    }
}

#[test]
fn a_seek_that_lands_past_the_target_accepts_the_hole_in_the_log() {
    // Offsets 10..12 do not exist (transaction markers, retention): the seek to 10 delivers 13,
    // which is not above the offset that caused the seek, so it is not stale.
    let mut m = resumed(10);
    assert_eq!(
        feed(&mut m, 15, &event_bytes("e15", 15)),
        Decision::Seek { to: 10 }
    );
    assert_eq!(chained(&feed(&mut m, 13, &event_bytes("e13", 13))).seq, 42);
    // Once positioned, the consumer delivers in order: later holes are not a reason to seek.
    assert_eq!(chained(&feed(&mut m, 20, &event_bytes("e20", 20))).seq, 43);
}

#[test]
fn a_lost_seek_is_issued_again() {
    let mut m = resumed(10);
    assert_eq!(
        feed(&mut m, 15, &event_bytes("e15", 15)),
        Decision::Seek { to: 10 }
    );
    let bytes = event_bytes("stale", 0);
    let mut o = 16;
    for _ in 0..MAX_STALE_AFTER_SEEK {
        assert_eq!(feed(&mut m, o, &bytes), Decision::Discard);
        o += 1;
    }
    assert_eq!(feed(&mut m, o, &bytes), Decision::Seek { to: 10 });
}

#[test]
fn two_instances_fed_the_same_log_write_identical_bytes() {
    let log = mixed_log(60);
    let mut a = genesis(8);
    let mut b = genesis(8);
    for (o, bytes) in log.iter().enumerate() {
        let da = feed(&mut a, o as i64, bytes);
        let db = feed(&mut b, o as i64, bytes);
        assert_eq!(da, db);
    }
    assert_eq!(a.head(), b.head());
}

/// A log with fresh events, duplicates inside and outside a window of 8, and garbage.
fn mixed_log(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 7 {
            3 => b"not avro".to_vec(),
            5 => event_bytes(&format!("e{}", i.saturating_sub(2)), 0), // duplicate of a recent id
            6 => event_bytes(&format!("e{}", i.saturating_sub(20)), 0), // old id, out of window
            _ => event_bytes(&format!("e{i}"), i as i64),
        })
        .collect()
}

/// Runs `log` uninterrupted; returns each offset's decision.
fn run_log(log: &[Vec<u8>], window: usize) -> Vec<Decision> {
    let mut m = genesis(window);
    log.iter()
        .enumerate()
        .map(|(o, b)| feed(&mut m, o as i64, b))
        .collect()
}

/// What recovery reads: the chained records written for offsets < `cut`.
fn tail_of(decisions: &[Decision], cut: usize, window: usize, keep: usize) -> TailSummary {
    let mut r = TailReader::new(P, window, keep);
    let mut out_offset = 0;
    for d in &decisions[..cut] {
        if let Decision::Chain(c) = d {
            r.push(out_offset, Some(&c.payload));
            out_offset += 1;
        }
    }
    r.finish().unwrap()
}

fn resume_from(tail: &TailSummary) -> PartitionChain {
    let head = tail.chain_head(P, "c").unwrap();
    let expected = tail.head.map_or(0, |h| h.source_offset + 1);
    PartitionChain::new(
        P,
        SRC,
        Resume {
            head,
            dedup: tail.dedup.clone(),
            expected,
        },
    )
}

#[test]
fn recovery_from_the_tail_continues_without_gap_or_fork() {
    let window = 8;
    let log = mixed_log(80);
    let whole = run_log(&log, window);
    for cut in [0, 1, 3, 4, 17, 40, 79, 80] {
        let tail = tail_of(&whole, cut, window, 0);
        let mut m = resume_from(&tail);
        // The consumer restarts from an older committed offset: already-chained records are
        // skipped, the rest is decided exactly as by the instance that never stopped.
        let restart_at = cut.saturating_sub(5);
        for (o, bytes) in log.iter().enumerate().skip(restart_at) {
            let d = feed(&mut m, o as i64, bytes);
            let resume_point = tail.head.map_or(0, |h| h.source_offset as usize + 1);
            if o < resume_point {
                assert_eq!(d, Decision::Skip, "cut {cut} offset {o}");
            } else {
                assert_eq!(d, whole[o], "cut {cut} offset {o}");
            }
        }
    }
}

#[test]
fn tail_reader_keeps_the_first_copy_and_refuses_foreign_or_garbage_records() {
    let whole = run_log(&mixed_log(30), 8);
    let payloads: Vec<&Vec<u8>> = whole
        .iter()
        .filter_map(|d| {
            if let Decision::Chain(c) = d {
                Some(&c.payload)
            } else {
                None
            }
        })
        .collect();
    let mut r = TailReader::new(P, 8, 5);
    for (i, p) in payloads.iter().enumerate() {
        r.push(i as i64, Some(p));
    }
    // A paused zombie's identical copies of the last records, appended after ours.
    let n = payloads.len();
    for (i, p) in payloads[n - 3..].iter().enumerate() {
        r.push((n + i) as i64, Some(p));
    }
    let t = r.finish().unwrap();
    let last = decode_chained(payloads[n - 1], None).unwrap();
    let head = t.head.unwrap();
    assert_eq!(
        (head.seq, head.source_offset),
        (last.seq as u64, last.source_offset)
    );
    assert_eq!(head.hash.to_vec(), last.hash);
    assert_eq!(t.anomalies, 3);
    assert_eq!(t.hashes.len(), 5);
    assert_eq!(t.hashes.last().unwrap().0, head.seq);

    let mut r = TailReader::new(P + 1, 8, 0);
    r.push(0, Some(payloads[0]));
    assert!(r.finish().unwrap_err().contains("chain partition"));
    let mut r = TailReader::new(P, 8, 0);
    r.push(0, Some(payloads[0]));
    r.push(1, Some(b"garbage"));
    assert!(r.finish().is_err());
}

fn test_key() -> SigningKey {
    SigningKey::from_pkcs8("k1", generate_pkcs8().unwrap().expose()).unwrap()
}

#[test]
fn checkpoints_cover_contiguous_ranges_that_the_verifier_accepts_across_a_restart() {
    let key = test_key();
    let mut keys = KeySet::default();
    keys.add(key.public_entry(0, None)).unwrap();
    let chain_id = "c";
    let every = 10u64;

    let log: Vec<Vec<u8>> = (0..47).map(|i| event_bytes(&format!("e{i}"), i)).collect();
    let whole = run_log(&log, 100);
    let records: Vec<ChainedEvent> = whole.iter().map(chained).collect();

    // First life: 23 events acknowledged → checkpoints at 10 and 20; crash (3 uncovered).
    let mut range = CheckpointRange::starting_at(P as u32, 1);
    let mut cps = Vec::new();
    for r in &records[..23] {
        range.push(r.seq as u64, hash32("hash", &r.hash).unwrap());
        if range.len() >= every {
            cps.push(
                integrity::checkpoint::sign(&key, &range.take(chain_id, 1_000, 0).unwrap())
                    .unwrap(),
            );
        }
    }
    assert_eq!(cps.len(), 2);

    // Recovery: last checkpoint from the checkpoints topic, missing hashes from the chained tail.
    let mut finder = CheckpointFinder::new(chain_id, P);
    let mut other = cps[1].clone();
    other.partition = P + 1;
    other.seq = 999;
    for (i, cp) in cps.iter().chain([&other]).enumerate() {
        finder.push(
            Some(&encode_single_object_checkpoint(cp).unwrap()),
            Some(100 + i as i64),
        );
    }
    finder.push(Some(b"junk"), Some(7));
    assert_eq!(finder.latest().map(|(s, _)| s), Some(20));
    // The resume offset comes from the latest checkpoint's own record, not a later one's.
    assert_eq!(finder.latest_next_source(), Some(101));
    let tail = tail_of(&whole, 23, 100, 64);
    let start = range_start(23, &tail.hashes, finder.latest()).unwrap();
    assert_eq!(start.first_seq, 21);
    assert_eq!(start.preload.len(), 3);

    // Second life continues the range: checkpoints at 30, 40, and a final one at 47.
    let mut range = CheckpointRange::starting_at(P as u32, start.first_seq);
    for (s, h) in start.preload {
        range.push(s, h);
    }
    for r in &records[23..] {
        range.push(r.seq as u64, hash32("hash", &r.hash).unwrap());
        if range.len() >= every {
            cps.push(
                integrity::checkpoint::sign(&key, &range.take(chain_id, 2_000, 0).unwrap())
                    .unwrap(),
            );
        }
    }
    cps.push(integrity::checkpoint::sign(&key, &range.take(chain_id, 3_000, 0).unwrap()).unwrap());
    let ranges: Vec<(i64, i64)> = cps.iter().map(|c| (c.first_seq, c.seq)).collect();
    assert_eq!(
        ranges,
        vec![(1, 10), (11, 20), (21, 30), (31, 40), (41, 47)]
    );

    let report = verify(&records, &cps, &keys);
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.sealed_through, Some(47));
}

#[test]
fn config_defaults_and_signing_key_options() {
    let c = chainer::Config::parse_from(["chainer", "--health-addr", ""]);
    assert_eq!(c.dedup_window, 1_000_000);
    assert_eq!(c.checkpoint_every_events, 1000);
    assert_eq!(c.checkpoint_interval_secs, 10);
    assert_eq!(c.group_id, "audit-chainer");
    assert_eq!(c.effective_chain_id(), "audit.chained");
    assert!(
        chainer::load_signer(&c).unwrap().is_none(),
        "no key: checkpoints disabled"
    );

    let dir = std::env::temp_dir().join(format!("chainer-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.pk8");
    std::fs::write(&path, generate_pkcs8().unwrap().expose()).unwrap();
    let path = path.to_str().unwrap();

    let c = chainer::Config::parse_from(["chainer", "--checkpoint-key-file", path]);
    assert!(chainer::load_signer(&c)
        .unwrap_err()
        .to_string()
        .contains("key-id"));
    let c = chainer::Config::parse_from([
        "chainer",
        "--checkpoint-key-file",
        path,
        "--checkpoint-key-env",
        "X",
        "--checkpoint-key-id",
        "k",
    ]);
    assert!(chainer::load_signer(&c)
        .unwrap_err()
        .to_string()
        .contains("not both"));
    let c = chainer::Config::parse_from([
        "chainer",
        "--checkpoint-key-file",
        path,
        "--checkpoint-key-id",
        "k1",
    ]);
    let signer = chainer::load_signer(&c).unwrap().unwrap();
    assert_eq!(signer.key.key_id(), "k1");
    // The key never shows up in Debug output.
    let dbg = format!("{signer:?}");
    assert!(dbg.contains("redacted"), "{dbg}");

    // Config file layering (keys mirror the long options; groups as sections).
    let toml = dir.join("chainer.toml");
    std::fs::write(
        &toml,
        // Keys no test environment exports (env.sh exports AUDIT_TOPIC_PREFIX, and the
        // environment rightly wins over the file).
        "dedup_window = 5\ncheckpoint_every_events = 3\nchain_id = \"file-chain\"\n[kafka]\nsecurity_protocol = \"ssl\"\n",
    )
    .unwrap();
    let c: chainer::Config = worker_runtime::config::load_from([
        "chainer",
        "--config",
        toml.to_str().unwrap(),
        "--dedup-window",
        "9",
    ])
    .unwrap();
    assert_eq!((c.dedup_window, c.checkpoint_every_events), (9, 3));
    assert_eq!(c.effective_chain_id(), "file-chain");
    assert_eq!(c.kafka.security_protocol, "ssl");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chained_output_reencodes_identically() {
    // The produced value is exactly the single-object encoding of the decoded record, so a
    // sink's re-encoding (or a second instance) gives the same bytes.
    let mut m = genesis(4);
    let d = feed(&mut m, 0, &event_bytes("z", 0));
    let Decision::Chain(c) = &d else { panic!() };
    assert_eq!(
        encode_single_object_chained(&chained(&d)).unwrap(),
        c.payload
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Whatever the log (fresh ids, repeats, garbage) and wherever the chainer is restarted, the
    /// restarted instance decides exactly as one that never stopped, and the chain verifies.
    #[test]
    fn restart_anywhere_equals_no_restart(
        ids in prop::collection::vec(prop_oneof![4 => 0u8..40, 1 => Just(255u8)], 1..60),
        cut_frac in 0.0f64..=1.0,
        window in 0usize..12,
    ) {
        let log: Vec<Vec<u8>> = ids.iter().enumerate().map(|(i, id)| {
            if *id == 255 { b"garbage".to_vec() } else { event_bytes(&format!("id{id}"), i as i64) }
        }).collect();
        let whole = run_log(&log, window);
        let records: Vec<ChainedEvent> = whole.iter().filter(|d| matches!(d, Decision::Chain(_))).map(chained).collect();
        let report = verify(&records, &[], &KeySet::default());
        prop_assert!(report.ok);
        let cut = ((log.len() as f64) * cut_frac) as usize;
        let tail = tail_of(&whole, cut, window, 0);
        let mut m = resume_from(&tail);
        let resume_point = tail.head.map_or(0, |h| h.source_offset as usize + 1);
        for (o, bytes) in log.iter().enumerate().skip(resume_point) {
            prop_assert_eq!(&feed(&mut m, o as i64, bytes), &whole[o]);
        }
    }
}

/// A chain written before `audit-chain/v2` (v1 records in the tail) goes on under v1 after a
/// restart, byte for byte as if it never stopped: the rule is the records', not the new-chain
/// default; and the checkpoint finder keeps the rule header of the latest checkpoint (the
/// only source of the rule when retention emptied the chained partition).
#[test]
fn a_v1_chain_resumes_under_v1_and_the_finder_keeps_the_rule_header() {
    let window = 8;
    let log = mixed_log(30);
    let mut v1 = PartitionChain::genesis(P, SRC, window, 0).unwrap();
    let whole: Vec<Decision> = log
        .iter()
        .enumerate()
        .map(|(o, b)| feed(&mut v1, o as i64, b))
        .collect();
    for cut in [1, 7, 30] {
        let tail = tail_of(&whole, cut, window, 0);
        assert_eq!(
            tail.rule,
            Some(integrity::chain::ChainRule::V1),
            "cut {cut}"
        );
        let mut m = resume_from(&tail);
        assert_eq!(m.head().rule, integrity::chain::ChainRule::V1);
        let resume_point = tail.head.map_or(0, |h| h.source_offset as usize + 1);
        for (o, bytes) in log.iter().enumerate().skip(resume_point) {
            assert_eq!(
                feed(&mut m, o as i64, bytes),
                whole[o],
                "cut {cut} offset {o}"
            );
        }
    }
    // An empty tail starts a new chain: v2.
    let empty = tail_of(&whole, 0, window, 0);
    assert_eq!(empty.resume_rule(), integrity::chain::ChainRule::V2);

    let key = test_key();
    let cp = integrity::checkpoint::sign(
        &key,
        &integrity::checkpoint::CheckpointFields {
            chain_id: "c".into(),
            partition: P as u32,
            first_seq: 1,
            seq: 5,
            head_hash: [5; 32],
            merkle_root: [6; 32],
            time_us: 1,
            partition_count: 4,
            tree_root: None,
        },
    )
    .unwrap();
    let mut finder = CheckpointFinder::new("c", P);
    finder.push_with_peaks(
        Some(&encode_single_object_checkpoint(&cp).unwrap()),
        None,
        Some(&[]),
        Some(integrity::chain::ChainRule::V2),
    );
    assert_eq!(finder.latest_rule(), Some(integrity::chain::ChainRule::V2));
}
