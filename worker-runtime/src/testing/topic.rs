//! Reading a whole topic back in a test: every record of every partition, as plain values.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Headers, Message};

use crate::error::RuntimeError;
use crate::kafka::tail::{scan, ScanStart};
use crate::kafka::KafkaArgs;

/// One record as a test looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Scanned {
    /// The first header `key`, as text.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of partitions `0..partitions` of `topic` up to their high watermarks, in
/// partition then offset order (read_committed; gives up on a partition that stays silent for
/// `idle`).
pub async fn read_topic(
    args: &KafkaArgs,
    topic: &str,
    partitions: i32,
    idle: Duration,
) -> Result<Vec<Scanned>, RuntimeError> {
    let all: Arc<Mutex<Vec<Scanned>>> = Arc::default();
    for p in 0..partitions {
        let sink = all.clone();
        // The scan hands back its callback with the end position; only the records matter.
        let _ = scan(args, topic, p, ScanStart::Offset(0), idle, move |m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            let record = Scanned {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            };
            if let Ok(mut v) = sink.lock() {
                v.push(record);
            }
        })
        .await?;
    }
    let records = all.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(records)
}
