//! The per-case register of legal holds, `_holds/<case>.json` in the archive: who holds what.
//!
//! An S3 legal hold is one ON/OFF switch per object version and the ClickHouse flag one bit per
//! row: neither says WHO holds. The register says it: one JSON object per case under
//! `_holds/` in the archive (beside what is held), listing each hold of the case (its
//! selection, the objects it holds, the (partition, seq) ranges of the rows it flagged). A
//! release only switches off what no other registered hold covers. The register is
//! bookkeeping for the tool; the chain is the record.

use std::collections::BTreeMap;

use object_store::ObjectStore;
use schemas::segment;
use serde::{Deserialize, Serialize};
use worker_runtime::object_store::signed::SignedS3;

use crate::error::Error;
use crate::reads::Reads;

use super::args::HoldArgs;
use super::covering::{merged, Covered};
use super::list;
use super::objects::{non_2xx, s3_error, send_signed};
use super::selection::{range_text, HoldQuery, QuerySelection};

/// Reserved folder of the case register, relative to the archive root.
pub const REGISTER_DIR: &str = "_holds";
/// Version of the register format.
pub const REGISTER_FORMAT: u32 = 1;
/// `off`: objects of the released hold kept ON because another case holds them.
pub const ATTR_KEPT_OBJECTS: &str = "audit.legal_hold.kept_objects";
/// `off`: which cases kept them, `CASE:objects` space-separated.
pub const ATTR_KEPT_BY: &str = "audit.legal_hold.kept_by_cases";
/// `off`: rows of the released hold still flagged because another case holds them.
pub const ATTR_KEPT_ROWS: &str = "audit.legal_hold.kept_clickhouse_rows";
/// `true` when no `--case` was given and the case id was derived from the selection.
pub const ATTR_CASE_DERIVED: &str = "audit.legal_hold.case_id_derived";
/// Longest case id accepted.
const MAX_CASE_LEN: usize = 200;

/// Per partition, inclusive seq ranges (`(i64::MIN, i64::MAX)`: the whole partition).
pub type RowRanges = BTreeMap<i32, Vec<(i64, i64)>>;

/// One hold of a case: what `hold on` over one selection held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredHold {
    /// The selection, canonical (keys sorted): `hold off` names the hold by it.
    pub selection: serde_json::Value,
    pub reason: String,
    pub held_by: String,
    /// RFC 3339 UTC of the first `hold on` of this selection.
    pub held_at: String,
    /// The range selection given (partition, seq), for the release event.
    pub partition: Option<u32>,
    pub seq: Option<(i64, i64)>,
    /// A query selection: what it matched.
    pub query: Option<QuerySelection>,
    /// The archive objects set ON by this hold.
    pub objects: Vec<Covered>,
    /// The ClickHouse rows it flagged (empty with --no-clickhouse).
    pub rows: RowRanges,
}

/// `_holds/<case>.json`: the active holds of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRegister {
    pub format: u32,
    pub case_id: String,
    pub holds: Vec<RegisteredHold>,
}

impl CaseRegister {
    /// This register with `hold` added; a hold of the same selection is merged into (a rerun
    /// of `on`): the objects and rows of both, the first time, reason and holder kept.
    pub fn with_hold(mut self, hold: RegisteredHold) -> Self {
        match self
            .holds
            .iter_mut()
            .find(|h| h.selection == hold.selection)
        {
            Some(h) => {
                for o in hold.objects {
                    if !h.objects.iter().any(|x| x.key == o.key) {
                        h.objects.push(o);
                    }
                }
                h.objects.sort_by(|x, y| {
                    (x.partition, x.first_seq, x.kind, &x.key).cmp(&(
                        y.partition,
                        y.first_seq,
                        y.kind,
                        &y.key,
                    ))
                });
                for (p, rs) in hold.rows {
                    let e = h.rows.entry(p).or_default();
                    e.extend(rs);
                    *e = merged(e);
                }
                if hold.query.is_some() {
                    h.query = hold.query;
                }
            }
            None => self.holds.push(hold),
        }
        self
    }
}

