//! `auditctl hold on|off|status --partition P [--seq A..B]`: S3 Object Lock **legal hold** on
//! the archive objects that hold a partition's seq range (docs/runbook.md, "Legal hold").
//!
//! 1. The covering objects: the segments and manifests of partition P whose seq range meets
//!    A..B, and the checkpoints that seal it (those at seqs A..=S, S the first checkpoint seq
//!    at or after B); without `--seq`, every segment, manifest and checkpoint of P.
//! 2. `on` / `off`: PUT `?legal-hold` (`<LegalHold><Status>ON|OFF</Status></LegalHold>`) on
//!    the current version of each. `status`: GET `?legal-hold` of each. `--dry-run` lists them.
//! 3. ClickHouse (unless `--no-clickhouse`): `on` / `off` set / clear the `legal_hold` flag
//!    of the range's rows in the events table (sink-clickhouse migration 0007) with an
//!    `ALTER TABLE … UPDATE` mutation, and wait until it is applied. Every retention TTL rule
//!    of sink-clickhouse requires `legal_hold = 0`, so held rows are never deleted by TTL.
//!    The flag is not part of the chain: no verifier reads it. Rows of the range stored later
//!    (not yet sunk, rehydrated) are not flagged: run `hold on` again after them (idempotent).
//!    `status` and `--dry-run` count the range's rows and the held ones.
//! 4. `on` / `off` then append an operator event to the chain (published to
//!    `<prefix>validated`, as `erase` does): `audit.legal_hold.set` / `.released`, with who,
//!    the partition and range, reason, case id, object counts and ClickHouse rows. The hold
//!    comes first: an event must never claim a hold that is not there. If recording fails,
//!    the command says the hold IS changed and exits 3; running it again records it (a hold
//!    is idempotent). A ClickHouse failure is recorded as such, and exits 3 after recording.
//!
//! `object_store` has no legal-hold call, so the requests are signed with its own SigV4 signer
//! (`AwsAuthorizer`, the code that signs every archive read and write) with the credentials
//! its S3 client resolves (flags, `AWS_*`, instance/web identity), and sent with its HTTP
//! client (`worker_runtime::object_store::signed`, shared with the archive sink's locked
//! puts): no second S3 stack. Credentials never appear in output or errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};
use object_store::ObjectStore;
use schemas::segment::{self, parse_key, ObjectKind, CHECKPOINT_SUFFIX, SEQ_WIDTH};
use schemas::AuditEvent;
use serde::Serialize;
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::object_store::signed::{self, s3_generic, xml_text, SendError, SignedS3};
use worker_runtime::object_store::{build_store, Access};

use crate::archive::store_config_error;
use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, ReadArgs};
use crate::erase::{client, events_table, operator_event, publish, who, OperatorEvent, Published};
use crate::error::Error;
use crate::reads::Reads;
use crate::rehydrate::parse_range;
use crate::Outcome;

/// Event type of a hold set.
pub const HOLD_SET_EVENT_TYPE: &str = "audit.legal_hold.set";
/// Event type of a hold released.
pub const HOLD_RELEASED_EVENT_TYPE: &str = "audit.legal_hold.released";
/// Attributes of the hold events.
pub const ATTR_PARTITION: &str = "audit.legal_hold.partition";
pub const ATTR_SEQ_RANGE: &str = "audit.legal_hold.seq_range";
pub const ATTR_COVERED: &str = "audit.legal_hold.covered_seq_range";
pub const ATTR_CASE: &str = "audit.legal_hold.case_id";
pub const ATTR_OBJECTS: &str = "audit.legal_hold.objects";
pub const ATTR_SEGMENTS: &str = "audit.legal_hold.segments";
pub const ATTR_MANIFESTS: &str = "audit.legal_hold.manifests";
pub const ATTR_CHECKPOINTS: &str = "audit.legal_hold.checkpoints";
pub const ATTR_FAILED: &str = "audit.legal_hold.failed";
pub const ATTR_ARCHIVE: &str = "audit.legal_hold.archive";
/// SHA-256 (hex) of the sorted object keys, one a line: which objects, without listing them.
pub const ATTR_OBJECTS_SHA256: &str = "audit.legal_hold.objects_sha256";
/// ClickHouse: `<database>.<table>` whose rows were flagged, or `skipped` / `failed: …`.
pub const ATTR_CLICKHOUSE: &str = "audit.legal_hold.clickhouse";
/// ClickHouse: rows of the range flagged held (on) or released (off).
pub const ATTR_CLICKHOUSE_ROWS: &str = "audit.legal_hold.clickhouse_rows";
/// The ClickHouse column that spares a row from retention TTL (sink-clickhouse 0007).
pub const HOLD_COLUMN: &str = "legal_hold";

