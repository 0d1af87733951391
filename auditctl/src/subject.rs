//! `auditctl subject-report` (what is held about a data subject, where, under which retention,
//! and whether it is erased) and `auditctl reveal` (the one audited path to plaintext):
//! docs/privacy.md.
//!
//! Both read ClickHouse rows back into events (`schemas::flat::AuditRow::to_chained`, the
//! verifier's own mapping), so every field the privacy rules can touch is examined the same way
//! enrich wrote it.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use enrich::privacy::crypto::Sealed;
use enrich::privacy::rules::Field;
use enrich::privacy::store::KeyState;
use enrich::privacy::{self, token, PrivacyArgs, SUBJECT_ATTRIBUTE};
use schemas::flat::AuditRow;
use schemas::{AuditEvent, ChainedEvent};
use serde::Serialize;
use worker_runtime::kafka::KafkaArgs;

use crate::cli::ClickHouseArgs;
use crate::erase::{
    client, events_table, operator_event, privacy_err, privacy_setup, publish, ranges,
    subject_tokens, who, Location, OperatorEvent, Published, ATTRIBUTE_IN,
    ERASED_SUBJECT_ATTRIBUTE, ERASURE_EVENT_TYPE,
};
use crate::error::Error;
use crate::Outcome;

/// Event type of the reveal audit event.
pub const REVEAL_EVENT_TYPE: &str = "privacy.pii_revealed";