/// The register key of a case (relative to the archive root). Characters outside
/// `[A-Za-z0-9._-]` become `_` and a hash of the id is added, so two ids never share a key;
/// the id itself is inside the object.
pub fn register_key(case_id: &str) -> String {
    let safe: String = case_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == case_id && !safe.starts_with('.') {
        format!("{REGISTER_DIR}/{safe}.json")
    } else {
        let h = segment::sha256_hex(case_id.as_bytes());
        format!("{REGISTER_DIR}/{safe}-{}.json", &h[..16])
    }
}

/// A `--case` as given: trimmed, not empty, no control characters, at most 200 characters.
pub fn check_case_id(case_id: &str) -> Result<String, Error> {
    let c = case_id.trim();
    if c.is_empty() || c.chars().count() > MAX_CASE_LEN || c.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "--case {case_id:?}: a case id is 1 to {MAX_CASE_LEN} printable characters"
        )));
    }
    Ok(c.to_owned())
}

/// The case id of a hold given no `--case`: `selection-` and 16 hex digits of the SHA-256 of
/// the canonical selection, so the same selection always names the same case.
pub fn derived_case_id(selection: &serde_json::Value) -> String {
    let h = segment::sha256_hex(selection.to_string().as_bytes());
    format!("selection-{}", &h[..16])
}

/// The selection of the command line, canonical: a range `{"chain_partition":P,"seq":"A..=B"}`,
/// a query as [`HoldQuery::canonical`] (resolving it in ClickHouse is not needed to name it).
pub fn selection_of(a: &HoldArgs) -> serde_json::Value {
    if a.is_query() {
        let partition = a.partition.and_then(|p| i32::try_from(p).ok());
        HoldQuery::new(&a.query, partition, a.seq, a.from, a.to).canonical()
    } else {
        serde_json::json!({
            "chain_partition": a.partition,
            "seq": range_text(a.seq),
        })
    }
}

/// The rows of `ranges` as a SQL condition (integers only: nothing to escape).
pub fn rows_sql(ranges: &RowRanges) -> String {
    let mut parts = Vec::new();
    for (p, rs) in ranges {
        let rs = merged(rs);
        if rs.is_empty() {
            continue;
        }
        if rs.iter().any(|&(a, b)| a == i64::MIN && b == i64::MAX) {
            parts.push(format!("(chain_partition = {p})"));
            continue;
        }
        let seqs: Vec<String> = rs
            .iter()
            .map(|&(a, b)| match (a, b) {
                (i64::MIN, b) => format!("seq <= {b}"),
                (a, i64::MAX) => format!("seq >= {a}"),
                (a, b) if a == b => format!("seq = {a}"),
                (a, b) => format!("(seq >= {a} AND seq <= {b})"),
            })
            .collect();
        parts.push(format!(
            "(chain_partition = {p} AND ({}))",
            seqs.join(" OR ")
        ));
    }
    if parts.is_empty() {
        "0".to_owned()
    } else {
        parts.join(" OR ")
    }
}

/// Do two row sets share a (partition, seq)?
pub fn rows_meet(x: &RowRanges, y: &RowRanges) -> bool {
    x.iter().any(|(p, xs)| {
        y.get(p).is_some_and(|ys| {
            xs.iter()
                .any(|&(a, b)| ys.iter().any(|&(c, d)| a <= d && c <= b))
        })
    })
}

/// What releasing one hold does, given every other active hold (of other cases, and the
/// other selections of the same case).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Release {
    /// Objects no other hold covers: set OFF.
    pub release: Vec<Covered>,
    /// Objects another hold covers: left ON, with the cases holding them.
    pub kept: Vec<(Covered, Vec<String>)>,
    /// Per case, how many of the hold's objects it keeps ON.
    pub kept_by: BTreeMap<String, u64>,
    /// The rows to clear: the hold's, minus every other hold's.
    pub clear_rows_sql: String,
}

