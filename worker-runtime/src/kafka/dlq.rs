//! Dead-letter records: the original key and bytes, untouched, plus headers saying why, where
//! from and which stage rejected them (design doc, `audit.rejected`).

use super::record::{InputRecord, OutputRecord};
use super::tail::{scan, ScanStart};
use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::message::{Headers, Message};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HEADER_REASON_CODE: &str = "audit.reason.code";
pub const HEADER_REASON_MESSAGE: &str = "audit.reason.message";
pub const HEADER_SOURCE_TOPIC: &str = "audit.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "audit.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "audit.source.offset";
pub const HEADER_STAGE: &str = "audit.stage";

/// The dead-letter record for `input`, rejected by `stage` for `code` (a stable machine code)
/// with a human `message`. The input's own headers are kept after ours.
pub fn dead_letter(
    rejected_topic: &str,
    input: &InputRecord,
    stage: &str,
    code: &str,
    message: &str,
) -> OutputRecord {
    let mut out = OutputRecord {
        topic: rejected_topic.to_owned(),
        partition: None,
        key: input.key.clone(),
        payload: input.payload.clone(),
        headers: Vec::with_capacity(6 + input.headers.len()),
    };
    out = out
        .with_header(HEADER_REASON_CODE, code)
        .with_header(HEADER_REASON_MESSAGE, truncate(message, 4096))
        .with_header(HEADER_SOURCE_TOPIC, input.topic.as_str())
        .with_header(HEADER_SOURCE_PARTITION, input.partition.to_string())
        .with_header(HEADER_SOURCE_OFFSET, input.offset.to_string())
        .with_header(HEADER_STAGE, stage);
    out.headers.extend(input.headers.iter().cloned());
    out
}

/// The partition of the rejected topic that holds the dead letters of input partition
/// `source_partition`: one fixed partition per source partition, so that one producer writes
/// them in source-offset order into one log, where a restarted worker can find them again
/// ([`already_dead_lettered`]).
pub fn rejected_partition(source_partition: i32, rejected_partitions: i32) -> i32 {
    source_partition.rem_euclid(rejected_partitions.max(1))
}

/// The source offset a dead letter's headers name, if it was written by `stage` for
/// `source_topic/source_partition` (other stages and partitions share the rejected topic).
pub fn source_offset_of<'a>(
    mut headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    stage: &str,
    source_topic: &str,
    source_partition: i32,
) -> Option<i64> {
    let (mut st, mut topic, mut partition, mut offset) = (None, None, None, None);
    for (k, v) in headers.by_ref() {
        // The first occurrence wins: ours come first, the input's own headers after them.
        let slot = match k {
            HEADER_STAGE => &mut st,
            HEADER_SOURCE_TOPIC => &mut topic,
            HEADER_SOURCE_PARTITION => &mut partition,
            HEADER_SOURCE_OFFSET => &mut offset,
            _ => continue,
        };
        if slot.is_none() {
            *slot = std::str::from_utf8(v).ok();
        }
    }
    if st? != stage || topic? != source_topic {
        return None;
    }
    if partition?.parse::<i32>().ok()? != source_partition {
        return None;
    }
    offset?.parse().ok()
}

/// The source offsets of `source_topic/source_partition` that `stage` already dead-lettered,
/// as far as the last `last_n` records of `rejected_topic/rejected_partition` show.
///
/// A worker calls this when it (re)starts on a source partition, before producing its first
/// dead letter there, and skips the inputs found: they were dead-lettered but their offsets
/// not committed before a crash or a delivery failure. Only what is actually in the log is
/// skipped (not "everything below the newest"), so a dead letter that failed to deliver while
/// a later one landed is still produced again. A dead letter older than the scanned window
/// and not committed is produced again: a duplicate at worst, never a loss.
#[allow(clippy::too_many_arguments)]
pub async fn already_dead_lettered(
    args: &KafkaArgs,
    rejected_topic: &str,
    rejected_partition: i32,
    stage: &str,
    source_topic: &str,
    source_partition: i32,
    last_n: i64,
    idle_timeout: Duration,
) -> Result<HashSet<i64>, RuntimeError> {
    let (stage, topic) = (stage.to_owned(), source_topic.to_owned());
    let found = Arc::new(Mutex::new(HashSet::new()));
    let sink = found.clone();
    let (_, marks) = scan(
        args,
        rejected_topic,
        rejected_partition,
        ScanStart::LastN(last_n),
        idle_timeout,
        move |m: &rdkafka::message::BorrowedMessage<'_>| {
            let Some(h) = m.headers() else { return };
            let pairs = h.iter().map(|h| (h.key, h.value.unwrap_or_default()));
            if let Some(o) = source_offset_of(pairs, &stage, &topic, source_partition) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).insert(o);
            }
        },
    )
    .await?;
    let found = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
    tracing::info!(
        rejected = %rejected_topic,
        rejected_partition,
        %source_topic,
        source_partition,
        scanned = (marks.high - marks.low).min(last_n.max(0)),
        beyond_window = marks.high - marks.low > last_n,
        found = found.len(),
        "read the dead letters already written for a source partition"
    );
    Ok(found)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_original_bytes_and_says_why() {
        let input = InputRecord {
            topic: "audit.raw".into(),
            partition: 3,
            offset: 42,
            key: Some(b"k".to_vec()),
            payload: Some(vec![0xff, 0xfe]),
            headers: vec![("trace".into(), b"abc".to_vec())],
            timestamp_ms: Some(1),
        };
        let out = dead_letter("audit.rejected", &input, "ingest", "not_utf8", "bad bytes");
        assert_eq!(out.payload.as_deref(), Some(&[0xff, 0xfe][..]));
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        let h = |k: &str| {
            out.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(h(HEADER_REASON_CODE).as_deref(), Some("not_utf8"));
        assert_eq!(h(HEADER_SOURCE_PARTITION).as_deref(), Some("3"));
        assert_eq!(h(HEADER_SOURCE_OFFSET).as_deref(), Some("42"));
        assert_eq!(h(HEADER_STAGE).as_deref(), Some("ingest"));
        assert_eq!(h("trace").as_deref(), Some("abc"));
    }

    #[test]
    fn finds_the_source_offset_of_our_own_dead_letters_only() {
        let input = InputRecord {
            topic: "audit.raw".into(),
            partition: 3,
            offset: 42,
            key: None,
            payload: None,
            // A producer's header that imitates ours must not be mistaken for ours.
            headers: vec![(HEADER_SOURCE_OFFSET.into(), b"7".to_vec())],
            timestamp_ms: None,
        };
        let out = dead_letter("audit.rejected", &input, "ingest", "x", "y");
        let pairs = || out.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        assert_eq!(
            source_offset_of(pairs(), "ingest", "audit.raw", 3),
            Some(42)
        );
        assert_eq!(source_offset_of(pairs(), "enrich", "audit.raw", 3), None);
        assert_eq!(
            source_offset_of(pairs(), "ingest", "audit.validated", 3),
            None
        );
        assert_eq!(source_offset_of(pairs(), "ingest", "audit.raw", 4), None);
        assert_eq!(
            source_offset_of(std::iter::empty(), "ingest", "audit.raw", 3),
            None
        );
    }

    #[test]
    fn each_source_partition_has_one_rejected_partition() {
        assert_eq!(rejected_partition(5, 3), 2);
        assert_eq!(rejected_partition(2, 3), 2);
        assert_eq!(rejected_partition(7, 0), 0, "a bad count never panics");
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate(&s, 4095);
        assert!(t.len() <= 4095 && t.is_char_boundary(t.len()));
    }
}
