//! Topic administration: idempotent creation (the local broker has no auto-creation, and a
//! production cluster should not rely on it), partition counts, and the retention check of the
//! topics that must keep every record.
//!
//! `<prefix>chained` and `<prefix>checkpoints` are created with infinite retention
//! (`retention.ms=-1`, `retention.bytes=-1`): they are the audit record itself, and a chained
//! partition emptied by retention leaves the chainer only its checkpoints to resume from and
//! a lagging sink nothing to store. Broker defaults (7 days on Apache Kafka) must not apply.
//! `cleanup.policy` is deliberately left unset: on tansu 0.6 an explicit `cleanup.policy=delete`
//! together with `retention.ms=-1` deletes every record at the next maintenance (its SQL
//! compares the record age with `-1`), while without an explicit `delete` policy tansu never
//! deletes by age.

use super::KafkaArgs;
use crate::error::RuntimeError;
use crate::retry::{retry, RetryPolicy, Retryable};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The topic configs of a topic that keeps its records forever (`-1` = no limit).
pub const INFINITE_RETENTION: [(&str, &str); 2] =
    [("retention.ms", "-1"), ("retention.bytes", "-1")];

/// Whether `topic` is one the pipeline keeps forever: `<prefix>chained` and
/// `<prefix>checkpoints` of `args`.
pub fn needs_infinite_retention(args: &KafkaArgs, topic: &str) -> bool {
    let t = args.topics();
    topic == t.chained || topic == t.checkpoints
}

/// The configs `ensure_topics` creates `spec` with.
pub fn topic_configs(args: &KafkaArgs, spec: &TopicSpec) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if spec.compacted {
        out.push(("cleanup.policy", "compact"));
    }
    if needs_infinite_retention(args, &spec.name) {
        out.extend(INFINITE_RETENTION);
    }
    out
}

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// `cleanup.policy=compact` (the context topics).
    pub compacted: bool,
}

/// Creates the topics that do not exist yet, with [`topic_configs`] (the chained and
/// checkpoints topics of `args` with infinite retention, whatever the spec's origin); existing
/// ones are left as they are (`check_retention` reports theirs; `deploy/local/topics.py
/// ensure` also fixes them, through IncrementalAlterConfigs, which rdkafka lacks).
pub async fn ensure_topics(
    args: &KafkaArgs,
    specs: &[TopicSpec],
    replication: i32,
) -> Result<(), RuntimeError> {
    let admin: AdminClient<DefaultClientContext> = args
        .client_config("audit-admin")
        .create()
        .map_err(|e| RuntimeError::kafka("creating admin client", e))?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            topic_configs(args, s).into_iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| RuntimeError::kafka("creating topics", e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(RuntimeError::kafka(
                    format!("creating topic {name}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// The pipeline's topics with `partitions` each (context topics compacted).
pub fn pipeline_topic_specs(args: &KafkaArgs, partitions: i32) -> Vec<TopicSpec> {
    args.topics()
        .all()
        .into_iter()
        .map(|(name, compacted)| TopicSpec {
            name: name.to_owned(),
            partitions,
            compacted,
        })
        .collect()
}

/// Number of partitions of `topic` (an error if it does not exist). A broker that does not
/// answer in time (restarting, or loaded) is asked again for about a minute, so that a worker
/// starting during a broker restart or rollout does not crash-loop on one timeout; a missing
/// topic is final at once. `cancel` (the worker's shutdown) ends the waiting: a SIGTERM during
/// start-up returns the last error at once instead of after the remaining attempts.
pub async fn partition_count(
    args: &KafkaArgs,
    topic: &str,
    cancel: &CancellationToken,
) -> Result<i32, RuntimeError> {
    const METADATA_RETRY: RetryPolicy = RetryPolicy {
        min_delay_ms: 500,
        max_delay_ms: 5_000,
        max_attempts: 6,
    };
    retry("topic_metadata", &METADATA_RETRY, cancel, || {
        partition_count_once(args, topic)
    })
    .await
    .map_err(|e| e.into_inner().error)
}

/// One metadata request's failure, and whether asking again may help.
#[derive(Debug)]
struct MetadataError {
    error: RuntimeError,
    transient: bool,
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Retryable for MetadataError {
    fn is_retryable(&self) -> bool {
        self.transient
    }
}

async fn partition_count_once(args: &KafkaArgs, topic: &str) -> Result<i32, MetadataError> {
    let cfg = args.client_config("audit-metadata");
    let topic = topic.to_owned();
    let transient = |error| MetadataError {
        error,
        transient: true,
    };
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| RuntimeError::kafka("creating metadata client", e))
            .map_err(|error| MetadataError {
                error,
                transient: false,
            })?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| {
                transient(RuntimeError::kafka(
                    format!("fetching metadata of {topic}"),
                    e,
                ))
            })?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(MetadataError {
                error: RuntimeError::kafka(
                    format!("topic {topic} does not exist"),
                    rdkafka::error::KafkaError::MetadataFetch(
                        RDKafkaErrorCode::UnknownTopicOrPartition,
                    ),
                ),
                transient: false,
            }),
        }
    })
    .await
    .map_err(|e| MetadataError {
        error: RuntimeError::Task {
            task: "metadata".into(),
            message: e.to_string(),
        },
        transient: false,
    })?
}

/// A topic that must keep its records forever and may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionFinding {
    pub topic: String,
    pub problem: String,
}

