//! `auditctl query`: run one of the analyst query recipes that ship with the ClickHouse sink
//! (`sink-clickhouse/queries/*.sql`, compiled in; see `sink_clickhouse::queries` for the header
//! format) and print the result. `--list` shows each recipe with its parameters.
//!
//! Values given with `--param k=v` are checked against the recipe's declared types and bound
//! with the `clickhouse` crate's `bind` (escaped by the client), never spliced into the SQL
//! text; this works on every server, including 18.16, which has no server-side parameters.
//!
//! Personal fields print as stored (ciphertext, tokens), those of erased subjects as
//! `[erased]`; `--reveal --reason …` decrypts them, audited (crate::query_reveal).

use std::fmt::Write as _;

use clap::Args;
use clickhouse::Client;
use sink_clickhouse::queries::{self, Param, Recipe};

use crate::cli::ClickHouseArgs;
use crate::error::Error;
use crate::output::{self, Format, Table};
use crate::Outcome;

/// Recipes read the sink's tables by their names (`audit_events`, `audit_checkpoints`,
/// `audit_forks`) in --clickhouse-database; the --*-table options do not apply to them.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// The recipe to run (see --list).
    #[arg(required_unless_present = "list")]
    pub recipe: Option<String>,
    /// List the recipes with their parameters.
    #[arg(long, conflicts_with = "recipe")]
    pub list: bool,
    /// A recipe parameter, `name=value` (repeatable). DateTime values are UTC:
    /// `2024-06-01`, `2024-06-01 10:00:00` or `2024-06-01T10:00:00Z`.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Output format.
    #[arg(long, value_enum, env = "AUDITCTL_FORMAT", default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// `--reveal --reason …` and the key store options (crate::query_reveal).
    #[command(flatten)]
    pub reveal: crate::query_reveal::RevealOpts,
}

/// A client for the audit database (plain identifiers only; http(s) URL).
pub fn client(args: &ClickHouseArgs) -> Result<Client, Error> {
    let db = &args.clickhouse_database;
    let ident = !db.is_empty()
        && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !db.starts_with(|c: char| c.is_ascii_digit());
    if !ident {
        return Err(Error::Usage(format!(
            "--clickhouse-database {db:?} is not a plain identifier"
        )));
    }
    if !(args.clickhouse_url.starts_with("http://") || args.clickhouse_url.starts_with("https://"))
    {
        return Err(Error::Usage(format!(
            "--clickhouse-url {:?} must be an http:// or https:// URL",
            args.clickhouse_url
        )));
    }
    let mut client = Client::default()
        .with_url(&args.clickhouse_url)
        .with_database(db)
        .with_user(&args.clickhouse_user)
        .with_validation(false)
        // Numbers as JSON numbers (not quoted 64-bit strings), so JSON/CSV output keeps types.
        .with_setting("output_format_json_quote_64bit_integers", "0");
    if let Some(pw) = args.clickhouse_password.as_ref().filter(|p| !p.is_empty()) {
        client = client.with_password(pw.expose());
    }
    Ok(client)
}

/// Runs `sql` with `binds` (one per `?`, in order) and returns the result as a table.
pub async fn fetch_table(
    client: &Client,
    title: &str,
    sql: &str,
    binds: &[Param],
) -> Result<Table, Error> {
    let mut q = client.query(sql);
    for b in binds {
        q = match b {
            Param::Str(s) => q.bind(s.as_str()),
            Param::UInt(v) => q.bind(*v),
            Param::Int(v) => q.bind(*v),
        };
    }
    let body = q
        .fetch_bytes("JSONCompact")
        .map_err(Error::ch(format!("running {title}")))?
        .collect()
        .await
        .map_err(Error::ch(format!("reading the result of {title}")))?;
    Table::from_json_compact(title, &body)
}

/// Runs recipe `recipe` with `params` (`name`, `value` as text).
pub async fn run_recipe(
    client: &Client,
    recipe: &Recipe,
    params: &[(String, String)],
) -> Result<Table, Error> {
    let (sql, binds) = recipe
        .bind(params)
        .map_err(|e| Error::Usage(e.to_string()))?;
    fetch_table(client, recipe.name, &sql, &binds).await
}

/// The `--list` text: each recipe, its summary and parameters.
pub fn listing() -> Result<String, Error> {
    let mut out = String::new();
    for r in queries::RECIPES.iter() {
        let h = r.header().map_err(|e| Error::Usage(e.to_string()))?;
        let _ = writeln!(out, "{}\n    {}", r.name, h.summary());
        for p in &h.params {
            let default = p
                .default
                .as_deref()
                .map(|d| format!(" (default {d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    --param {}=<{}>{default}  {}",
                p.name,
                p.ty.name(),
                p.doc
            );
        }
    }
    Ok(out)
}

/// `--param k=v`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected name=value"))
}

pub async fn run(args: &QueryArgs, out: &mut dyn std::io::Write) -> Result<Outcome, Error> {
    let text = if args.list {
        listing()?
    } else {
        let name = args
            .recipe
            .as_deref()
            .ok_or_else(|| Error::Usage("name a recipe, or --list".into()))?;
        let recipe = queries::recipe(name).ok_or_else(|| {
            let names: Vec<&str> = queries::RECIPES.iter().map(|r| r.name).collect();
            Error::Usage(format!(
                "unknown recipe {name:?} (recipes: {})",
                names.join(", ")
            ))
        })?;
        crate::query_reveal::check(&args.reveal)?;
        let client = client(&args.clickhouse)?;
        let mut table = run_recipe(&client, recipe, &args.params).await?;
        if args.reveal.reveal {
            // Chains the reveal before decrypting; on any failure nothing is printed.
            crate::query_reveal::reveal(&args.reveal, name, &args.params, &mut table).await?;
        } else {
            crate::query_reveal::redact_erased(
                &client,
                &args.clickhouse.clickhouse_database,
                &mut table,
            )
            .await?;
        }
        let summary = recipe.header().map(|h| h.summary()).unwrap_or_default();
        output::render(args.format, &format!("{name}: {summary}"), &[table], &[])
    };
    out.write_all(text.as_bytes())
        .map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_listing() {
        assert_eq!(
            parse_param("trace_id=a=b").expect("kv"),
            ("trace_id".to_owned(), "a=b".to_owned())
        );
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=x").is_err());
        let list = listing().expect("listing");
        for r in queries::RECIPES.iter() {
            assert!(list.contains(r.name), "{}", r.name);
        }
        assert!(list.contains("--param trace_id=<String>"), "{list}");
        assert!(
            list.contains("--param limit=<UInt64> (default 1000)"),
            "{list}"
        );
    }
}
