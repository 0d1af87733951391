//! `auditctl query <recipe> --reveal --reason …`: the audited path from an analyst recipe's
//! result to the plaintext of its personal fields (docs/privacy.md, "Reading").
//!
//! The recipe runs as usual; every cell holding a field ciphertext (`enc:v1:…`) is collected.
//! Before a single one is opened, one `privacy.pii_revealed` event (the recipe, its
//! parameters, the row count, the columns and the subjects' tokens, the reason and who) is
//! published to `<prefix>validated`, so the reveal is chained like any event. If that fails,
//! the command fails and prints nothing. Then each cell is opened with its subject's key:
//! plaintext, or `[erased]` when the key is gone.
//!
//! Without `--reveal` the key store is not needed: cells of subjects recorded as erased in
//! ClickHouse (`audit_erasures`, written by `auditctl erase`) print `[erased]`, every other
//! ciphertext prints as stored.

use std::collections::BTreeSet;

use clap::Args;
use clickhouse::Client;
use enrich::privacy::crypto::{self, Sealed};
use enrich::privacy::rules::Field;
use enrich::privacy::{PrivacyArgs, ERASED};
use serde_json::Value;
use worker_runtime::kafka::KafkaArgs;

use crate::erase::{
    operator_event, privacy_err, privacy_setup, publish, who, OperatorEvent, ERASURES_TABLE,
};
use crate::error::Error;
use crate::output::Table;
use crate::subject::REVEAL_EVENT_TYPE;

/// Attribute of the reveal event: the recipe that was run.
pub const REVEAL_RECIPE_ATTRIBUTE: &str = "audit.privacy.reveal_recipe";
/// Attribute of the reveal event: its parameters, `name=value` joined by `&` (as given).
pub const REVEAL_PARAMS_ATTRIBUTE: &str = "audit.privacy.reveal_params";
/// Attribute of the reveal event: how many rows the result had.
pub const REVEAL_ROWS_ATTRIBUTE: &str = "audit.privacy.reveal_rows";
/// Attribute of the reveal event: the columns holding ciphertext (comma-separated).
pub const REVEALED_FIELDS_ATTRIBUTE: &str = "audit.privacy.revealed_fields";
/// Attribute of the reveal event: the subjects' tokens (comma-separated; never plaintext).
pub const REVEALED_SUBJECTS_ATTRIBUTE: &str = "audit.privacy.revealed_subjects";

/// The reveal options of `auditctl query`.
#[derive(Debug, Clone, Args)]
pub struct RevealOpts {
    /// Decrypt the personal fields of the result. Audited: a `privacy.pii_revealed` event is
    /// chained before anything is decrypted. Needs --reason and the key store options.
    #[arg(long)]
    pub reveal: bool,
    /// Why (with --reveal; recorded in the chained reveal event).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who reads the plaintext (with --reveal). Default: $USER.
    #[arg(long = "revealed-by", env = "AUDITCTL_REVEALED_BY")]
    pub revealed_by: Option<String>,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// A ciphertext cell of a result: row, column, and its subject's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCell {
    pub row: usize,
    pub col: usize,
    pub subject_token: String,
}

/// Every cell of `t` holding a field ciphertext.
pub fn sealed_cells(t: &Table) -> Vec<SealedCell> {
    let mut out = Vec::new();
    for (row, cells) in t.rows.iter().enumerate() {
        for (col, v) in cells.iter().enumerate() {
            if let Some(s) = v.as_str().and_then(Sealed::parse) {
                out.push(SealedCell {
                    row,
                    col,
                    subject_token: s.subject_token().to_owned(),
                });
            }
        }
    }
    out
}

/// The fields a column may hold, most likely first: the field whose name is the column's
/// with `_` for `.` (the sink's naming, e.g. `actor_name` ↔ `actor.name`), then every other
/// field, for a recipe that renamed the column. Opening fails closed, so trying a wrong
/// field only costs a failed tag check.
pub fn candidate_fields(column: &str) -> Vec<String> {
    let all: Vec<String> = Field::all().iter().map(Field::name).collect();
    let (mut first, rest): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|n| n.replace('.', "_") == column);
    first.extend(rest);
    first
}