/// What is wrong, for a topic that must keep every record, with its described `configs`
/// (name → value). Apache Kafka describes every config with its effective value; tansu only
/// the ones set on the topic, so an absent `retention.ms` is the broker's default (7 days on
/// Apache Kafka) and a finding, while an absent `retention.bytes` defaults to `-1` everywhere.
pub fn retention_problems(configs: &HashMap<String, Option<String>>) -> Vec<String> {
    let get = |k: &str| configs.get(k).cloned().flatten();
    let unlimited = |v: &str| v.trim().parse::<i64>().is_ok_and(|n| n < 0);
    let mut out = Vec::new();
    match get("retention.ms") {
        None => out.push(
            "retention.ms is not set on the topic (the broker default applies: 7 days on Apache Kafka)"
                .to_owned(),
        ),
        Some(v) if !unlimited(&v) => out.push(format!("retention.ms={v} (records older are deleted)")),
        Some(_) => {}
    }
    if let Some(v) = get("retention.bytes").filter(|v| !unlimited(v)) {
        out.push(format!(
            "retention.bytes={v} (older records are deleted past this size)"
        ));
    }
    if let Some(v) = get("cleanup.policy").filter(|v| v.contains("compact")) {
        out.push(format!(
            "cleanup.policy={v} (compaction deletes older records of a key)"
        ));
    }
    out
}

/// Describes the configs of `args`'s chained and checkpoints topics (DescribeConfigs, which
/// tansu answers) and returns what would let the broker delete their records. A topic that
/// cannot be described is a finding too.
pub async fn check_retention(args: &KafkaArgs) -> Result<Vec<RetentionFinding>, RuntimeError> {
    let admin: AdminClient<DefaultClientContext> = args
        .client_config("audit-admin")
        .create()
        .map_err(|e| RuntimeError::kafka("creating admin client", e))?;
    let t = args.topics();
    let names = [t.chained, t.checkpoints];
    let resources: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .describe_configs(resources.iter(), &opts)
        .await
        .map_err(|e| RuntimeError::kafka("describing the configs of the chain's topics", e))?;
    let mut out = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(res) => {
                let configs: HashMap<String, Option<String>> =
                    res.entries.into_iter().map(|e| (e.name, e.value)).collect();
                out.extend(retention_problems(&configs).into_iter().map(|problem| {
                    RetentionFinding {
                        topic: name.clone(),
                        problem,
                    }
                }));
            }
            Err(code) => out.push(RetentionFinding {
                topic: name.clone(),
                problem: format!("its configs could not be described: {code:?}"),
            }),
        }
    }
    Ok(out)
}

/// Logs a warning for each [`check_retention`] finding (and one if the check itself fails);
/// never fails, so a worker can spawn it at start without waiting for it.
pub async fn warn_on_finite_retention(args: KafkaArgs) -> Vec<RetentionFinding> {
    match check_retention(&args).await {
        Ok(findings) => {
            for f in &findings {
                tracing::warn!(
                    topic = %f.topic,
                    problem = %f.problem,
                    "this topic must keep every record (retention.ms=-1, retention.bytes=-1): \
                     the broker may delete chain records (deploy/local/topics.py ensure sets it)"
                );
            }
            if findings.is_empty() {
                tracing::debug!("chained and checkpoints topics keep their records forever");
            }
            findings
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check the retention of the chained and checkpoints topics");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM during start-up ends the metadata retries: against a broker that never
    /// answers, a cancelled token returns after the first 10 s attempt instead of six attempts
    /// and their back-off (over a minute). The deadline is a bound on waiting, not a speed claim.
    #[tokio::test]
    async fn a_cancelled_start_stops_asking_for_metadata() {
        let args = KafkaArgs::local("127.0.0.1:1", "p.");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let res = tokio::time::timeout(
            Duration::from_secs(40),
            partition_count(&args, "p.raw", &cancel),
        )
        .await
        .expect("cancelled metadata retries must stop after the first attempt");
        assert!(res.is_err(), "{res:?}");
    }

    fn cfg(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn only_the_chain_topics_get_infinite_retention() {
        let args = KafkaArgs::local("x:1", "p.");
        let spec = |name: &str, compacted| TopicSpec {
            name: name.into(),
            partitions: 1,
            compacted,
        };
        let inf = INFINITE_RETENTION.to_vec();
        assert_eq!(topic_configs(&args, &spec("p.chained", false)), inf);
        assert_eq!(topic_configs(&args, &spec("p.checkpoints", false)), inf);
        assert!(topic_configs(&args, &spec("p.raw", false)).is_empty());
        assert!(topic_configs(&args, &spec("q.chained", false)).is_empty());
        assert_eq!(
            topic_configs(&args, &spec("p.context.users", true)),
            vec![("cleanup.policy", "compact")]
        );
        // Never an explicit delete policy (tansu deletes everything with it and -1).
        assert!(pipeline_topic_specs(&args, 1)
            .iter()
            .flat_map(|s| topic_configs(&args, s))
            .all(|(k, v)| !(k == "cleanup.policy" && v.contains("delete"))));
    }

    #[test]
    fn retention_findings() {
        let ok = cfg(&[
            ("retention.ms", Some("-1")),
            ("retention.bytes", Some("-1")),
        ]);
        assert!(retention_problems(&ok).is_empty());
        // tansu lists only what is set: absent retention.bytes is fine, absent ms is not.
        assert!(retention_problems(&cfg(&[("retention.ms", Some("-1"))])).is_empty());
        assert_eq!(retention_problems(&cfg(&[])).len(), 1);
        let finite = cfg(&[
            ("retention.ms", Some("604800000")),
            ("retention.bytes", Some("1073741824")),
            ("cleanup.policy", Some("compact,delete")),
        ]);
        let p = retention_problems(&finite);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("604800000"));
    }
}
