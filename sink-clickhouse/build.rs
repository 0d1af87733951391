//! Compiles every `queries/*.sql` into the crate (`OUT_DIR/recipes.rs`: a list of
//! `(name, include_str!(…))`), so that a new query recipe is one SQL file and nothing else.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "sql" {
                return None;
            }
            let stem = path.file_stem()?.to_str()?.to_owned();
            Some((stem, path.display().to_string()))
        })
        .collect();
    names.sort();
    let mut out = String::from("&[\n");
    for (name, path) in &names {
        println!("cargo:rerun-if-changed={path}");
        writeln!(out, "    ({name:?}, include_str!({path:?})),").expect("write to String");
    }
    out.push_str("]\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("recipes.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
