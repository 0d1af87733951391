//! `auditctl erase --subject ID --reason …`: crypto-shredding of one data subject
//! (docs/privacy.md).
//!
//! 1. Destroys the subject's key in the subject key store (and checks it is gone). Every
//!    ciphertext made for the subject (`enc:v1:<subject token>.<generation>:…`) becomes
//!    unreadable everywhere it is stored; not a byte of any chained event changes, so the chain
//!    and every inclusion proof still verify.
//! 2. Appends an erasure event to the chain: published to `<prefix>validated` like any event
//!    (it goes through enrich and the chainer), naming the subject only by its token, with the
//!    reason, who asked and when.
//! 3. Reports where the subject's ciphertext lies: the partitions and seq ranges of the rows in
//!    ClickHouse whose `audit.privacy.subject` attribute is the subject's token (the archive's
//!    segments are named by the same seq ranges).
//!
//! The subject id itself is never written anywhere: only its token (HMAC under the
//! tokenization key) is, in the erasure event and in the output.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use clickhouse::Client;
use enrich::privacy::store::SubjectKeys;
use enrich::privacy::{token, PrivacyArgs, ERASED, SUBJECT_ATTRIBUTE};
use schemas::governance::GovernanceEvent;
use schemas::{ActorType, AuditEvent};
use serde::Serialize;
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};

use crate::cli::ClickHouseArgs;
use crate::error::Error;
use crate::Outcome;

/// Event type of the erasure event.
pub const ERASURE_EVENT_TYPE: &str = "privacy.subject_erased";
/// Attribute of the erasure event naming the erased subject's token.
pub const ERASED_SUBJECT_ATTRIBUTE: &str = "audit.privacy.erased_subject";
/// Attribute of the erasure event naming the subject's tokens under retired tokenization keys.
pub const ERASED_ALIASES_ATTRIBUTE: &str = "audit.privacy.erased_subject_aliases";
/// Attribute of the erasure event naming the key generations destroyed ("none" if there was no key).
pub const ERASED_KEY_ATTRIBUTE: &str = "audit.privacy.erased_key";

#[derive(Debug, Clone, Args)]
pub struct EraseArgs {
    /// The data subject: a user id, or the email of an unknown user (as enrich derived it).
    #[arg(long)]
    pub subject: String,
    /// Why (e.g. "GDPR Art. 17 request #4711"); recorded in the chained erasure event.
    #[arg(long)]
    pub reason: String,
    /// Who asks for the erasure (recorded in the erasure event). Default: $USER.
    #[arg(long = "erased-by", env = "AUDITCTL_ERASED_BY")]
    pub erased_by: Option<String>,
    /// Skip the ClickHouse report of where the subject's ciphertext lies.
    #[arg(long)]
    pub no_locate: bool,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

/// The JSON report of `erase`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EraseReport {
    /// The subject's token under the current tokenization key.
    pub subject_token: String,
    /// Its tokens under retired tokenization keys (erased too).
    pub retired_subject_tokens: Vec<String>,
    /// The key generations destroyed; empty: the subject had no key (nothing was encrypted
    /// for it, or it was erased before).
    pub destroyed_keys: Vec<String>,
    pub erasure_event_id: String,
    pub published: Published,
    /// `None` with `--no-locate`.
    pub locations: Option<Vec<Location>>,
    /// How long running workers may still hold the key in their caches (seconds).
    pub worker_cache_bound_secs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Rows of one chain partition holding the subject's ciphertext.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Location {
    pub partition: i32,
    pub events: u64,
    /// Inclusive seq ranges.
    pub seq_ranges: Vec<(i64, i64)>,
}

/// Configuration problems are usage errors (exit 2); a key store that cannot be reached or
/// holds something unreadable is an I/O failure (exit 3).
pub(crate) fn privacy_err(e: enrich::privacy::PrivacyError) -> Error {
    use enrich::privacy::PrivacyError as P;
    let service = match &e {
        P::KeyStore { .. } | P::CorruptStoredKey | P::UnknownMasterKey(_) | P::Random => true,
        P::Shared(inner) => matches!(**inner, P::KeyStore { .. } | P::CorruptStoredKey),
        _ => false,
    };
    if service {
        Error::Service(e.to_string())
    } else {
        Error::Usage(e.to_string())
    }
}