/// Replaces, without the key store, the cells of subjects that ClickHouse records as erased
/// (`audit_erasures`, written by `auditctl erase`) with `[erased]`. No erasures table: none.
pub async fn redact_erased(client: &Client, database: &str, t: &mut Table) -> Result<(), Error> {
    let cells = sealed_cells(t);
    if cells.is_empty() {
        return Ok(());
    }
    let exists: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(ERASURES_TABLE)
        .fetch_one()
        .await
        .map_err(Error::ch("looking for the erasures table".to_owned()))?;
    if exists == 0 {
        return Ok(());
    }
    let tokens: Vec<String> = cells
        .iter()
        .map(|c| c.subject_token.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let erased: Vec<String> = client
        .query(&format!(
            "SELECT DISTINCT subject_token FROM {ERASURES_TABLE} WHERE has(?, subject_token)"
        ))
        .bind(&tokens)
        .fetch_all()
        .await
        .map_err(Error::ch("reading the erasures table".to_owned()))?;
    for c in cells {
        if erased.contains(&c.subject_token) {
            t.rows[c.row][c.col] = Value::String(ERASED.to_owned());
        }
    }
    Ok(())
}

/// Checks the options before anything runs: --reveal needs --reason; the other reveal
/// options mean nothing without --reveal.
pub fn check(o: &RevealOpts) -> Result<(), Error> {
    let reason = o.reason.as_deref().map(str::trim);
    match (o.reveal, reason) {
        (true, None | Some("")) => Err(Error::Usage(
            "query --reveal: --reason is required (it is recorded in the chained reveal event)"
                .into(),
        )),
        (false, Some(_)) => Err(Error::Usage(
            "query: --reason only goes with --reveal".into(),
        )),
        _ => Ok(()),
    }
}

/// Publishes the reveal event for `t` (if it holds any ciphertext), then decrypts its cells in
/// place. Nothing is decrypted unless the event was acknowledged by the broker.
pub async fn reveal(
    o: &RevealOpts,
    recipe: &str,
    params: &[(String, String)],
    t: &mut Table,
) -> Result<(), Error> {
    let reason = o.reason.as_deref().unwrap_or_default();
    let revealed_by = who(o.revealed_by.as_deref(), "--revealed-by")?;
    let (_, keys) = privacy_setup(&o.privacy)?;
    let cells = sealed_cells(t);
    if cells.is_empty() {
        return Ok(());
    }
    let columns: BTreeSet<&str> = cells
        .iter()
        .map(|c| t.columns.get(c.col).map_or("", String::as_str))
        .collect();
    let subjects: BTreeSet<&str> = cells.iter().map(|c| c.subject_token.as_str()).collect();
    let params_text = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    // The audit record first: nothing is decrypted unless the reveal is in the chain's input.
    let event = operator_event(OperatorEvent {
        id_prefix: "reveal",
        event_type: REVEAL_EVENT_TYPE,
        verb: "reveal",
        description: "personal fields decrypted through auditctl query --reveal",
        operator: &revealed_by,
        target_type: "query_recipe",
        target_id: recipe,
        reason,
        attributes: vec![
            (REVEAL_RECIPE_ATTRIBUTE, recipe.to_owned()),
            (REVEAL_PARAMS_ATTRIBUTE, params_text),
            (REVEAL_ROWS_ATTRIBUTE, t.rows.len().to_string()),
            (
                REVEALED_FIELDS_ATTRIBUTE,
                columns.into_iter().collect::<Vec<_>>().join(","),
            ),
            (
                REVEALED_SUBJECTS_ATTRIBUTE,
                subjects.into_iter().collect::<Vec<_>>().join(","),
            ),
        ],
    });
    publish(&o.kafka, &event).await?;

    let event_col = t.columns.iter().position(|c| c == "event_id");
    for c in cells {
        let Some(key) = keys.get(&c.subject_token).await.map_err(privacy_err)? else {
            t.rows[c.row][c.col] = Value::String(ERASED.to_owned());
            continue;
        };
        // The ciphertext is bound to its event and field: without the event id (a recipe that
        // does not return `event_id`) it cannot be opened and is left as stored.
        let Some(event_id) = event_col
            .and_then(|i| t.rows[c.row].get(i))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        let sealed = t.rows[c.row][c.col].as_str().unwrap_or_default().to_owned();
        let column = t.columns.get(c.col).cloned().unwrap_or_default();
        let plain = candidate_fields(&column)
            .iter()
            .find_map(|f| crypto::open(&key, &event_id, f, &sealed).ok());
        // The key is there but opens none of them: not this subject's field of this event
        // (or tampered), so it is not `[erased]` either; it stays as stored.
        if let Some(p) = plain {
            t.rows[c.row][c.col] = Value::String(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: Vec<Vec<Value>>) -> Table {
        Table {
            title: "t".into(),
            columns: vec!["actor_name".into(), "event_id".into()],
            types: vec!["String".into(), "String".into()],
            rows,
        }
    }

    #[test]
    fn finds_ciphertext_cells_and_their_subjects() {
        let t = table(vec![
            vec![Value::from("enc:v1:tok-a.1:bm9uY2U:Y3Q"), Value::from("e1")],
            vec![Value::from("plain"), Value::from("e2")],
            vec![Value::Null, Value::from(3)],
        ]);
        assert_eq!(
            sealed_cells(&t),
            vec![SealedCell {
                row: 0,
                col: 0,
                subject_token: "tok-a".into()
            }]
        );
    }

    #[test]
    fn the_column_named_after_a_field_is_tried_first() {
        let c = candidate_fields("actor_name");
        assert_eq!(c[0], "actor.name");
        assert!(c.contains(&"actor.email".to_owned()));
        assert_eq!(candidate_fields("renamed").len(), c.len());
    }

    #[test]
    fn reveal_needs_a_reason() {
        use clap::Parser;
        #[derive(Parser)]
        struct A {
            #[command(flatten)]
            o: RevealOpts,
        }
        let parse =
            |args: &[&str]| A::parse_from(std::iter::once("x").chain(args.iter().copied())).o;
        assert!(matches!(check(&parse(&["--reveal"])), Err(Error::Usage(_))));
        assert!(matches!(
            check(&parse(&["--reveal", "--reason", " "])),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            check(&parse(&["--reason", "r"])),
            Err(Error::Usage(_))
        ));
        assert!(check(&parse(&["--reveal", "--reason", "r"])).is_ok());
        assert!(check(&parse(&[])).is_ok());
    }
}
