//! Shared fixtures: real chains, and the write/list/resume scenario run against every backend.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use integrity::chain::ChainHead;
use object_store::ObjectStore;
use schemas::avro::canonical_bytes;
use schemas::segment::{self, Manifest, SegmentKey, SegmentMeta};
use schemas::{ChainedEvent, Checkpoint};
use sink_archive::{Archive, Outcome};
use worker_runtime::retry::RetryPolicy;
use worker_runtime::CancellationToken;

pub const DAY: i64 = 86_400_000_000;
pub const T0: i64 = 1_717_200_000_000_000; // 2024-06-01T00:00:00Z

/// A real hash chain of `n` events on `partition`; event `i` (1-based) happens at `time(i)`.
pub fn chain(partition: i32, n: i64, time: impl Fn(i64) -> i64) -> Vec<ChainedEvent> {
    chain_classes(partition, n, time, |_| {
        schemas::testing::sample_event().category
    })
}

/// [`chain`] with event `i` of category `class(i)` (retention differs per class).
pub fn chain_classes(
    partition: i32,
    n: i64,
    time: impl Fn(i64) -> i64,
    class: impl Fn(i64) -> schemas::EventCategory,
) -> Vec<ChainedEvent> {
    let mut head = ChainHead::genesis(partition as u32);
    (1..=n)
        .map(|i| {
            let mut event = schemas::testing::sample_event();
            event.event_id = format!("evt-{partition}-{i}");
            event.event_time_us = time(i);
            event.category = class(i);
            let link = head.next(&canonical_bytes(&event).expect("canonical"));
            ChainedEvent {
                chain_partition: partition,
                seq: link.seq as i64,
                prev_hash: link.prev_hash.to_vec(),
                hash: link.hash.to_vec(),
                canonical_version: 1,
                source_topic: "audit.enriched".into(),
                source_partition: partition,
                source_offset: i,
                event,
            }
        })
        .collect()
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        min_delay_ms: 100,
        max_delay_ms: 1_000,
        max_attempts: 3,
    }
}

pub fn archive(store: Arc<dyn ObjectStore>) -> Archive {
    Archive::new(store, fast_retry(), CancellationToken::new())
}