pub async fn run(a: &EraseArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    if a.subject.trim().is_empty() || a.reason.trim().is_empty() {
        return Err(Error::Usage(
            "erase: --subject and --reason must not be empty".into(),
        ));
    }
    let erased_by = who(a.erased_by.as_deref(), "--erased-by")?;
    let (token_keys, keys) = privacy_setup(&a.privacy)?;
    let tokens = subject_tokens(&token_keys, &a.subject);

    // 1. The keys first (under every tokenization key, current and retired): once they are
    // gone, nothing published later can be decrypted for the subject, whatever else fails.
    let mut destroyed_keys = Vec::new();
    for t in &tokens {
        let destroyed = keys.destroy(t).await.map_err(privacy_err)?;
        destroyed_keys.extend(destroyed);
    }

    // 2. The erasure event, into the chain.
    let event = erasure_event(&tokens, &destroyed_keys, &a.reason, &erased_by);
    let published = publish(&a.kafka, &event).await?;

    // 3. ClickHouse: the erasure recorded (so the redacted view shows `[erased]`), and where
    // the ciphertext lies.
    let locations = if a.no_locate {
        None
    } else {
        record_erasure(&a.clickhouse, &tokens, &event).await?;
        Some(locate(&a.clickhouse, &tokens).await?)
    };
    let mut tokens = tokens.into_iter();
    let report = EraseReport {
        subject_token: tokens.next().unwrap_or_default(),
        retired_subject_tokens: tokens.collect(),
        destroyed_keys,
        erasure_event_id: event.event_id,
        published,
        locations,
        worker_cache_bound_secs: a.privacy.privacy_key_cache_ttl_secs,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Usage(format!("serializing the erase report: {e}")))?;
    writeln!(out, "{json}").map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(Outcome::Ok)
}

/// Who runs the command: the flag, else `$USER`.
pub(crate) fn who(given: Option<&str>, flag: &str) -> Result<String, Error> {
    given
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::Usage(format!("say who runs this ({flag})")))
}

/// The subject's tokens under each tokenization key (current first).
pub fn subject_tokens(keys: &[enrich::privacy::keys::NamedKey], subject: &str) -> Vec<String> {
    keys.iter()
        .map(|k| token::subject_token(k, subject))
        .collect()
}

/// The tokenization keys (current first, then retired) and the subject key store, required.
pub(crate) fn privacy_setup(
    p: &PrivacyArgs,
) -> Result<(Vec<enrich::privacy::keys::NamedKey>, SubjectKeys), Error> {
    if p.token_key().map_err(privacy_err)?.is_none() {
        return Err(privacy_err(enrich::privacy::PrivacyError::NoTokenKey));
    }
    let token_keys = p.token_keys().map_err(privacy_err)?;
    let keys = p
        .subject_keys()
        .map_err(privacy_err)?
        .ok_or_else(|| Error::Usage("no --privacy-key-store-url".into()))?;
    Ok((token_keys, keys))
}