/// The release of `mine` against `others` (case id, hold): objects by set difference of
/// their keys, rows by excluding every other hold's ranges.
pub fn release_of(mine: &RegisteredHold, others: &[(&str, &RegisteredHold)]) -> Release {
    let mut r = Release::default();
    for o in &mine.objects {
        let mut by: Vec<String> = others
            .iter()
            .filter(|(_, h)| h.objects.iter().any(|x| x.key == o.key))
            .map(|(c, _)| (*c).to_owned())
            .collect();
        by.sort();
        by.dedup();
        if by.is_empty() {
            r.release.push(o.clone());
        } else {
            for c in &by {
                *r.kept_by.entry(c.clone()).or_default() += 1;
            }
            r.kept.push((o.clone(), by));
        }
    }
    let mut other_rows: RowRanges = BTreeMap::new();
    for (_, h) in others {
        for (p, rs) in &h.rows {
            other_rows.entry(*p).or_default().extend(rs.iter().copied());
        }
    }
    let mine_sql = rows_sql(&mine.rows);
    r.clear_rows_sql = if other_rows.values().all(Vec::is_empty) {
        mine_sql
    } else {
        format!("({mine_sql}) AND NOT ({})", rows_sql(&other_rows))
    };
    r
}

/// `B:3 C:1`.
pub(super) fn kept_by_text(kept_by: &BTreeMap<String, u64>) -> String {
    kept_by
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which case an `off` releases: `--case` if given; else the one case holding this selection
/// (none: nothing to release; several: the operator must say which).
pub fn case_for_off(
    registers: &[CaseRegister],
    selection: &serde_json::Value,
    given: Option<&str>,
) -> Result<Option<String>, Error> {
    if let Some(c) = given {
        return Ok(Some(check_case_id(c)?));
    }
    let cases: Vec<&str> = registers
        .iter()
        .filter(|r| r.holds.iter().any(|h| &h.selection == selection))
        .map(|r| r.case_id.as_str())
        .collect();
    match cases.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_owned())),
        many => Err(Error::Usage(format!(
            "several cases hold the selection {selection}: {}; say which with --case",
            many.join(", ")
        ))),
    }
}

/// GETs or PUTs or DELETEs a register object with the archive's signed client.
async fn register_request(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), Error> {
    let doing = format!("{method} {key}");
    send_signed(bucket, method, key, "", body, "application/json")
        .await
        .map_err(|e| s3_error(doing, e))
}

/// Every register of the archive (a listing, then each object).
pub(super) async fn read_registers(
    bucket: &SignedS3,
    store: &dyn ObjectStore,
    reads: &Reads,
    describe: &str,
) -> Result<Vec<CaseRegister>, Error> {
    let keys = list(store, REGISTER_DIR, reads, describe).await?;
    let mut out = Vec::new();
    for key in keys.iter().filter(|k| k.ends_with(".json")) {
        let doing = format!("reading the hold register {key}");
        let got = reads
            .run(&doing, || async {
                let (status, body) = register_request(bucket, http::Method::GET, key, None).await?;
                if status == http::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !status.is_success() {
                    return Err(s3_error(doing.clone(), non_2xx(status, &body)));
                }
                Ok(Some(body))
            })
            .await?;
        // Gone between the listing and the read: released meanwhile.
        let Some(body) = got else { continue };
        let reg: CaseRegister = serde_json::from_str(&body).map_err(|e| {
            Error::Archive(format!(
                "the hold register {key} is not readable ({e}): fix or remove it by hand \
                 (the chain has every hold and release)"
            ))
        })?;
        out.push(reg);
    }
    out.sort_by(|x, y| x.case_id.cmp(&y.case_id));
    Ok(out)
}

/// Writes (some holds) or removes (none) a case's register.
pub(super) async fn write_register(
    bucket: &SignedS3,
    reads: &Reads,
    reg: &CaseRegister,
) -> Result<(), Error> {
    let key = register_key(&reg.case_id);
    let doing = format!("writing the hold register {key}");
    let body = if reg.holds.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string_pretty(reg)
                .map_err(|e| Error::Archive(format!("{doing}: {e}")))?,
        )
    };
    reads
        .run(&doing, || async {
            let method = if body.is_some() {
                http::Method::PUT
            } else {
                http::Method::DELETE
            };
            let (status, text) = register_request(bucket, method, &key, body.clone()).await?;
            // A DELETE of what is not there is done.
            if status.is_success() || (body.is_none() && status == http::StatusCode::NOT_FOUND) {
                Ok(())
            } else {
                Err(s3_error(doing.clone(), non_2xx(status, &text)))
            }
        })
        .await
}

