//! Result tables of `auditctl query` and `auditctl report`, and the output formats of seed 003:
//! an aligned text table, JSON (an array of objects, columns in order), CSV (RFC 4180),
//! Markdown (a pipe table) and HTML (one self-contained page: inline CSS, inline SVG charts, no
//! script and no external resource, so it opens anywhere and can be archived as evidence).

use std::fmt::Write as _;

use clap::ValueEnum;
use serde_json::Value;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Markdown,
    Html,
}

/// A query result: column names and ClickHouse types, rows of JSON values (as ClickHouse's
/// `JSONCompact` gives them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// Parses a `JSONCompact` response.
    pub fn from_json_compact(title: &str, body: &[u8]) -> Result<Self, Error> {
        let bad = |why: String| Error::Usage(format!("unexpected ClickHouse response: {why}"));
        let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let meta = v
            .get("meta")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no meta".into()))?;
        let mut columns = Vec::new();
        let mut types = Vec::new();
        for m in meta {
            columns.push(
                m.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
            types.push(
                m.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        let rows = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no data".into()))?
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect();
        Ok(Table {
            title: title.to_owned(),
            columns,
            types,
            rows,
        })
    }

    /// Index of a column by name.
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// A chart for the HTML page: one bar per label (events over time, violations per team).
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub bars: Vec<(String, f64)>,
}

/// A value as text: strings as they are, NULL as `null_text`, the rest as JSON.
fn text(v: &Value, null_text: &str) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => null_text.to_owned(),
        other => other.to_string(),
    }
}

/// Writes `tables` (and, in HTML, `charts`) in `format`. Several tables (a report's sections)
/// follow each other; in JSON they become one object keyed by title (a single table: the bare
/// array).
pub fn render(format: Format, title: &str, tables: &[Table], charts: &[Chart]) -> String {
    match format {
        Format::Table => tables
            .iter()
            .map(|t| with_heading(&t.title, tables.len(), text_table(t)))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Csv => tables
            .iter()
            .map(|t| with_heading(&t.title, tables.len(), csv(t)))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Markdown => {
            let mut out = format!("# {}\n\n", md_escape(title));
            for t in tables {
                if tables.len() > 1 {
                    let _ = write!(out, "## {}\n\n", md_escape(&t.title));
                }
                out.push_str(&markdown(t));
                out.push('\n');
            }
            out
        }
        Format::Json => {
            if let [t] = tables {
                json(t)
            } else {
                let parts: Vec<String> = tables
                    .iter()
                    .map(|t| format!("{}: {}", Value::String(t.title.clone()), json(t).trim_end()))
                    .collect();
                format!("{{{}}}\n", parts.join(",\n"))
            }
        }
        Format::Html => html(title, tables, charts),
    }
}

fn with_heading(title: &str, n: usize, body: String) -> String {
    if n > 1 {
        format!("# {title}\n{body}")
    } else {
        body
    }
}

fn text_table(t: &Table) -> String {
    let cells: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.iter().map(|v| one_line(&text(v, "NULL"))).collect())
        .collect();
    let mut widths: Vec<usize> = t.columns.iter().map(|c| c.chars().count()).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |vals: &[String]| {
        let mut s = String::new();
        for (i, (v, w)) in vals.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let _ = write!(s, "{v:<w$}");
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&t.columns);
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for r in &cells {
        out.push_str(&line(r));
    }
    let _ = writeln!(out, "({} rows)", t.rows.len());
    out
}

/// Control characters would break a line-oriented table: shown escaped.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\n' => vec!['\\', 'n'],
            '\r' => vec!['\\', 'r'],
            '\t' => vec!['\\', 't'],
            c => vec![c],
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(t: &Table) -> String {
    let mut out = String::new();
    let row = |vals: Vec<String>| {
        vals.iter()
            .map(|v| csv_field(v))
            .collect::<Vec<_>>()
            .join(",")
    };
    out.push_str(&row(t.columns.clone()));
    out.push_str("\r\n");
    for r in &t.rows {
        out.push_str(&row(r.iter().map(|v| text(v, "")).collect()));
        out.push_str("\r\n");
    }
    out
}

fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        if matches!(c, '|' | '\\' | '*' | '_' | '`' | '<' | '>' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn markdown(t: &Table) -> String {
    let mut out = String::new();
    let row = |vals: Vec<String>| format!("| {} |\n", vals.join(" | "));
    out.push_str(&row(t.columns.iter().map(|c| md_escape(c)).collect()));
    out.push_str(&row(t.columns.iter().map(|_| "---".to_owned()).collect()));
    for r in &t.rows {
        out.push_str(&row(r
            .iter()
            .map(|v| md_escape(&text(v, "NULL")))
            .collect()));
    }
    out
}

fn json(t: &Table) -> String {
    let mut out = String::from("[");
    for (i, r) in t.rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
        for (j, (c, v)) in t.columns.iter().zip(r).enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: {}", Value::String(c.clone()), v);
        }
        out.push('}');
    }
    out.push_str(if t.rows.is_empty() { "]\n" } else { "\n]\n" });
    out
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right}.null{color:#999}\
figure{margin:1em 0}figcaption{font-weight:bold}";

fn html(title: &str, tables: &[Table], charts: &[Chart]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
        t = html_escape(title)
    );
    for c in charts {
        out.push_str(&svg_bars(c));
    }
    for t in tables {
        if tables.len() > 1 || !t.title.is_empty() {
            let _ = writeln!(out, "<h2>{}</h2>", html_escape(&t.title));
        }
        out.push_str("<table><thead><tr>");
        for c in &t.columns {
            let _ = write!(out, "<th>{}</th>", html_escape(c));
        }
        out.push_str("</tr></thead><tbody>\n");
        for r in &t.rows {
            out.push_str("<tr>");
            for v in r {
                match v {
                    Value::Null => out.push_str("<td class=\"null\">NULL</td>"),
                    Value::Number(_) => {
                        let _ = write!(out, "<td class=\"num\">{v}</td>");
                    }
                    v => {
                        let _ = write!(out, "<td>{}</td>", html_escape(&text(v, "")));
                    }
                }
            }
            out.push_str("</tr>\n");
        }
        let _ = writeln!(out, "</tbody></table><p>{} rows</p>", t.rows.len());
    }
    out.push_str("</body></html>\n");
    out
}

/// A horizontal bar chart as inline SVG (no script, no external resource).
pub fn svg_bars(c: &Chart) -> String {
    let max = c.bars.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let row_h = 22.0;
    let label_w = 200.0;
    let bar_w = 400.0;
    let h = row_h * c.bars.len() as f64 + 10.0;
    let mut out = format!(
        "<figure><figcaption>{}</figcaption>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">\n",
        html_escape(&c.title),
        label_w + bar_w + 80.0,
        html_escape(&c.title)
    );
    for (i, (label, v)) in c.bars.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let w = if max > 0.0 { v / max * bar_w } else { 0.0 };
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"end\">{l}</text>\
             <rect x=\"{bx}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bh}\" fill=\"#4a7bd0\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\" font-size=\"12\">{v}</text>",
            x = label_w - 6.0,
            ty = y + 14.0,
            l = html_escape(label),
            bx = label_w,
            bh = row_h - 6.0,
            vx = label_w + w + 4.0,
        );
    }
    out.push_str("</svg></figure>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Table {
        Table {
            title: "t".into(),
            columns: vec!["name".into(), "n".into(), "note".into()],
            types: vec!["String".into(), "UInt64".into(), "Nullable(String)".into()],
            rows: vec![
                vec![json!("a,b \"q\""), json!(3), Value::Null],
                vec![json!("<x>|y"), json!(10), json!("line1\nline2")],
            ],
        }
    }

    #[test]
    fn every_format_escapes() {
        let t = sample();
        let csv = render(Format::Csv, "T", std::slice::from_ref(&t), &[]);
        assert_eq!(
            csv,
            "name,n,note\r\n\"a,b \"\"q\"\"\",3,\r\n<x>|y,10,\"line1\nline2\"\r\n"
        );
        let js: Value =
            serde_json::from_str(&render(Format::Json, "T", std::slice::from_ref(&t), &[]))
                .expect("json");
        assert_eq!(js[0]["name"], json!("a,b \"q\""));
        assert_eq!(js[1]["note"], json!("line1\nline2"));
        assert_eq!(js[0]["note"], Value::Null);
        let md = render(Format::Markdown, "T", std::slice::from_ref(&t), &[]);
        assert!(
            md.contains("| \\<x\\>\\|y | 10 | line1\\\\nline2 |"),
            "{md}"
        );
        let txt = render(Format::Table, "T", std::slice::from_ref(&t), &[]);
        assert!(
            txt.contains("line1\\nline2") && txt.ends_with("(2 rows)\n"),
            "{txt}"
        );
        let html = render(
            Format::Html,
            "T <&>",
            &[t],
            &[Chart {
                title: "c".into(),
                bars: vec![("a<b".into(), 2.0), ("c".into(), 1.0)],
            }],
        );
        assert!(html.contains("<title>T &lt;&amp;&gt;</title>"));
        assert!(html.contains("&lt;x&gt;|y") && !html.contains("<x>"));
        assert!(html.contains("<svg") && html.contains("a&lt;b"));
        // Self-contained: nothing loaded from elsewhere, no script.
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn parses_json_compact() {
        let body = br#"{"meta":[{"name":"a","type":"String"},{"name":"n","type":"UInt64"}],
            "data":[["x",1],["y",2]],"rows":2}"#;
        let t = Table::from_json_compact("q", body).expect("parse");
        assert_eq!(t.columns, vec!["a", "n"]);
        assert_eq!(t.rows[1], vec![json!("y"), json!(2)]);
        assert!(Table::from_json_compact("q", b"nope").is_err());
    }
}