/// Publishes an operator event to `<prefix>validated` (it is chained like any event) and
/// waits for the broker's acknowledgement.
pub(crate) async fn publish(kafka: &KafkaArgs, event: &AuditEvent) -> Result<Published, Error> {
    let payload = schemas::framing::encode_single_object_event(event)
        .map_err(|e| Error::Usage(format!("encoding the {} event: {e}", event.event_type)))?;
    let topic = kafka.topics().validated;
    let producer = Producer::new(kafka, "auditctl-privacy")
        .map_err(|e| Error::Service(format!("kafka: {e}")))?;
    let delivered = producer
        .send(&OutputRecord::new(
            &topic,
            Some(event.event_id.clone().into_bytes()),
            payload,
        ))
        .await
        .map_err(|e| {
            Error::Service(format!(
                "kafka: publishing the {} event: {e}",
                event.event_type
            ))
        })?;
    Ok(Published {
        topic,
        partition: delivered.partition,
        offset: delivered.offset,
    })
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The erasure event: governance, by the operator, about the subject's tokens (current
/// first).
pub fn erasure_event(
    subject_tokens: &[String],
    destroyed_keys: &[String],
    reason: &str,
    erased_by: &str,
) -> AuditEvent {
    let subject_token = subject_tokens.first().map(String::as_str).unwrap_or("");
    let destroyed = if destroyed_keys.is_empty() {
        "none".to_owned()
    } else {
        destroyed_keys.join(",")
    };
    let mut attributes = vec![
        (ERASED_KEY_ATTRIBUTE, destroyed),
        (ERASED_SUBJECT_ATTRIBUTE, subject_token.to_owned()),
    ];
    if subject_tokens.len() > 1 {
        attributes.push((ERASED_ALIASES_ATTRIBUTE, subject_tokens[1..].join(",")));
    }
    operator_event(OperatorEvent {
        id_prefix: "erasure",
        event_type: ERASURE_EVENT_TYPE,
        verb: "erase",
        description: "crypto-shredding: the subject's key was destroyed",
        operator: erased_by,
        target_type: "data_subject",
        target_id: subject_token,
        reason,
        attributes,
    })
}

/// What an operator's privacy event (erasure, reveal) says.
#[derive(Debug, Clone)]
pub(crate) struct OperatorEvent<'a> {
    pub id_prefix: &'a str,
    pub event_type: &'a str,
    pub verb: &'a str,
    pub description: &'a str,
    pub operator: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub reason: &'a str,
    pub attributes: Vec<(&'a str, String)>,
}

/// A governance event by an operator, now, with a fresh producer id.
pub(crate) fn operator_event(o: OperatorEvent<'_>) -> AuditEvent {
    GovernanceEvent {
        event_id: GovernanceEvent::fresh_id(o.id_prefix),
        event_type: o.event_type,
        time_us: now_us(),
        component: "auditctl",
        actor_type: ActorType::User,
        actor_id: o.operator,
        verb: o.verb,
        description: o.description.into(),
        target_type: o.target_type,
        target_id: o.target_id,
        reason: o.reason.into(),
        attributes: o.attributes,
        before_json: None,
        after_json: None,
        regulations: vec!["GDPR".into()],
    }
    .build()
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Hit {
    chain_partition: i32,
    seq: i64,
}

/// The events table name, checked (it is interpolated into SQL).
pub(crate) fn events_table(a: &ClickHouseArgs) -> Result<&str, Error> {
    let table = a.events_table.as_str();
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Usage(format!(
            "events table {table:?} is not a plain identifier"
        )));
    }
    Ok(table)
}

pub(crate) fn client(a: &ClickHouseArgs) -> Client {
    let mut c = Client::default()
        .with_url(&a.clickhouse_url)
        .with_database(&a.clickhouse_database)
        .with_user(&a.clickhouse_user)
        .with_validation(false);
    if let Some(p) = &a.clickhouse_password {
        c = c.with_password(p.expose());
    }
    c
}

/// Table of erasures, read by the redacted view.
pub const ERASURES_TABLE: &str = "audit_erasures";
/// The analysts' view: the events table with every ciphertext of an erased subject shown as
/// `[erased]`.
pub const REDACTED_VIEW: &str = "audit_events_redacted";

/// Columns a privacy rule can encrypt: shown `[erased]` in the view once their subject is.
const REDACTABLE: &[&str] = &[
    "actor_id",
    "actor_name",
    "actor_email",
    "actor_ip",
    "actor_user_agent",
    "actor_session_id",
    "target_id",
    "target_name",
    "action_description",
    "action_error",
    "reason",
    "request_id",
    "ai_reasoning",
];

/// Columns shown as stored.
const PASSTHROUGH: &[&str] = &[
    "chain_partition",
    "seq",
    "event_id",
    "event_type",
    "category",
    "severity",
    "outcome",
    "event_time_us",
    "event_time",
    "source_component",
    "actor_type",
    "tenant_id",
    "team_id",
    "team_name",
    "target_type",
    "action_verb",
    "action_status",
    "trace_id",
    "payload_json",
    "result_json",
    "attribute_keys",
    "attribute_values",
];

fn identifier(what: &str, s: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} {s:?} is not a plain identifier"
        )))
    }
}