/// Concurrent legal-hold requests.
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldAction {
    /// Set the legal hold on the covering objects, then record it in the chain.
    On,
    /// Release it, then record the release in the chain.
    Off,
    /// Report the legal-hold status of each covering object (changes nothing).
    Status,
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// on, off, or status.
    #[arg(value_enum)]
    pub action: HoldAction,
    /// The partition whose archive objects to hold.
    #[arg(long)]
    pub partition: u32,
    /// Seq range `A..B` (inclusive; `A..` = to the end). Default: the whole partition (the
    /// objects there now: segments archived later are not held).
    #[arg(long, value_parser = parse_range)]
    pub seq: Option<(i64, i64)>,
    /// Why (recorded in the chained event). Required for on/off.
    #[arg(long)]
    pub reason: Option<String>,
    /// The legal case or matter id (recorded in the chained event).
    #[arg(long = "case")]
    pub case_id: Option<String>,
    /// Who sets or releases the hold (recorded in the event). Default: $USER.
    #[arg(long = "held-by", env = "AUDITCTL_HELD_BY")]
    pub held_by: Option<String>,
    /// Only list the covering objects; change and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Same as the `status` action: report each covering object's legal hold.
    #[arg(long)]
    pub check: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
    /// Do not flag the rows in ClickHouse (archive only): they then stay subject to
    /// sink-clickhouse's retention TTL.
    #[arg(long)]
    pub no_clickhouse: bool,
    /// How long to wait for ClickHouse to apply the flag mutation (seconds).
    #[arg(long, default_value_t = 300)]
    pub clickhouse_mutation_timeout_secs: u64,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

/// What an archive object is, for the covering set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Segment,
    Manifest,
    Checkpoint,
}

/// One covering object: its key relative to the archive root, and the seqs it holds (a
/// checkpoint: its seq twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Covered {
    pub key: String,
    pub kind: Kind,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// The seq of a checkpoint object `checkpoints/chain=<p>/<seq:020>-<key id>[@t<time>].json`
/// of `partition`.
fn checkpoint_seq(key: &str, partition: i32) -> Option<i64> {
    let rest = key.strip_prefix(&segment::checkpoint_prefix(partition))?;
    if !rest.ends_with(CHECKPOINT_SUFFIX) || rest.contains('/') {
        return None;
    }
    let digits = rest.get(..SEQ_WIDTH)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.as_bytes().get(SEQ_WIDTH) != Some(&b'-')
    {
        return None;
    }
    digits.parse().ok()
}

/// The objects covering `range` of `partition` (`None`: the whole partition), from the keys
/// listed under the partition's segment folder and its checkpoint folder. Checkpoints that
/// seal the range are those at seqs `A..=S`, S the first checkpoint seq at or after B: each
/// signs (the tree of) every record up to its seq, so S is the one a verification of B needs.
pub fn covering(
    segment_keys: &[String],
    checkpoint_keys: &[String],
    partition: i32,
    range: Option<(i64, i64)>,
) -> Vec<Covered> {
    let (a, b) = range.unwrap_or((i64::MIN, i64::MAX));
    let mut out = Vec::new();
    for k in segment_keys {
        let Some((key, kind)) = parse_key(k) else {
            continue;
        };
        if key.partition != partition || key.last_seq < a || key.first_seq > b {
            continue;
        }
        out.push(Covered {
            key: k.clone(),
            kind: match kind {
                ObjectKind::Segment => Kind::Segment,
                ObjectKind::Manifest => Kind::Manifest,
            },
            first_seq: key.first_seq,
            last_seq: key.last_seq,
        });
    }
    let cps: Vec<(i64, &String)> = checkpoint_keys
        .iter()
        .filter_map(|k| checkpoint_seq(k, partition).map(|s| (s, k)))
        .collect();
    let seal = if range.is_none() {
        i64::MAX
    } else {
        cps.iter()
            .map(|(s, _)| *s)
            .filter(|s| *s >= b)
            .min()
            .unwrap_or(i64::MAX)
    };
    for (s, k) in cps {
        if s >= a && s <= seal {
            out.push(Covered {
                key: k.clone(),
                kind: Kind::Checkpoint,
                first_seq: s,
                last_seq: s,
            });
        }
    }
    out.sort_by(|x, y| (x.first_seq, x.kind, &x.key).cmp(&(y.first_seq, y.kind, &y.key)));
    out
}

/// The request body of PUT `?legal-hold`.
pub fn legal_hold_body(on: bool) -> String {
    format!(
        "<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></LegalHold>",
        if on { "ON" } else { "OFF" }
    )
}

/// An S3 error as an object store error, so that `Reads` retries it for the same reasons as
/// every other archive request (5xx, 408/429 and network errors: yes; other 4xx: no).
fn s3_error(doing: String, message: String) -> Error {
    Error::ObjectStore {
        doing,
        source: s3_generic(message),
    }
}