/// A case and what of a selection it holds, for `status` and the reports.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case_id: String,
    /// The selections of the case's holds.
    pub selections: Vec<serde_json::Value>,
    pub reasons: Vec<String>,
    pub held_by: Vec<String>,
    pub held_at: Vec<String>,
    /// Objects of this command's selection the case holds.
    pub objects: u64,
    /// Does the case hold rows of this command's selection?
    pub rows: bool,
}

/// The cases whose holds cover some of `objects` or `rows`.
pub(super) fn cases_covering(
    registers: &[CaseRegister],
    objects: &[Covered],
    rows: &RowRanges,
) -> Vec<CaseSummary> {
    let mut out = Vec::new();
    for reg in registers {
        let keys: std::collections::BTreeSet<&str> = reg
            .holds
            .iter()
            .flat_map(|h| h.objects.iter().map(|o| o.key.as_str()))
            .collect();
        let n = objects
            .iter()
            .filter(|o| keys.contains(o.key.as_str()))
            .count() as u64;
        let meets = reg.holds.iter().any(|h| rows_meet(&h.rows, rows));
        if n == 0 && !meets {
            continue;
        }
        out.push(CaseSummary {
            case_id: reg.case_id.clone(),
            selections: reg.holds.iter().map(|h| h.selection.clone()).collect(),
            reasons: reg.holds.iter().map(|h| h.reason.clone()).collect(),
            held_by: reg.holds.iter().map(|h| h.held_by.clone()).collect(),
            held_at: reg.holds.iter().map(|h| h.held_at.clone()).collect(),
            objects: n,
            rows: meets,
        });
    }
    out
}

