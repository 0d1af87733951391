//! Topic administration: idempotent creation (the local broker has no auto-creation, and a
//! production cluster should not rely on it) and partition counts.

use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// `cleanup.policy=compact` (the context topics).
    pub compacted: bool,
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
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
            let t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication));
            if s.compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
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

/// Number of partitions of `topic` (an error if it does not exist).
pub async fn partition_count(args: &KafkaArgs, topic: &str) -> Result<i32, RuntimeError> {
    let cfg = args.client_config("audit-metadata");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| RuntimeError::kafka("creating metadata client", e))?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| RuntimeError::kafka(format!("fetching metadata of {topic}"), e))?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(RuntimeError::kafka(
                format!("topic {topic} does not exist"),
                rdkafka::error::KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ),
            )),
        }
    })
    .await
    .map_err(|e| RuntimeError::Task {
        task: "metadata".into(),
        message: e.to_string(),
    })?
}
