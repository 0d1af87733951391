//! One validated event in, one enriched event out: same key, same partition number.

use std::sync::Arc;

use schemas::framing::{self, SchemaIdResolver};
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::pipeline::Processor;
use worker_runtime::kafka::{InputRecord, OutputRecord};
use worker_runtime::RuntimeError;

use crate::context::ContextCaches;

/// The stage name in DLQ headers, logs and metrics.
pub const STAGE: &str = "enrich";
/// DLQ reason code for input that is not a decodable `AuditEvent`.
pub const UNDECODABLE: &str = "undecodable";
/// W3C trace-context headers carried from input to output.
pub const PROPAGATED_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

pub struct EnrichProcessor {
    caches: ContextCaches,
    enriched_topic: String,
    rejected_topic: String,
    resolver: Arc<dyn SchemaIdResolver>,
}

impl std::fmt::Debug for EnrichProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrichProcessor")
            .field("caches", &self.caches)
            .field("enriched_topic", &self.enriched_topic)
            .field("rejected_topic", &self.rejected_topic)
            .finish_non_exhaustive()
    }
}

impl EnrichProcessor {
    pub fn new(
        caches: ContextCaches,
        enriched_topic: impl Into<String>,
        rejected_topic: impl Into<String>,
        resolver: Arc<dyn SchemaIdResolver>,
    ) -> Self {
        EnrichProcessor {
            caches,
            enriched_topic: enriched_topic.into(),
            rejected_topic: rejected_topic.into(),
            resolver,
        }
    }

    /// The one output record for `input`: the enriched event on the input's partition number of
    /// the enriched topic (so per-key order and the partition's chain follow the input), or a
    /// dead letter.
    pub async fn handle(&self, input: &InputRecord) -> OutputRecord {
        let decoded = match input.payload.as_deref() {
            None => Err(("null record value (tombstone)".to_owned(), UNDECODABLE)),
            Some(bytes) => framing::decode_event(bytes, Some(self.resolver.as_ref()))
                .map_err(|e| (e.to_string(), UNDECODABLE)),
        };
        let encoded = match decoded {
            Ok(mut event) => {
                self.caches.enrich(&mut event).await;
                framing::encode_single_object_event(&event).map_err(|e| (e.to_string(), "encode"))
            }
            Err(e) => Err(e),
        };
        match encoded {
            Ok(payload) => {
                metrics::counter!("audit_enrich_events_enriched_total").increment(1);
                let mut out = OutputRecord::new(&self.enriched_topic, input.key.clone(), payload)
                    .with_partition(input.partition);
                for name in PROPAGATED_HEADERS {
                    if let Some(v) = input.header(name) {
                        out = out.with_header(name, v);
                    }
                }
                out
            }
            Err((message, code)) => {
                metrics::counter!("audit_enrich_rejected_total", "code" => code).increment(1);
                tracing::warn!(topic = %input.topic, partition = input.partition,
                    offset = input.offset, code, error = %message, "event dead-lettered");
                dead_letter(&self.rejected_topic, input, STAGE, code, &message)
            }
        }
    }
}

impl Processor for EnrichProcessor {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        Ok(vec![self.handle(input).await])
    }
}