/// The DDL of the erasures table and the redacted view (idempotent; ClickHouse 18.16 and
/// later: no lambdas, no `startsWith`, and the raw columns renamed in a subquery because an
/// alias equal to its own source column is a cyclic alias there).
pub fn redaction_ddl(database: &str, events: &str) -> Result<[String; 2], Error> {
    identifier("database", database)?;
    identifier("events table", events)?;
    let table = format!(
        "CREATE TABLE IF NOT EXISTS {database}.{ERASURES_TABLE} (subject_token String, \
         erased_at_us Int64, erasure_event_id String, erased_by String, reason String) \
         ENGINE = MergeTree() ORDER BY (subject_token, erased_at_us)"
    );
    let shown: Vec<String> = PASSTHROUGH
        .iter()
        .map(|c| (*c).to_owned())
        .chain(REDACTABLE.iter().map(|c| {
            format!(
                "if(privacy_erased AND substring(ifNull(raw_{c}, ''), 1, 7) = 'enc:v1:', \
                 '{ERASED}', raw_{c}) AS {c}"
            )
        }))
        .collect();
    let inner: Vec<String> = PASSTHROUGH
        .iter()
        .map(|c| (*c).to_owned())
        .chain(REDACTABLE.iter().map(|c| format!("{c} AS raw_{c}")))
        .collect();
    let view = format!(
        "CREATE VIEW IF NOT EXISTS {database}.{REDACTED_VIEW} AS SELECT privacy_subject, \
         privacy_erased, {} FROM (SELECT {}, \
         attribute_values[indexOf(attribute_keys, '{SUBJECT_ATTRIBUTE}')] AS privacy_subject, \
         privacy_subject != '' AND privacy_subject IN \
         (SELECT subject_token FROM {database}.{ERASURES_TABLE}) AS privacy_erased \
         FROM {database}.{events})",
        shown.join(", "),
        inner.join(", ")
    );
    Ok([table, view])
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct ErasureRow<'a> {
    subject_token: &'a str,
    erased_at_us: i64,
    erasure_event_id: &'a str,
    erased_by: &'a str,
    reason: &'a str,
}

/// Records the erasure in ClickHouse (creating the table and the redacted view if needed).
pub async fn record_erasure(
    a: &ClickHouseArgs,
    subject_tokens: &[String],
    erasure: &AuditEvent,
) -> Result<(), Error> {
    let c = client(a);
    let ch_err = |doing: &str| {
        let doing = doing.to_owned();
        move |source| Error::ClickHouse { doing, source }
    };
    for ddl in redaction_ddl(&a.clickhouse_database, events_table(a)?)? {
        c.query(&ddl)
            .execute()
            .await
            .map_err(ch_err("creating the erasures table and redacted view"))?;
    }
    let mut ins = c
        .insert::<ErasureRow<'_>>(ERASURES_TABLE)
        .await
        .map_err(ch_err("recording the erasure"))?;
    for subject_token in subject_tokens {
        ins.write(&ErasureRow {
            subject_token,
            erased_at_us: erasure.event_time_us,
            erasure_event_id: &erasure.event_id,
            erased_by: &erasure.actor.id,
            reason: erasure.reason.as_deref().unwrap_or_default(),
        })
        .await
        .map_err(ch_err("recording the erasure"))?;
    }
    ins.end().await.map_err(ch_err("recording the erasure"))?;
    Ok(())
}

/// SQL condition: the attribute named by the 2nd bind is one of the 1st bind's values.
/// indexOf/arrayElement/has rather than a lambda: works on ClickHouse 18.16 and current ones
/// (an absent key gives index 0, i.e. the empty string, which no token equals).
pub(crate) const ATTRIBUTE_IN: &str = "has(?, attribute_values[indexOf(attribute_keys, ?)])";

/// The partitions and seq ranges of the rows naming `subject_token` as their subject.
pub async fn locate(a: &ClickHouseArgs, subject_tokens: &[String]) -> Result<Vec<Location>, Error> {
    let table = events_table(a)?;
    let sql = format!(
        "SELECT chain_partition, seq FROM {table} WHERE {ATTRIBUTE_IN} \
         ORDER BY chain_partition, seq"
    );
    let hits: Vec<Hit> = client(a)
        .query(&sql)
        .bind(subject_tokens)
        .bind(SUBJECT_ATTRIBUTE)
        .fetch_all()
        .await
        .map_err(|source| Error::ClickHouse {
            doing: format!("finding the subject's rows in {table}"),
            source,
        })?;
    Ok(ranges(hits.iter().map(|h| (h.chain_partition, h.seq))))
}

