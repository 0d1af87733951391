//! One validated event in, one enriched event out: same key, same partition number.

use std::sync::Arc;

use schemas::avro::RecordKind;
use schemas::enrich_splice::EnrichSplice;
use schemas::framing::{self, SchemaIdResolver};
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::pipeline::Processor;
use worker_runtime::kafka::{InputRecord, OutputRecord};
use worker_runtime::RuntimeError;

use crate::context::ContextCaches;
use crate::privacy::Privacy;

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
    /// The privacy rules, applied after the context is merged (so enrichment cannot bring back
    /// what a rule removed) and before the event is encoded for the chainer.
    privacy: Option<Privacy>,
    /// `audit_enrich_events_enriched_total`, registered once (it moves for every event).
    enriched: metrics::Counter,
}

impl std::fmt::Debug for EnrichProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrichProcessor")
            .field("caches", &self.caches)
            .field("enriched_topic", &self.enriched_topic)
            .field("rejected_topic", &self.rejected_topic)
            .field("privacy", &self.privacy.is_some())
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
            privacy: None,
            enriched: metrics::counter!("audit_enrich_events_enriched_total"),
        }
    }

    /// With the privacy rules on.
    pub fn with_privacy(mut self, privacy: Option<Privacy>) -> Self {
        self.privacy = privacy;
        self
    }

    /// The one output record for `input`: the enriched event on the input's partition number of
    /// the enriched topic (so per-key order and the partition's chain follow the input), or a
    /// dead letter. `Err`: the privacy rules could not be applied (subject key store
    /// unreachable); the event must not leave in the clear, so the worker stops and the input is
    /// read again after the restart.
    pub async fn handle(&self, input: &InputRecord) -> Result<OutputRecord, RuntimeError> {
        if let Some(payload) = self.spliced(input).await {
            return Ok(self.enriched(input, payload));
        }
        let decoded = match input.payload.as_deref() {
            None => Err(("null record value (tombstone)".to_owned(), UNDECODABLE)),
            Some(bytes) => framing::decode_event(bytes, Some(self.resolver.as_ref()))
                .map_err(|e| (e.to_string(), UNDECODABLE)),
        };
        let encoded = match decoded {
            Ok(mut event) => {
                self.caches.enrich(&mut event).await;
                if let Some(privacy) = &self.privacy {
                    let outcome = privacy.apply(&mut event).await.map_err(|e| {
                        // Names the record, never a value (the error carries none).
                        tracing::error!(topic = %input.topic, partition = input.partition,
                            offset = input.offset, error = %e, "privacy rules could not be applied");
                        RuntimeError::Task {
                            task: STAGE.into(),
                            message: format!("privacy rules: {e}"),
                        }
                    })?;
                    count_privacy(&outcome);
                }
                framing::encode_single_object_event(&event).map_err(|e| (e.to_string(), "encode"))
            }
            Err(e) => Err(e),
        };
        match encoded {
            Ok(payload) => Ok(self.enriched(input, payload)),
            Err((message, code)) => {
                metrics::counter!("audit_enrich_rejected_total", "code" => code).increment(1);
                tracing::warn!(topic = %input.topic, partition = input.partition,
                    offset = input.offset, code, error = %message, "event dead-lettered");
                Ok(dead_letter(
                    &self.rejected_topic,
                    input,
                    STAGE,
                    code,
                    &message,
                ))
            }
        }
    }

    /// The enriched event's payload without decoding the whole event, when the privacy rules
    /// are off and the input is its event's own encoding under the current schema (what
    /// ingest writes): `schemas::enrich_splice`, the same bytes as the decoding path's
    /// (property-tested there). `None` for anything else, which [`Self::handle`] decodes (and
    /// dead-letters, if need be) as before.
    pub(crate) async fn spliced(&self, input: &InputRecord) -> Option<Vec<u8>> {
        if self.privacy.is_some() {
            // The rules may rewrite any field: they work on the decoded event.
            return None;
        }
        let datum = framing::current_datum(
            input.payload.as_deref()?,
            RecordKind::AuditEvent,
            Some(self.resolver.as_ref()),
        )?;
        let mut splice = EnrichSplice::new(datum)?;
        let (user, team) = self
            .caches
            .lookup(splice.actor_id(), splice.team_id())
            .await;
        splice.apply_context(user.as_deref(), team.as_deref());
        Some(splice.encode_single_object())
    }

    /// The output record of an enriched event: same key, same partition number, the trace
    /// headers carried.
    fn enriched(&self, input: &InputRecord, payload: Vec<u8>) -> OutputRecord {
        self.enriched.increment(1);
        let mut out = OutputRecord::new(&self.enriched_topic, input.key.clone(), payload)
            .with_partition(input.partition);
        for name in PROPAGATED_HEADERS {
            if let Some(v) = input.header(name) {
                out = out.with_header(name, v);
            }
        }
        out
    }
}

fn count_privacy(o: &crate::privacy::Outcome) {
    for (action, n) in [
        ("drop", o.dropped),
        ("mask", o.masked),
        ("tokenize", o.tokenized),
        ("encrypt", o.encrypted),
        ("text_mask", o.text_masked),
        ("erased", o.erased),
    ] {
        if n > 0 {
            metrics::counter!("audit_enrich_privacy_fields_total", "action" => action)
                .increment(u64::from(n));
        }
    }
}

impl Processor for EnrichProcessor {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        Ok(vec![self.handle(input).await?])
    }
}
