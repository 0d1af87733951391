//! The fault battery's quick form (issue 6), as CI runs it: the `fault-battery` binary starts a
//! stack of its own on other ports (it restarts servers, so never the shared one), kills each
//! worker kind a few times, restarts each server once, holds a broker outage longer than the
//! workers' lowered `message.timeout.ms`, SIGSTOPs a worker past its session and deletes the
//! head of a chained partition; then checks exactly-once in both stores, the chain from each
//! store, the dead letters and readiness after each fault. Its own output (the fault table and
//! every finding) is the test's output.

use crate::procs::binary;
use anyhow::{ensure, Context as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_battery_quick_form_passes() -> anyhow::Result<()> {
    let bin = binary("fault-battery")?;
    let report = std::env::temp_dir().join(format!("fault-battery-{}.json", std::process::id()));
    let out = tokio::process::Command::new(&bin)
        .args(["--quick", "--report"])
        .arg(&report)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "the fault battery failed ({}); its report: {}",
        out.status,
        report.display()
    );
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )?;
    ensure!(json["passed"] == true, "report says not passed");
    let _ = std::fs::remove_file(&report);
    Ok(())
}