/// Segments, resume (including a crash between the two puts), idempotent retry, fork, and
/// checkpoints, against whatever store `archive` wraps (with its own unique prefix).
pub async fn scenario(archive: &Archive) {
    let topic = "t.chained";
    let p = 3;
    assert_eq!(archive.resume(p, topic).await.expect("resume empty"), None);

    // seqs 1..=5 on day 1 (offsets 100..=104), 6..=8 on day 2 (offsets 105..=107)
    let ev = chain(p, 12, |i| if i <= 5 { T0 + i } else { T0 + DAY + i });
    let s1 = archive
        .write_events(&ev[0..5], topic, 100, 104)
        .await
        .expect("write 1");
    assert_eq!(s1.outcome, Outcome::Written);
    assert_eq!(s1.key, SegmentKey::new(p, "2024-06-01", 1, 5).expect("key"));
    let s2 = archive
        .write_events(&ev[5..8], topic, 105, 107)
        .await
        .expect("write 2");
    assert_eq!(s2.key.date, "2024-06-02", "the day comes from the events");

    let r = archive
        .resume(p, topic)
        .await
        .expect("resume")
        .expect("some");
    assert_eq!(r.last_seq, 8);
    assert_eq!(r.last_hash.as_deref(), Some(&ev[7].hash[..]));
    assert_eq!(r.next_offset, Some(108));
    // Offsets recorded for another topic are not used for seeking.
    assert_eq!(
        archive
            .resume(p, "other.chained")
            .await
            .expect("resume")
            .expect("some")
            .next_offset,
        None
    );

    // Crash between the two puts: segment 9..=10 without its manifest.
    let meta = SegmentMeta::for_events(&ev[8..10], topic, 108, 109, "crashed/0").expect("meta");
    let bytes = segment::write_segment(&meta, &ev[8..10]).expect("bytes");
    let k3 = meta.key().expect("key");
    assert!(archive
        .put_create(&k3.object_key(), Bytes::from(bytes.clone()))
        .await
        .expect("put"));
    let r = archive
        .resume(p, topic)
        .await
        .expect("resume")
        .expect("some");
    assert_eq!((r.last_seq, r.next_offset), (10, Some(110)));
    let m = Manifest::from_json(
        &archive
            .get(&k3.manifest_key())
            .await
            .expect("repaired manifest"),
    )
    .expect("json");
    segment::verify_segment_digest(&m, &bytes).expect("digest of the repaired manifest");
    assert_eq!(
        (m.first_seq, m.last_seq, m.count, m.last_offset),
        (9, 10, 2, 109)
    );

    // A retry after a crash (same records, e.g. another writer version): already there.
    let again = archive
        .write_events(&ev[8..10], topic, 108, 109)
        .await
        .expect("rewrite");
    assert_eq!(again.outcome, Outcome::AlreadyThere);
    let same = archive
        .write_events(&ev[0..5], topic, 100, 104)
        .await
        .expect("rewrite 1");
    assert_eq!(same.outcome, Outcome::AlreadyThere);

    // Different records under an existing name: fork, stored object kept.
    let mut forged = ev[8..10].to_vec();
    forged[1].event.event_id = "evt-zombie".into();
    let fork = archive
        .write_events(&forged, topic, 108, 109)
        .await
        .expect("fork write");
    assert_eq!(fork.outcome, Outcome::Fork);
    assert_eq!(fork.meta.expect("stored meta").last_hash, ev[9].hash);
    assert_eq!(
        &archive.get(&k3.object_key()).await.expect("get")[..],
        &bytes[..],
        "never overwritten"
    );

    // Listing: every segment has its manifest, names parse, read back equals what was written.
    let names = archive
        .list(&segment::partition_prefix(p))
        .await
        .expect("list");
    let plan = sink_archive::resume::plan_resume(p, names.iter().map(String::as_str));
    assert!(plan.missing_manifests.is_empty(), "{names:?}");
    assert!(plan.overlaps.is_empty());
    let (meta1, stored1) =
        segment::read_segment(&archive.get(&s1.key.object_key()).await.expect("get"))
            .expect("read");
    assert_eq!(stored1, ev[0..5].to_vec());
    assert_eq!((meta1.first_offset, meta1.last_offset), (100, 104));

    // Checkpoints: write-once, a re-signed copy of the same head is fine, another head is a fork.
    let cp = Checkpoint {
        chain_id: "test".into(),
        partition: p,
        first_seq: 1,
        seq: 8,
        head_hash: ev[7].hash.clone(),
        merkle_root: vec![7; 32],
        time_us: T0,
        partition_count: 0,
        key_id: "k1".into(),
        signature: vec![1; 64],
        tree_root: Vec::new(),
    };
    assert_eq!(
        archive.store_checkpoint(&cp).await.expect("cp"),
        Outcome::Written
    );
    assert_eq!(
        archive.store_checkpoint(&cp).await.expect("cp again"),
        Outcome::AlreadyThere
    );
    let resigned = Checkpoint {
        time_us: T0 + 1,
        signature: vec![2; 64],
        ..cp.clone()
    };
    // A later signature over the same range (a heartbeat) is kept next to the first one,
    // write-once like every object: stored once, a redelivery of it changes nothing.
    assert_eq!(
        archive
            .store_checkpoint(&resigned)
            .await
            .expect("cp resigned"),
        Outcome::Written
    );
    assert_eq!(
        archive
            .store_checkpoint(&resigned)
            .await
            .expect("cp resigned again"),
        Outcome::AlreadyThere
    );
    let forked = Checkpoint {
        head_hash: vec![9; 32],
        ..cp.clone()
    };
    assert_eq!(
        archive.store_checkpoint(&forked).await.expect("cp fork"),
        Outcome::Fork
    );
    let mut cps = archive
        .list(&segment::checkpoint_prefix(p))
        .await
        .expect("list cps");
    cps.sort();
    let heartbeat = segment::checkpoint_heartbeat_key(p, 8, "k1", T0 + 1);
    assert_eq!(
        cps,
        vec![segment::checkpoint_key(p, 8, "k1"), heartbeat.clone()]
    );
    // A listed name reads back as it is (a `~` in it was percent-encoded twice on S3).
    for k in &cps {
        archive
            .get(k)
            .await
            .expect("a listed checkpoint reads back");
    }
}