/// Groups sorted (partition, seq) pairs into per-partition inclusive ranges.
pub(crate) fn ranges(hits: impl Iterator<Item = (i32, i64)>) -> Vec<Location> {
    let mut out: Vec<Location> = Vec::new();
    for (p, seq) in hits {
        match out.last_mut() {
            Some(l) if l.partition == p => {
                l.events += 1;
                match l.seq_ranges.last_mut() {
                    Some(r) if r.1 + 1 == seq => r.1 = seq,
                    Some(r) if r.1 == seq => l.events -= 1, // a duplicate row: counted once
                    _ => l.seq_ranges.push((seq, seq)),
                }
            }
            _ => out.push(Location {
                partition: p,
                events: 1,
                seq_ranges: vec![(seq, seq)],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn erase_code(extra: &[&str]) -> u8 {
        use clap::Parser;
        let mut argv = vec![
            "auditctl",
            "erase",
            "--subject",
            "u-1",
            "--reason",
            "test",
            "--erased-by",
            "ops",
            "--no-locate",
        ];
        argv.extend_from_slice(extra);
        let cli = crate::Cli::try_parse_from(argv).expect("arguments");
        let mut out = Vec::new();
        crate::exit_code(&crate::run(cli, &mut out).await)
    }

    #[tokio::test]
    async fn configuration_errors_are_usage_and_an_unreadable_store_is_io() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = dir.path().display().to_string();
        let key = "11".repeat(32);
        assert_eq!(erase_code(&[]).await, crate::EXIT_USAGE, "no keys at all");
        assert_eq!(
            erase_code(&["--privacy-token-key", &key]).await,
            crate::EXIT_USAGE,
            "no key store"
        );
        // The subject's stored key is garbage: the store cannot be trusted, exit 3 (and
        // nothing is published).
        let t = enrich::privacy::keys::NamedKey::parse("t1", &key, "k").expect("key");
        let subject = token::subject_token(&t, "u-1");
        std::fs::create_dir_all(dir.path().join("subjects")).expect("dir");
        std::fs::write(
            dir.path().join(format!("subjects/{subject}.json")),
            b"garbage",
        )
        .expect("write");
        let code = erase_code(&[
            "--privacy-token-key",
            &key,
            "--privacy-master-key",
            &key,
            "--privacy-key-store-url",
            &store,
            "--kafka-brokers",
            "127.0.0.1:1",
        ])
        .await;
        assert_eq!(code, crate::EXIT_IO);
    }

    #[test]
    fn hits_group_into_ranges() {
        let got = ranges([(0, 1), (0, 2), (0, 3), (0, 7), (0, 7), (2, 5)].into_iter());
        assert_eq!(
            got,
            vec![
                Location {
                    partition: 0,
                    events: 4,
                    seq_ranges: vec![(1, 3), (7, 7)]
                },
                Location {
                    partition: 2,
                    events: 1,
                    seq_ranges: vec![(5, 5)]
                },
            ]
        );
    }

    #[test]
    fn the_erasure_event_is_valid_and_names_only_the_token() {
        let e = erasure_event(
            &["t1.abc".to_owned(), "t0.old".to_owned()],
            &["t1.abc.g".to_owned()],
            "GDPR Art. 17",
            "ops-1",
        );
        schemas::validate::validate_event(
            &e,
            &schemas::json::JsonLimits::default(),
            e.receive_time_us,
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
        assert!(e.attributes.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(e.target.as_ref().map(|t| t.id.as_str()), Some("t1.abc"));
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        assert_eq!(attr(ERASED_ALIASES_ATTRIBUTE), Some("t0.old"));
        assert_eq!(attr(ERASED_KEY_ATTRIBUTE), Some("t1.abc.g"));
        assert_eq!(attr(ERASED_SUBJECT_ATTRIBUTE), Some("t1.abc"));
    }
}