/// Now, RFC 3339 UTC.
pub(super) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::covering::Kind;

    fn held(selection: &str, objects: &[&str], rows: &[(i32, i64, i64)]) -> RegisteredHold {
        let mut r: RowRanges = BTreeMap::new();
        for &(p, a, b) in rows {
            r.entry(p).or_default().push((a, b));
        }
        RegisteredHold {
            selection: serde_json::json!({ "s": selection }),
            reason: "r".into(),
            held_by: "ops".into(),
            held_at: "2026-01-01T00:00:00Z".into(),
            partition: Some(0),
            seq: None,
            query: None,
            objects: objects
                .iter()
                .enumerate()
                .map(|(i, k)| Covered {
                    key: (*k).to_owned(),
                    partition: 0,
                    kind: Kind::Segment,
                    first_seq: i as i64,
                    last_seq: i as i64,
                })
                .collect(),
            rows: r,
        }
    }

    #[test]
    fn releasing_one_case_keeps_what_another_case_holds() {
        let a = held("a", &["s1", "s2", "cp20"], &[(0, 1, 20)]);
        let b = held("b", &["s2", "cp20", "s3"], &[(0, 11, 30)]);
        let c = held("c", &["s2"], &[(1, 1, 5)]);
        let r = release_of(&a, &[("B", &b), ("C", &c)]);
        let released: Vec<&str> = r.release.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(released, ["s1"]);
        let kept: Vec<(&str, Vec<String>)> = r
            .kept
            .iter()
            .map(|(o, by)| (o.key.as_str(), by.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("s2", vec!["B".to_owned(), "C".to_owned()]),
                ("cp20", vec!["B".to_owned()])
            ]
        );
        assert_eq!(
            r.kept_by,
            BTreeMap::from([("B".to_owned(), 2), ("C".to_owned(), 1)])
        );
        assert_eq!(
            r.clear_rows_sql,
            "((chain_partition = 0 AND ((seq >= 1 AND seq <= 20)))) AND NOT ((chain_partition = 0 AND ((seq >= 11 AND seq <= 30))) OR (chain_partition = 1 AND ((seq >= 1 AND seq <= 5))))"
        );
        // Alone, everything goes.
        let r = release_of(&a, &[]);
        assert_eq!(r.release.len(), 3);
        assert!(r.kept.is_empty() && r.kept_by.is_empty());
        assert_eq!(
            r.clear_rows_sql,
            "(chain_partition = 0 AND ((seq >= 1 AND seq <= 20)))"
        );
    }

    #[test]
    fn row_ranges_as_sql_and_overlap() {
        let m = BTreeMap::from([
            (0, vec![(i64::MIN, i64::MAX)]),
            (1, vec![(5, 5), (7, 9), (8, 12), (20, i64::MAX)]),
            (2, vec![]),
        ]);
        assert_eq!(
            rows_sql(&m),
            "(chain_partition = 0) OR (chain_partition = 1 AND (seq = 5 OR (seq >= 7 AND seq <= 12) OR seq >= 20))"
        );
        assert_eq!(rows_sql(&BTreeMap::new()), "0");
        let x = BTreeMap::from([(1, vec![(3, 4)])]);
        assert!(!rows_meet(&x, &BTreeMap::from([(1, vec![(5, 9)])])));
        assert!(!rows_meet(&x, &BTreeMap::from([(0, vec![(3, 4)])])));
        assert!(rows_meet(&x, &BTreeMap::from([(1, vec![(4, 9)])])));
        assert!(
            rows_meet(&BTreeMap::from([(0, vec![(3, 4)])]), &m),
            "whole partition"
        );
        assert!(!rows_meet(&x, &m));
    }

    #[test]
    fn a_rerun_of_on_merges_into_the_case_s_register() {
        let reg = CaseRegister {
            format: REGISTER_FORMAT,
            case_id: "A".into(),
            holds: Vec::new(),
        };
        let first = held("x", &["s1", "s2"], &[(0, 1, 5)]);
        let reg = reg.with_hold(first.clone());
        let reg = reg.with_hold(held("x", &["s2", "s3"], &[(0, 4, 9)]));
        assert_eq!(reg.holds.len(), 1);
        let keys: Vec<&str> = reg.holds[0]
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(keys, ["s1", "s2", "s3"]);
        assert_eq!(reg.holds[0].rows, BTreeMap::from([(0, vec![(1, 9)])]));
        assert_eq!(reg.holds[0].held_at, first.held_at);
        let reg = reg.with_hold(held("y", &["s9"], &[]));
        assert_eq!(reg.holds.len(), 2);
        // It round-trips through its JSON (the register object).
        let text = serde_json::to_string(&reg).expect("json");
        let back: CaseRegister = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, reg);
    }

    #[test]
    fn case_ids_name_their_register_and_selections_name_a_case() {
        assert_eq!(register_key("LIT-2024.17_a"), "_holds/LIT-2024.17_a.json");
        let odd = register_key("Doe v. Roe/2024");
        assert!(odd.starts_with("_holds/Doe_v._Roe_2024-") && odd.ends_with(".json"));
        assert_ne!(register_key("a/b"), register_key("a_b"), "{odd}");
        assert_ne!(register_key(".."), "_holds/...json");
        assert!(check_case_id("  ").is_err());
        assert!(check_case_id("a\nb").is_err());
        assert_eq!(check_case_id(" C-1 ").ok().as_deref(), Some("C-1"));
        let sel = serde_json::json!({"chain_partition": 0, "seq": "1..=5"});
        let d = derived_case_id(&sel);
        assert!(d.starts_with("selection-") && d.len() == "selection-".len() + 16);
        assert_eq!(d, derived_case_id(&sel.clone()));
        let regs = vec![
            CaseRegister {
                format: 1,
                case_id: "A".into(),
                holds: vec![held("x", &[], &[])],
            },
            CaseRegister {
                format: 1,
                case_id: "B".into(),
                holds: vec![held("x", &[], &[]), held("y", &[], &[])],
            },
        ];
        let x = serde_json::json!({"s": "x"});
        let y = serde_json::json!({"s": "y"});
        let z = serde_json::json!({"s": "z"});
        assert_eq!(case_for_off(&regs, &y, None).ok(), Some(Some("B".into())));
        assert_eq!(case_for_off(&regs, &z, None).ok(), Some(None));
        assert!(
            matches!(case_for_off(&regs, &x, None), Err(Error::Usage(m)) if m.contains("A, B"))
        );
        assert_eq!(
            case_for_off(&regs, &x, Some("A")).ok(),
            Some(Some("A".into()))
        );
    }
}