/// The archive's S3 bucket: legal holds need one.
fn open_bucket(args: &ArchiveStoreArgs) -> Result<SignedS3, Error> {
    let bucket = SignedS3::open(args).map_err(store_config_error)?;
    bucket.ok_or_else(|| {
        Error::Usage(format!(
            "a legal hold needs an S3 archive (--archive-url s3://bucket[/prefix]), not {:?}",
            args.archive_url.trim()
        ))
    })
}

/// A request that got no answer, in the words `hold` reports it (the credential provider's
/// error is named as such; the rest as the HTTP stack words them).
fn send_failure(e: SendError) -> String {
    match e {
        SendError::Credentials(e) => format!("S3 credentials: {e}"),
        SendError::Header { source, .. } => source.to_string(),
        SendError::Send(e) | SendError::Read(e) => e.to_string(),
        e @ SendError::Url { .. } => e.to_string(),
    }
}

/// One signed `?legal-hold` request on `key`; a body (PUT) goes with the integrity header S3
/// requires on PutObjectLegalHold.
async fn send_hold(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), String> {
    let headers = match &body {
        Some(b) => vec![
            (
                "content-md5",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    Md5::digest(b.as_bytes()),
                ),
            ),
            ("content-type", "application/xml".to_owned()),
        ],
        None => Vec::new(),
    };
    bucket
        .send(
            method,
            Some(key),
            "legal-hold=",
            &headers,
            body.map(bytes::Bytes::from),
        )
        .await
        .map_err(send_failure)
}

