//! The ClickHouse side of a hold: the `legal_hold` flag that exempts rows from every
//! retention TTL rule of sink-clickhouse, set or cleared by an `ALTER TABLE … UPDATE`
//! mutation, and the counts of a selection's rows and held rows. ClickHouse 18.16 applies
//! mutations in the background, so the flag is only reported once the mutation is done.

use serde::Serialize;

use crate::erase::{client, events_table};
use crate::error::Error;

use super::args::HoldArgs;
use super::selection::Cond;

/// The ClickHouse column that spares a row from retention TTL (sink-clickhouse 0007).
pub const HOLD_COLUMN: &str = "legal_hold";

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
    hold_mutation_where(table, &range_condition(partition, range), on)
}

/// The mutation that flags (`on`) or clears the rows of `condition`; only rows not already so.
pub fn hold_mutation_where(table: &str, condition: &str, on: bool) -> String {
    let v = u8::from(on);
    format!("ALTER TABLE {table} UPDATE {HOLD_COLUMN} = {v} WHERE ({condition}) AND {HOLD_COLUMN} != {v}")
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Counts {
    rows: u64,
    held: u64,
}

/// Counts the range's rows and held rows; with `set`, first flags (`Some((true, rows))`) or
/// clears (`Some((false, rows))`: `off` clears only what no other case holds) rows and waits until ClickHouse has applied the mutation (18.16 runs mutations in the
/// background and has no `mutations_sync`).
pub(super) async fn clickhouse_hold(
    a: &HoldArgs,
    rows: &Cond,
    set: Option<(bool, &Cond)>,
) -> Result<ClickHouseHold, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    // A release names every other case's row ranges: allow long conditions (default 256 KiB).
    let c = client(ch).with_setting("max_query_size", "16777216");
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
            "{qualified} has no {HOLD_COLUMN} column: start sink-clickhouse once (its migration 0007 adds it), or pass --no-clickhouse to hold the archive only"
        )));
    }
    if let Some((on, target)) = set {
        target
            .bind_all(c.query(&hold_mutation_where(table, &target.sql, on)))
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
    let counts: Counts = rows
        .bind_all(c.query(&format!(
            "SELECT count() AS rows, countIf({HOLD_COLUMN} = 1) AS held FROM {table} WHERE {}",
            rows.sql
        )))
        .fetch_one()
        .await
        .map_err(Error::ch(format!("counting the held rows of {qualified}")))?;
    Ok(ClickHouseHold {
        table: qualified,
        rows: counts.rows,
        held: counts.held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clickhouse_flag_mutation_covers_exactly_the_range() {
        assert_eq!(
            hold_mutation("audit_events", 0, Some((12, 15)), true),
            "ALTER TABLE audit_events UPDATE legal_hold = 1 WHERE (chain_partition = 0 AND seq >= 12 AND seq <= 15) AND legal_hold != 1"
        );
        assert_eq!(
            hold_mutation("audit_events", 3, Some((21, i64::MAX)), false),
            "ALTER TABLE audit_events UPDATE legal_hold = 0 WHERE (chain_partition = 3 AND seq >= 21) AND legal_hold != 0"
        );
        assert_eq!(range_condition(2, None), "chain_partition = 2");
    }
}
