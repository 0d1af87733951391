//! Dead-letter records: the original key and bytes, untouched, plus headers saying why, where
//! from and which stage rejected them (design doc, `audit.rejected`).

use super::record::{InputRecord, OutputRecord};

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
    fn truncates_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate(&s, 4095);
        assert!(t.len() <= 4095 && t.is_char_boundary(t.len()));
    }
}