/// Sets or clears the legal hold of the current version of `key`.
async fn put_hold(bucket: &SignedS3, key: &str, on: bool) -> Result<(), Error> {
    let doing = format!("setting the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::PUT, key, Some(legal_hold_body(on)))
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return Ok(());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// The legal hold of the current version of `key`: `ON`, `OFF`, or `none` (never set).
async fn get_hold(bucket: &SignedS3, key: &str) -> Result<String, Error> {
    let doing = format!("reading the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::GET, key, None)
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return xml_text(&body, "Status")
            .map(str::to_owned)
            .ok_or_else(|| s3_error(doing, format!("no <Status> in the answer: {body}")));
    }
    if xml_text(&body, "Code") == Some("NoSuchObjectLegalHold") {
        return Ok("none".to_owned());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// An S3 error answer in the object_store client's words (which `Reads` classifies), with a
/// hint when the bucket cannot hold.
fn non_2xx(status: http::StatusCode, body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or("");
    let message = xml_text(body, "Message").unwrap_or("");
    let hint = if code == "InvalidRequest" || message.contains("Object Lock") {
        " (legal hold needs a bucket created with Object Lock enabled)"
    } else {
        ""
    };
    format!("{}{hint}", signed::non_2xx(status, body))
}

/// The range's rows in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClickHouseHold {
    /// `<database>.<table>`.
    pub table: String,
    /// Rows of the range there.
    pub rows: u64,
    /// Of those, flagged `legal_hold = 1`.
    pub held: u64,
}

/// The rows of `partition`'s `range` (`None`: all of them), as a SQL condition (integers
/// only: nothing to escape).
pub fn range_condition(partition: i32, range: Option<(i64, i64)>) -> String {
    match range {
        None => format!("chain_partition = {partition}"),
        Some((a, i64::MAX)) => format!("chain_partition = {partition} AND seq >= {a}"),
        Some((a, b)) => format!("chain_partition = {partition} AND seq >= {a} AND seq <= {b}"),
    }
}

/// The mutation that flags (`on`) or clears the range's rows; only rows not already so.
pub fn hold_mutation(table: &str, partition: i32, range: Option<(i64, i64)>, on: bool) -> String {
    let v = u8::from(on);
    format!(
        "ALTER TABLE {table} UPDATE {HOLD_COLUMN} = {v} WHERE {} AND {HOLD_COLUMN} != {v}",
        range_condition(partition, range)
    )
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Counts {
    rows: u64,
    held: u64,
}

/// Counts the range's rows and held rows; with `set`, first flags (`Some(true)`) or clears
/// them and waits until ClickHouse has applied the mutation (18.16 runs mutations in the
/// background and has no `mutations_sync`).
async fn clickhouse_hold(
    a: &HoldArgs,
    partition: i32,
    set: Option<bool>,
) -> Result<ClickHouseHold, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    let c = client(ch);
    let qualified = format!("{}.{table}", ch.clickhouse_database);
    let has_column: u64 = c
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(&ch.clickhouse_database)
        .bind(table)
        .bind(HOLD_COLUMN)
        .fetch_one()
        .await
        .map_err(Error::ch(format!("looking up {qualified}.{HOLD_COLUMN}")))?;
    if has_column == 0 {
        return Err(Error::Service(format!(
            "{qualified} has no {HOLD_COLUMN} column: start sink-clickhouse once (its migration              0007 adds it), or pass --no-clickhouse to hold the archive only"
        )));
    }
    let cond = range_condition(partition, a.seq);
    if let Some(on) = set {
        c.query(&hold_mutation(table, partition, a.seq, on))
            .execute()
            .await
            .map_err(Error::ch(format!("flagging the held rows of {qualified}")))?;
        // Done when no flag mutation of the table is pending (a count of unflagged rows could
        // stay above zero for ever while the sink keeps storing rows of an open range).
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_secs(a.clickhouse_mutation_timeout_secs);
        loop {
            let pending: u64 = c
                .query(
                    "SELECT count() FROM system.mutations WHERE database = ? AND table = ?                      AND is_done = 0 AND position(command, ?) > 0",
                )
                .bind(&ch.clickhouse_database)
                .bind(table)
                .bind(HOLD_COLUMN)
                .fetch_one()
                .await
                .map_err(Error::ch(format!("waiting for the mutation of {qualified}")))?;
            if pending == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Service(format!(
                    "the {HOLD_COLUMN} mutation of {qualified} is not applied after {} s                      (see system.mutations); run the same command again",
                    a.clickhouse_mutation_timeout_secs
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let counts: Counts = c
        .query(&format!(
            "SELECT count() AS rows, countIf({HOLD_COLUMN} = 1) AS held FROM {table} WHERE {cond}"
        ))
        .fetch_one()
        .await
        .map_err(Error::ch(format!("counting the held rows of {qualified}")))?;
    Ok(ClickHouseHold {
        table: qualified,
        rows: counts.rows,
        held: counts.held,
    })
}

/// Per-object outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectOutcome {
    #[serde(flatten)]
    pub object: Covered,
    /// `status`: ON / OFF / none; on/off: the status now set; absent with --dry-run or when
    /// the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub action: HoldAction,
    pub dry_run: bool,
    pub archive: String,
    pub partition: u32,
    /// The requested range (`null`: the whole partition).
    pub seq: Option<(i64, i64)>,
    pub counts: BTreeMap<String, u64>,
    /// Objects whose hold was set/released (on/off).
    pub changed: u64,
    pub failed: u64,
    /// The chained event (on/off, when something changed and it was published).
    pub recorded: Option<Recorded>,
    pub objects: Vec<ObjectOutcome>,
    /// The range's rows in ClickHouse after the command (absent with --no-clickhouse or when
    /// ClickHouse failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ClickHouseHold>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub event_id: String,
    pub event_type: String,
    #[serde(flatten)]
    pub published: Published,
}

fn range_text(r: Option<(i64, i64)>) -> String {
    match r {
        None => "whole partition".to_owned(),
        Some((a, i64::MAX)) => format!("{a}.."),
        Some((a, b)) => format!("{a}..={b}"),
    }
}

fn counts_of(objects: &[Covered]) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for k in ["segment", "manifest", "checkpoint"] {
        c.insert(format!("{k}s"), 0);
    }
    for o in objects {
        let k = match o.kind {
            Kind::Segment => "segments",
            Kind::Manifest => "manifests",
            Kind::Checkpoint => "checkpoints",
        };
        *c.entry(k.to_owned()).or_default() += 1;
    }
    c
}

/// What the hold event says.
#[derive(Debug)]
pub struct HoldEvent<'a> {
    pub on: bool,
    pub operator: &'a str,
    pub reason: &'a str,
    pub case_id: Option<&'a str>,
    pub partition: u32,
    pub range: Option<(i64, i64)>,
    /// The objects whose hold changed.
    pub objects: &'a [Covered],
    pub failed: u64,
    pub archive: &'a str,
    /// What happened in ClickHouse: the rows flagged, or why not.
    pub clickhouse: ClickHouseOutcome<'a>,
}

/// The ClickHouse side of a hold, for its event.
#[derive(Debug, Clone, Copy)]
pub enum ClickHouseOutcome<'a> {
    Skipped,
    Failed,
    Done(&'a ClickHouseHold),
}

/// The chained event of a hold set or released: governance, by the operator, about the
/// partition's range.
pub fn hold_event(h: &HoldEvent<'_>) -> AuditEvent {
    let counts = counts_of(h.objects);
    let covered = match (
        h.objects.iter().map(|o| o.first_seq).min(),
        h.objects.iter().map(|o| o.last_seq).max(),
    ) {
        (Some(a), Some(b)) => format!("{a}..={b}"),
        _ => String::new(),
    };
    let mut keys: Vec<&str> = h.objects.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    let listing: String = keys.iter().map(|k| format!("{k}\n")).collect();
    let count = |k: &str| counts.get(k).copied().unwrap_or(0).to_string();
    let mut attributes = vec![
        (ATTR_ARCHIVE, h.archive.to_owned()),
        (ATTR_CHECKPOINTS, count("checkpoints")),
        (ATTR_COVERED, covered),
        (ATTR_FAILED, h.failed.to_string()),
        (ATTR_MANIFESTS, count("manifests")),
        (ATTR_OBJECTS, h.objects.len().to_string()),
        (ATTR_OBJECTS_SHA256, segment::sha256_hex(listing.as_bytes())),
        (ATTR_PARTITION, h.partition.to_string()),
        (ATTR_SEGMENTS, count("segments")),
        (ATTR_SEQ_RANGE, range_text(h.range)),
    ];
    if let Some(c) = h.case_id.filter(|c| !c.is_empty()) {
        attributes.push((ATTR_CASE, c.to_owned()));
    }
    match h.clickhouse {
        ClickHouseOutcome::Skipped => attributes.push((ATTR_CLICKHOUSE, "skipped".to_owned())),
        ClickHouseOutcome::Failed => attributes.push((ATTR_CLICKHOUSE, "failed".to_owned())),
        ClickHouseOutcome::Done(ch) => {
            attributes.push((ATTR_CLICKHOUSE, ch.table.clone()));
            // on: the rows now held; off: the rows now free.
            let n = if h.on { ch.held } else { ch.rows - ch.held };
            attributes.push((ATTR_CLICKHOUSE_ROWS, n.to_string()));
        }
    }
    let target = format!("chain={}/{}", h.partition, range_text(h.range));
    let mut e = operator_event(OperatorEvent {
        id_prefix: "legal-hold",
        event_type: if h.on {
            HOLD_SET_EVENT_TYPE
        } else {
            HOLD_RELEASED_EVENT_TYPE
        },
        verb: if h.on { "hold" } else { "release" },
        description: if h.on {
            "S3 Object Lock legal hold set on the archive objects of the range; its ClickHouse \
             rows are exempt from retention TTL"
        } else {
            "S3 Object Lock legal hold released on the archive objects of the range; its \
             ClickHouse rows are subject to retention TTL again"
        },
        operator: h.operator,
        target_type: "archive_range",
        target_id: &target,
        reason: h.reason,
        attributes,
    });
    // A legal hold is not a privacy action: no regulation is implied.
    e.compliance = None;
    e
}

pub async fn run(a: &HoldArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let action = if a.check {
        HoldAction::Status
    } else {
        a.action
    };
    let changes = action != HoldAction::Status && !a.dry_run;
    let reason = a.reason.as_deref().map(str::trim).unwrap_or("");
    let operator = if changes {
        if reason.is_empty() {
            return Err(Error::Usage(
                "hold on/off: say why (--reason; recorded in the chain)".into(),
            ));
        }
        Some(who(a.held_by.as_deref(), "--held-by")?)
    } else {
        None
    };
    let partition = i32::try_from(a.partition)
        .map_err(|_| Error::Usage(format!("--partition {} is out of range", a.partition)))?;
    let reads = Reads::new(a.reads.retry_attempts);
    let bucket = open_bucket(&a.archive)?;
    let describe = a.archive.describe(Access::Read);

    // 1. The covering objects.
    let store = build_store(&a.archive, Access::Read).map_err(|e| Error::Usage(e.to_string()))?;
    let segs = list(
        &*store,
        &segment::partition_prefix(partition),
        &reads,
        &describe,
    )
    .await?;
    let cps = list(
        &*store,
        &segment::checkpoint_prefix(partition),
        &reads,
        &describe,
    )
    .await?;
    let objects = covering(&segs, &cps, partition, a.seq);
    if objects.is_empty() {
        return Err(Error::Usage(format!(
            "no archived object of partition {} covers {} in {describe}",
            a.partition,
            range_text(a.seq)
        )));
    }

    // 2. Requests, a few at a time; each one retried like any archive read.
    let on = action == HoldAction::On;
    let results: Vec<(Covered, Result<Option<String>, Error>)> = if action == HoldAction::Status {
        futures::stream::iter(objects.clone())
            .map(|o| {
                let (bucket, reads) = (&bucket, &reads);
                async move {
                    let doing = format!("reading the legal hold of {}", o.key);
                    let r = reads.run(&doing, || get_hold(bucket, &o.key)).await;
                    (o, r.map(Some))
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await
    } else if a.dry_run {
        objects.iter().cloned().map(|o| (o, Ok(None))).collect()
    } else {
        futures::stream::iter(objects.clone())
            .map(|o| {
                let (bucket, reads) = (&bucket, &reads);
                async move {
                    let doing = format!("setting the legal hold of {}", o.key);
                    let r = reads.run(&doing, || put_hold(bucket, &o.key, on)).await;
                    let set = if on { "ON" } else { "OFF" };
                    (o, r.map(|()| Some(set.to_owned())))
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await
    };
    let mut report = HoldReport {
        action,
        dry_run: a.dry_run,
        archive: describe.clone(),
        partition: a.partition,
        seq: a.seq,
        counts: counts_of(&objects),
        changed: 0,
        failed: 0,
        recorded: None,
        objects: Vec::new(),
        clickhouse: None,
        clickhouse_error: None,
    };
    let mut changed = Vec::new();
    let mut first_error = None;
    for (o, r) in results {
        match r {
            Ok(status) => {
                if changes {
                    changed.push(o.clone());
                }
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: status,
                    error: None,
                });
            }
            Err(e) => {
                report.failed += 1;
                let text = e.to_string();
                first_error.get_or_insert(e);
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: None,
                    error: Some(text),
                });
            }
        }
    }
    report.changed = changed.len() as u64;

    // 3. ClickHouse: flag or clear the rows (status / dry run: count them). Not when the
    // archive refused every object: the command then changed nothing anywhere.
    let mut ch_error = None;
    let archive_refused_all = changes && changed.is_empty();
    if !a.no_clickhouse && !archive_refused_all {
        let set = changes.then_some(on);
        match clickhouse_hold(a, partition, set).await {
            Ok(ch) => report.clickhouse = Some(ch),
            Err(e) => {
                report.clickhouse_error = Some(e.to_string());
                ch_error = Some(e);
            }
        }
    }
    let ch_outcome = match (&report.clickhouse, a.no_clickhouse) {
        (Some(ch), _) => ClickHouseOutcome::Done(ch),
        (None, _) if a.no_clickhouse => ClickHouseOutcome::Skipped,
        (None, _) => ClickHouseOutcome::Failed,
    };

    // 4. Record every change (also a partial one: the trail must show each hold that
    // changed), after the hold itself.
    let mut record_error = None;
    if let (Some(operator), false) = (&operator, changed.is_empty()) {
        let event = hold_event(&HoldEvent {
            on,
            operator,
            reason,
            case_id: a.case_id.as_deref(),
            partition: a.partition,
            range: a.seq,
            objects: &changed,
            failed: report.failed,
            archive: &describe,
            clickhouse: ch_outcome,
        });
        match publish(&a.kafka, &event).await {
            Ok(published) => {
                report.recorded = Some(Recorded {
                    event_id: event.event_id.clone(),
                    event_type: event.event_type.clone(),
                    published,
                })
            }
            Err(e) => record_error = Some(e),
        }
    }
    write_report(&report, a.json, out)?;
    let state = if on { "SET" } else { "RELEASED" };
    if let Some(e) = record_error {
        return Err(Error::Service(format!(
            "the legal hold IS {state} on {} object(s) of partition {}, but recording it in the chain failed: {e}. Run the same command again to record it (the hold itself is idempotent).",
            report.changed, a.partition
        )));
    }
    if let Some(e) = ch_error {
        return Err(Error::Service(format!(
            "the legal hold IS {state} on {} archive object(s) of partition {}{}, but its \
             ClickHouse rows were not {}: {e}. Run the same command again (it is idempotent).",
            report.changed,
            a.partition,
            if report.recorded.is_some() {
                " and recorded in the chain"
            } else {
                ""
            },
            if on { "flagged" } else { "released" }
        )));
    }
    if let Some(e) = first_error {
        let recorded = if report.recorded.is_some() {
            format!(
                "; the {} that succeeded are recorded in the chain",
                report.changed
            )
        } else {
            String::new()
        };
        return Err(Error::Archive(format!(
            "{} of {} object(s) failed (first: {e}){recorded}; run the same command again",
            report.failed,
            objects.len()
        )));
    }
    Ok(Outcome::Ok)
}

/// Keys (relative to the archive root) under `dir`.
async fn list(
    store: &dyn ObjectStore,
    dir: &str,
    reads: &Reads,
    describe: &str,
) -> Result<Vec<String>, Error> {
    let p = object_store::path::Path::from(dir.trim_end_matches('/'));
    let doing = format!("listing {dir} in {describe}");
    let metas: Vec<object_store::ObjectMeta> = reads
        .run(&doing, || {
            let (p, doing) = (&p, &doing);
            async move {
                match store.list(Some(p)).try_collect().await {
                    Ok(v) => Ok(v),
                    Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(Error::os(doing.clone())(e)),
                }
            }
        })
        .await?;
    Ok(metas.iter().map(|m| m.location.to_string()).collect())
}

fn write_report(r: &HoldReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let text = if json {
        serde_json::to_string_pretty(r)
            .map_err(|e| Error::Usage(format!("serializing the report: {e}")))?
    } else {
        let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
        let what = format!(
            "partition {} ({}): {} object(s): {} segment(s), {} manifest(s), {} checkpoint(s) in {}",
            r.partition,
            range_text(r.seq),
            r.objects.len(),
            c("segments"),
            c("manifests"),
            c("checkpoints"),
            r.archive
        );
        let mut t = match (r.action, r.dry_run) {
            (HoldAction::Status, _) => format!("legal hold status of {what}\n"),
            (_, true) => {
                let state = if r.action == HoldAction::On {
                    "ON"
                } else {
                    "OFF"
                };
                format!("dry run: would set legal hold {state} on {what}\n")
            }
            (HoldAction::On, false) => {
                format!("legal hold ON set on {} of {what}\n", r.changed)
            }
            (HoldAction::Off, false) => {
                format!("legal hold released (OFF) on {} of {what}\n", r.changed)
            }
        };
        for o in &r.objects {
            let state = match (&o.legal_hold, &o.error) {
                (_, Some(e)) => format!(" FAILED: {e}"),
                (Some(s), None) => format!(" {s}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                t,
                "  {:<10} {}{state}",
                kind_name(o.object.kind),
                o.object.key
            );
        }
        match (&r.clickhouse, &r.clickhouse_error) {
            (Some(ch), _) => {
                let _ = writeln!(
                    t,
                    "clickhouse {}: {} row(s) of the range, {} held (exempt from retention TTL)",
                    ch.table, ch.rows, ch.held
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(t, "clickhouse: FAILED: {e}");
            }
            (None, None) => {}
        }
        if let Some(rec) = &r.recorded {
            let _ = write!(
                t,
                "recorded in the chain: {} {} ({} partition {} offset {})",
                rec.event_type,
                rec.event_id,
                rec.published.topic,
                rec.published.partition,
                rec.published.offset
            );
        }
        t.trim_end().to_owned()
    };
    writeln!(out, "{text}").map_err(Error::file("writing output to", "<stdout>"))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Segment => "segment",
        Kind::Manifest => "manifest",
        Kind::Checkpoint => "checkpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(p: i32, a: i64, b: i64) -> [String; 2] {
        let k = segment::SegmentKey::new(p, "2024-06-01", a, b).expect("key");
        [k.object_key(), k.manifest_key()]
    }

    #[test]
    fn covering_takes_the_intersecting_segments_and_the_sealing_checkpoints() {
        let mut segs: Vec<String> = [seg(0, 1, 10), seg(0, 11, 20), seg(0, 21, 30)]
            .into_iter()
            .flatten()
            .collect();
        segs.push("chain=0/date=2024-06-01/foreign.txt".into());
        let cps = vec![
            segment::checkpoint_key(0, 0, "k1"),
            segment::checkpoint_key(0, 10, "k1"),
            segment::checkpoint_key(0, 20, "k1"),
            segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            segment::checkpoint_key(0, 30, "k1"),
            segment::checkpoint_key(1, 20, "k1"),
        ];
        let got = covering(&segs, &cps, 0, Some((12, 15)));
        let names: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
        let s = seg(0, 11, 20);
        assert_eq!(
            names,
            [
                s[0].as_str(),
                s[1].as_str(),
                &segment::checkpoint_key(0, 20, "k1"),
                &segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            ]
        );
        // A range across a boundary: both segments, checkpoints 10 and 20 (20 seals 11).
        let got = covering(&segs, &cps, 0, Some((10, 11)));
        assert_eq!(got.iter().filter(|c| c.kind == Kind::Segment).count(), 2);
        let cp_seqs: Vec<i64> = got
            .iter()
            .filter(|c| c.kind == Kind::Checkpoint)
            .map(|c| c.first_seq)
            .collect();
        assert_eq!(cp_seqs, [10, 20, 20]);
        // Past the last checkpoint: every checkpoint from A on (none seals it yet).
        let got = covering(&segs, &cps, 0, Some((29, 40)));
        assert_eq!(got.len(), 3, "{got:?}");
        // The whole partition: everything of partition 0, genesis checkpoint included.
        let got = covering(&segs, &cps, 0, None);
        assert_eq!(got.len(), 6 + 5);
        assert!(covering(&segs, &cps, 2, None).is_empty());
    }

    #[test]
    fn checkpoint_names() {
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "key/1"), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_heartbeat_key(3, 42, "k", 9), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "k"), 30),
            None
        );
        assert_eq!(checkpoint_seq("checkpoints/chain=3/x.json", 3), None);
        assert_eq!(checkpoint_seq("checkpoints/chain=3/a/b.json", 3), None);
    }

    #[test]
    fn a_hold_needs_an_s3_archive_and_a_readable_secret_file() {
        let folder = ArchiveStoreArgs {
            archive_url: "file:///tmp/archive".into(),
            ..Default::default()
        };
        let e = open_bucket(&folder).unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("needs an S3 archive")),
            "{e}"
        );
        let unreadable = ArchiveStoreArgs {
            archive_url: "s3://bkt".into(),
            s3_secret_access_key_file: Some("/no/such/secret-file".into()),
            ..Default::default()
        };
        let e = open_bucket(&unreadable).unwrap_err();
        assert!(matches!(e, Error::File { .. }), "{e}");
    }

    #[test]
    fn s3_answers_are_read() {
        let body = "<?xml version=\"1.0\"?><LegalHold><Status>ON</Status></LegalHold>";
        assert_eq!(xml_text(body, "Status"), Some("ON"));
        assert!(legal_hold_body(false).contains("<Status>OFF</Status>"));
        let err = non_2xx(
            http::StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidRequest</Code><Message>Bucket is missing Object Lock Configuration</Message></Error>",
        );
        assert!(
            err.contains("400") && err.contains("Object Lock enabled"),
            "{err}"
        );
        // 4xx is final, 5xx is retried, like every other archive request.
        let e = s3_error("x".into(), err);
        assert!(!worker_runtime::retry::Retryable::is_retryable(&e));
        let e = s3_error(
            "x".into(),
            non_2xx(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>SlowDown</Code></Error>",
            ),
        );
        assert!(worker_runtime::retry::Retryable::is_retryable(&e));
    }

    #[test]
    fn the_hold_event_is_valid_and_says_what_was_held() {
        let objects = covering(
            &seg(0, 11, 20),
            &[segment::checkpoint_key(0, 20, "k")],
            0,
            Some((12, 15)),
        );
        let e = hold_event(&HoldEvent {
            on: true,
            operator: "ops-1",
            reason: "litigation hold",
            case_id: Some("CASE-7"),
            partition: 0,
            range: Some((12, 15)),
            objects: &objects,
            failed: 0,
            archive: "s3://b at http://x, prefix p/",
            clickhouse: ClickHouseOutcome::Done(&ClickHouseHold {
                table: "audit.audit_events".into(),
                rows: 4,
                held: 4,
            }),
        });
        schemas::validate::validate_event(
            &e,
            &schemas::json::JsonLimits::default(),
            e.receive_time_us,
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(e.event_type, HOLD_SET_EVENT_TYPE);
        assert_eq!(e.actor.id, "ops-1");
        assert_eq!(e.reason.as_deref(), Some("litigation hold"));
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        assert_eq!(attr(ATTR_CASE), Some("CASE-7"));
        assert_eq!(attr(ATTR_PARTITION), Some("0"));
        assert_eq!(attr(ATTR_SEQ_RANGE), Some("12..=15"));
        assert_eq!(attr(ATTR_COVERED), Some("11..=20"));
        assert_eq!(attr(ATTR_OBJECTS), Some("3"));
        assert_eq!(attr(ATTR_SEGMENTS), Some("1"));
        assert_eq!(attr(ATTR_CHECKPOINTS), Some("1"));
        assert_eq!(attr(ATTR_CLICKHOUSE), Some("audit.audit_events"));
        assert_eq!(attr(ATTR_CLICKHOUSE_ROWS), Some("4"));
        let off = hold_event(&HoldEvent {
            on: false,
            operator: "ops-1",
            reason: "case closed",
            case_id: None,
            partition: 0,
            range: None,
            objects: &objects,
            failed: 0,
            archive: "a",
            clickhouse: ClickHouseOutcome::Skipped,
        });
        assert_eq!(off.event_type, HOLD_RELEASED_EVENT_TYPE);
        assert_eq!(
            off.attributes
                .iter()
                .find(|kv| kv.key == ATTR_SEQ_RANGE)
                .map(|kv| kv.value.as_str()),
            Some("whole partition")
        );
        assert!(off
            .attributes
            .iter()
            .any(|kv| kv.key == ATTR_CLICKHOUSE && kv.value == "skipped"));
    }

    #[test]
    fn the_clickhouse_flag_mutation_covers_exactly_the_range() {
        assert_eq!(
            hold_mutation("audit_events", 0, Some((12, 15)), true),
            "ALTER TABLE audit_events UPDATE legal_hold = 1 WHERE chain_partition = 0 AND seq >= 12 AND seq <= 15 AND legal_hold != 1"
        );
        assert_eq!(
            hold_mutation("audit_events", 3, Some((21, i64::MAX)), false),
            "ALTER TABLE audit_events UPDATE legal_hold = 0 WHERE chain_partition = 3 AND seq >= 21 AND legal_hold != 0"
        );
        assert_eq!(range_condition(2, None), "chain_partition = 2");
    }
}