#[derive(Debug, Clone, Args)]
pub struct SubjectReportArgs {
    /// The data subject: a user id, or the email of an unknown user.
    #[arg(long)]
    pub subject: String,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RevealArgs {
    /// The event whose personal fields to decrypt.
    #[arg(long)]
    pub event_id: String,
    /// Why (recorded in the chained reveal event before anything is decrypted).
    #[arg(long)]
    pub reason: String,
    /// Who reads the plaintext. Default: $USER.
    #[arg(long = "revealed-by", env = "AUDITCTL_REVEALED_BY")]
    pub revealed_by: Option<String>,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubjectReport {
    /// The subject's token under the current tokenization key.
    pub subject_token: String,
    /// Its tokens under retired tokenization keys (events and keys under them are included).
    pub retired_subject_tokens: Vec<String>,
    /// `active` (some key still opens the subject's fields), `erased`, or `none` (nothing was
    /// ever encrypted for the subject).
    pub key: &'static str,
    /// `true` when the subject's fields can no longer be read anywhere.
    pub erased: bool,
    pub events: Vec<HeldEvent>,
    /// Where those events are stored: ClickHouse rows and, by the same seq ranges, archive
    /// segments and the chained topic's partitions.
    pub locations: Vec<Location>,
    pub erasure_events: Vec<ErasureSeen>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeldEvent {
    pub partition: i32,
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub event_time_us: i64,
    /// Fields holding the subject's ciphertext.
    pub encrypted_fields: Vec<String>,
    /// Fields holding keyed tokens.
    pub tokenized_fields: Vec<String>,
    /// `security.retention_days` of the event; `None`: the stores' default (the chain is kept
    /// forever; ClickHouse/archive retention is the operator's).
    pub retention_days: Option<i32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErasureSeen {
    pub partition: i32,
    pub seq: i64,
    pub event_id: String,
    pub event_time_us: i64,
    pub erased_by: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RevealReport {
    pub event_id: String,
    /// The chained audit record of this reveal.
    pub reveal_event_id: Option<String>,
    pub published: Option<Published>,
    pub copies: Vec<RevealedCopy>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RevealedCopy {
    pub partition: i32,
    pub seq: i64,
    /// Field → plaintext, or `[erased]`.
    pub fields: BTreeMap<String, String>,
}

/// Bind values of [`rows`].
enum Bind<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// Rows of the events table matching `condition` (with `?` bound to `binds`), as events.
async fn rows(
    ch: &ClickHouseArgs,
    condition: &str,
    binds: &[Bind<'_>],
) -> Result<Vec<ChainedEvent>, Error> {
    let table = events_table(ch)?;
    let sql = format!(
        "{} WHERE {condition} ORDER BY chain_partition, seq",
        AuditRow::select_sql(table)
    );
    let mut q = client(ch).query(&sql);
    for b in binds {
        q = match b {
            Bind::One(v) => q.bind(*v),
            Bind::Many(v) => q.bind(*v),
        };
    }
    let rows: Vec<AuditRow> = q.fetch_all().await.map_err(|source| Error::ClickHouse {
        doing: format!("reading rows of {table}"),
        source,
    })?;
    rows.iter()
        .map(|r| {
            r.to_chained().map_err(|e| {
                Error::Integrity(format!(
                    "partition {} seq {}: unreadable row: {e}",
                    r.chain_partition, r.seq
                ))
            })
        })
        .collect()
}

fn fields_where(e: &AuditEvent, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = Field::all()
        .into_iter()
        .filter(|f| f.get(e).is_some_and(|v| pred(&v)))
        .map(|f| f.name())
        .collect();
    names.extend(
        e.attributes
            .iter()
            .filter(|kv| pred(&kv.value))
            .map(|kv| format!("attributes.{}", kv.key)),
    );
    names
}

pub async fn report(a: &SubjectReportArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let (token_keys, keys) = privacy_setup(&a.privacy)?;
    let tokens = subject_tokens(&token_keys, &a.subject);
    let (mut active, mut erased) = (false, false);
    for t in &tokens {
        match keys.status(t).await.map_err(privacy_err)? {
            Some(KeyState::Active(_)) => active = true,
            Some(KeyState::Erased) => erased = true,
            None => {}
        }
    }
    let key = match (active, erased) {
        (true, _) => "active",
        (false, true) => "erased",
        (false, false) => "none",
    };
    let held = rows(
        &a.clickhouse,
        ATTRIBUTE_IN,
        &[Bind::Many(&tokens), Bind::One(SUBJECT_ATTRIBUTE)],
    )
    .await?;
    let events = held
        .iter()
        .map(|c| HeldEvent {
            partition: c.chain_partition,
            seq: c.seq,
            event_id: c.event.event_id.clone(),
            event_type: c.event.event_type.clone(),
            event_time_us: c.event.event_time_us,
            encrypted_fields: fields_where(&c.event, |v| {
                Sealed::parse(v).is_some_and(|s| tokens.iter().any(|t| t == s.subject_token()))
            }),
            tokenized_fields: fields_where(&c.event, token::is_token),
            retention_days: c.event.security.as_ref().and_then(|s| s.retention_days),
        })
        .collect();
    let locations = ranges(held.iter().map(|c| (c.chain_partition, c.seq)));
    let erasures = rows(
        &a.clickhouse,
        &format!("event_type = '{ERASURE_EVENT_TYPE}' AND {ATTRIBUTE_IN}"),
        &[Bind::Many(&tokens), Bind::One(ERASED_SUBJECT_ATTRIBUTE)],
    )
    .await?;
    let mut tokens = tokens.into_iter();
    let report = SubjectReport {
        erased: key == "erased",
        subject_token: tokens.next().unwrap_or_default(),
        retired_subject_tokens: tokens.collect(),
        key,
        events,
        locations,
        erasure_events: erasures
            .iter()
            .map(|c| ErasureSeen {
                partition: c.chain_partition,
                seq: c.seq,
                event_id: c.event.event_id.clone(),
                event_time_us: c.event.event_time_us,
                erased_by: c.event.actor.id.clone(),
                reason: c.event.reason.clone(),
            })
            .collect(),
    };
    print_json(out, &report)
}

pub async fn reveal(a: &RevealArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    if a.reason.trim().is_empty() {
        return Err(Error::Usage("reveal: --reason must not be empty".into()));
    }
    let revealed_by = who(a.revealed_by.as_deref(), "--revealed-by")?;
    let (_, keys) = privacy_setup(&a.privacy)?;
    let copies = rows(&a.clickhouse, "event_id = ?", &[Bind::One(&a.event_id)]).await?;
    if copies.is_empty() {
        return Err(Error::Usage(format!(
            "reveal: no event {:?} in ClickHouse",
            a.event_id
        )));
    }
    let sealed: Vec<(i32, i64, Vec<String>)> = copies
        .iter()
        .map(|c| {
            let names = fields_where(&c.event, enrich::privacy::crypto::is_ciphertext);
            (c.chain_partition, c.seq, names)
        })
        .collect();
    let mut subjects: Vec<String> = copies
        .iter()
        .flat_map(|c| c.event.attributes.iter())
        .filter(|kv| kv.key == SUBJECT_ATTRIBUTE)
        .map(|kv| kv.value.clone())
        .collect();
    subjects.sort();
    subjects.dedup();
    let mut all_fields: Vec<String> = sealed.iter().flat_map(|s| s.2.clone()).collect();
    all_fields.sort();
    all_fields.dedup();

    // The audit record first: nothing is decrypted unless the reveal is in the chain's input.
    let (reveal_event_id, published) = if all_fields.is_empty() {
        (None, None)
    } else {
        let event = operator_event(OperatorEvent {
            id_prefix: "reveal",
            event_type: REVEAL_EVENT_TYPE,
            verb: "reveal",
            description: "personal fields decrypted through auditctl reveal",
            operator: &revealed_by,
            target_type: "audit_event",
            target_id: &a.event_id,
            reason: &a.reason,
            attributes: vec![
                ("audit.privacy.revealed_fields", all_fields.join(",")),
                ("audit.privacy.revealed_subjects", subjects.join(",")),
            ],
        });
        let published = publish(&a.kafka, &event).await?;
        (Some(event.event_id), Some(published))
    };

    let mut revealed = Vec::new();
    for (c, (partition, seq, names)) in copies.iter().zip(sealed) {
        let mut fields = BTreeMap::new();
        for name in names {
            let value = field_value(&c.event, &name).unwrap_or_default();
            let plain = privacy::reveal(&keys, &c.event.event_id, &name, &value)
                .await
                .map_err(privacy_err)?;
            fields.insert(name, plain);
        }
        revealed.push(RevealedCopy {
            partition,
            seq,
            fields,
        });
    }
    print_json(
        out,
        &RevealReport {
            event_id: a.event_id.clone(),
            reveal_event_id,
            published,
            copies: revealed,
        },
    )
}

fn field_value(e: &AuditEvent, name: &str) -> Option<String> {
    match Field::parse(name) {
        Ok(f) => f.get(e),
        // `attributes.audit.*` cannot be a rule's field, but read it anyway.
        Err(_) => name.strip_prefix("attributes.").and_then(|k| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.clone())
        }),
    }
}

fn print_json<T: Serialize>(out: &mut dyn Write, v: &T) -> Result<Outcome, Error> {
    let json = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Usage(format!("serializing the report: {e}")))?;
    writeln!(out, "{json}").map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(Outcome::Ok)
}
