//! Analyst query recipes (`queries/*.sql`), shipped with the sink so that they are tested
//! against the same schema the sink writes.
//!
//! Parameters are written `{name:Type}`, ClickHouse's own query-parameter syntax: on servers
//! that have it (19.x and later) run a recipe as is, e.g.
//! `clickhouse-client --param_trace_id=abc --queries-file queries/trace_timeline.sql`. For older
//! servers (the local 18.16) [`render`] substitutes escaped literals client-side.

use crate::error::Error;

#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! recipe {
    ($name:literal) => {
        Recipe {
            name: $name,
            sql: include_str!(concat!("../queries/", $name, ".sql")),
        }
    };
}

pub const RECIPES: &[Recipe] = &[
    recipe!("counts_by_type"),
    recipe!("trace_timeline"),
    recipe!("user_activity"),
    recipe!("policy_denials"),
    recipe!("team_events_per_day"),
    recipe!("chain_heads"),
    recipe!("original_labels"),
];

pub fn recipe(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Str(String),
    UInt(u64),
}

/// The names of `{name:Type}` parameters in `sql`, in order of first use.
pub fn parameters(sql: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in placeholders(sql) {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

fn placeholders(sql: &str) -> impl Iterator<Item = (&str, std::ops::Range<usize>)> {
    let mut pos = 0;
    std::iter::from_fn(move || loop {
        let start = pos + sql[pos..].find('{')?;
        let end = start + sql[start..].find('}')?;
        pos = end + 1;
        let inner = &sql[start + 1..end];
        if let Some((name, ty)) = inner.split_once(':') {
            let ident =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if ident(name) && ident(ty) {
                return Some((name, start..end + 1));
            }
        }
    })
}

/// Substitutes every `{name:Type}` of `sql` with its value as a SQL literal.
pub fn render(sql: &str, params: &[(&str, Param)]) -> Result<String, Error> {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for (name, range) in placeholders(sql) {
        let value = params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::Config(format!("query parameter {name:?} not given")))?;
        out.push_str(&sql[last..range.start]);
        match value {
            Param::UInt(v) => out.push_str(&v.to_string()),
            Param::Str(s) => {
                out.push('\'');
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\'' => out.push_str("\\'"),
                        _ => out.push(c),
                    }
                }
                out.push('\'');
            }
        }
        last = range.end;
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let sql = "SELECT 1 WHERE a = {a:String} AND b < {n:UInt64} AND c = {a:String}";
        assert_eq!(parameters(sql), vec!["a", "n"]);
        let r = render(
            sql,
            &[("a", Param::Str("x'\\y".into())), ("n", Param::UInt(5))],
        )
        .expect("render");
        assert_eq!(
            r,
            "SELECT 1 WHERE a = 'x\\'\\\\y' AND b < 5 AND c = 'x\\'\\\\y'"
        );
        assert!(render(sql, &[]).is_err());
    }

    #[test]
    fn every_recipe_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("queries dir")
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
            .collect();
        files.sort();
        let mut listed: Vec<String> = RECIPES.iter().map(|r| r.name.to_owned()).collect();
        listed.sort();
        assert_eq!(files, listed);
    }
}
