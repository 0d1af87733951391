//! Topic retention against the local stack's broker (tansu on 127.0.0.1:9092, or
//! `KAFKA_BROKERS`; `deploy/local/stack.sh up`). FAILS when the broker is absent.
//!
//! The chained and checkpoints topics are created with infinite retention, and the check the
//! workers run at start (DescribeConfigs, which tansu answers with the configs set on the
//! topic) reports topics created without it, with a finite one, or missing.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use worker_runtime::kafka::admin::{check_retention, ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::KafkaArgs;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn admin(args: &KafkaArgs) -> AdminClient<DefaultClientContext> {
    args.client_config("retention-test")
        .create()
        .expect("admin")
}

fn unique(tag: &str) -> KafkaArgs {
    let id = uuid_like();
    KafkaArgs::local(&brokers(), &format!("t-ret-{tag}-{id}."))
}

/// A unique-enough suffix without an extra dependency: time and process id.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

async fn describe(args: &KafkaArgs, topic: &str) -> Vec<(String, Option<String>)> {
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let r = admin(args)
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await
        .expect("describe");
    let res = r.into_iter().next().expect("one").expect("described");
    res.entries.into_iter().map(|e| (e.name, e.value)).collect()
}

#[tokio::test]
async fn chain_topics_are_created_with_infinite_retention() {
    let args = unique("ok");
    ensure_topics(&args, &pipeline_topic_specs(&args, 1), 1)
        .await
        .expect("topics (is Kafka up? deploy/local/stack.sh up)");
    let t = args.topics();
    for topic in [&t.chained, &t.checkpoints] {
        let got = describe(&args, topic).await;
        for (k, v) in [("retention.ms", "-1"), ("retention.bytes", "-1")] {
            assert!(
                got.contains(&(k.to_owned(), Some(v.to_owned()))),
                "{topic}: {got:?}"
            );
        }
        // Never an explicit delete policy: tansu then deletes every record with -1.
        assert!(!got.iter().any(|(k, _)| k == "cleanup.policy"), "{got:?}");
    }
    // The other topics keep the broker's defaults.
    assert!(describe(&args, &t.raw).await.is_empty());
    let findings = check_retention(&args).await.expect("check");
    assert!(findings.is_empty(), "{findings:?}");
}

#[tokio::test]
async fn finite_or_unset_retention_and_missing_topics_are_reported() {
    let args = unique("bad");
    let t = args.topics();
    // Missing topics: reported, not an error of the check itself (tansu's "unknown topic"
    // reaches the client as an empty config list, so it reads as "not set").
    let mut findings = check_retention(&args)
        .await
        .expect("check (is Kafka up? deploy/local/stack.sh up)");
    findings.sort_by(|a, b| a.topic.cmp(&b.topic));
    let topics: Vec<&str> = findings.iter().map(|f| f.topic.as_str()).collect();
    assert_eq!(topics, vec![t.chained.as_str(), t.checkpoints.as_str()]);

    // Created by someone else: chained without any config, checkpoints with a week.
    let new = [
        NewTopic::new(&t.chained, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&t.checkpoints, 1, TopicReplication::Fixed(1))
            .set("retention.ms", "604800000")
            .set("retention.bytes", "-1"),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin(&args)
        .create_topics(new.iter(), &opts)
        .await
        .expect("create")
    {
        r.expect("created");
    }
    let mut findings = check_retention(&args).await.expect("check");
    findings.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert_eq!(findings[0].topic, t.chained);
    assert!(findings[0].problem.contains("not set"), "{findings:?}");
    assert_eq!(findings[1].topic, t.checkpoints);
    assert!(findings[1].problem.contains("604800000"), "{findings:?}");
}
