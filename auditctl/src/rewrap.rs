//! `auditctl rewrap-subject-keys`: the second half of a master-key rotation (docs/privacy.md,
//! "Rotating the master key").
//!
//! Rotation starts by running every enrich with the new master key as the current one and the
//! old one retired (`--privacy-retired-master-key-file old=FILE`): new subject keys are wrapped
//! by the new master, old ones still open. This command then re-wraps every stored subject key
//! under the current master, so that no stored key needs the old master any more and it can be
//! destroyed. The subject keys themselves (their bytes and key refs) never change, so every
//! ciphertext in the chain stays readable, and no cache anywhere has to be flushed.
//!
//! Safety against a concurrent `auditctl erase`, which overwrites a key object with a
//! tombstone: each object is written back only if it is still exactly what was read, by a
//! conditional put (`If-Match` on the ETag read with the bytes; SeaweedFS and S3 answer 412
//! otherwise). An erasure between the read and the write therefore makes the write fail, and
//! the object is read again (now a tombstone: skipped). An erasure after the write overwrites
//! the re-wrapped key as it would the old one. A tombstone is never written over, and nothing
//! is ever deleted: an object no given master key opens is reported (exit 1) and left as it
//! is. A local-folder key store cannot write conditionally: there the command needs
//! `--exclusive` (the operator guarantees that nothing else writes the store meanwhile) and
//! narrows, but cannot close, the window by comparing the bytes again just before writing.
//!
//! Idempotent and resumable: keys already under the current master are skipped, so a second
//! run (or a run after an interrupted one) only does what is left. Nothing printed ever holds
//! key material: objects are named by their path (the pseudonymous subject token) and the
//! master keys by their ids.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use enrich::privacy::crypto::{self, WrappedKey};
use enrich::privacy::keys::NamedKey;
use enrich::privacy::store::{StoreLocation, Tombstone};
use enrich::privacy::{PrivacyArgs, PrivacyError};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;

use crate::erase::privacy_err;
use crate::error::Error;
use crate::Outcome;

/// Where the subject key objects are in the key store (`subjects/<subject token>.json`, as
/// `enrich::privacy::store` writes them).
const SUBJECTS_DIR: &str = "subjects";

/// How often one object is read again after a concurrent change before it is reported failed.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Args)]
pub struct RewrapArgs {
    /// Read and check every key, report what would be re-wrapped, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Key objects processed at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Only for a key store in a local folder, which cannot write conditionally: confirm that
    /// no `auditctl erase` and no enrich uses the store while this runs (an erasure racing the
    /// rewrap could otherwise be undone). Not needed (and not used) for S3.
    #[arg(long)]
    pub exclusive: bool,
    /// The key store and the master keys: the current one (`--privacy-master-key-file`,
    /// `--privacy-master-key-id`) wraps, the retired ones
    /// (`--privacy-retired-master-key-file ID=FILE`) open what they wrapped.
    #[command(flatten)]
    pub privacy: PrivacyArgs,
}

/// What happened to one key object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectOutcome {
    /// Re-wrapped under the current master (or, in a dry run, would be).
    Rewrapped { from_master: String },
    /// Already wrapped by the current master, and it opens with it.
    AlreadyCurrent,
    /// An erased subject: left alone.
    Tombstone,
    /// Listed, then gone before it could be read: nothing to re-wrap.
    Vanished,
    /// Changed between the read and the write (an erasure, another rewrap, a new key): the
    /// write was refused; read it again.
    ChangedMeanwhile,
    /// Not re-wrapped, left untouched: why (never key material).
    Failed(String),
}

/// One object as read: its bytes and the version the conditional write must still find.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: ObjPath,
    pub bytes: Bytes,
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// How a re-wrapped key is written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Nothing is written.
    DryRun,
    /// `PutMode::Update` with the ETag read (S3: `If-Match`).
    Conditional,
    /// Local folder with `--exclusive`: the bytes are compared again just before an overwrite.
    Exclusive,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RewrapReport {
    pub key_store: String,
    pub current_master_key_id: String,
    pub dry_run: bool,
    /// Objects listed under `subjects/`.
    pub objects: u64,
    /// Re-wrapped under the current master (dry run: would be).
    pub rewrapped: u64,
    pub already_current: u64,
    pub tombstones_skipped: u64,
    pub failed: u64,
    /// Listed but deleted before they could be read.
    pub vanished: u64,
    /// Conditional writes refused because the object had changed since it was read (each such
    /// object was read again and handled by what it had become).
    pub concurrent_changes: u64,
    /// Re-wrapped keys by the master key that had wrapped them.
    pub rewrapped_from: BTreeMap<String, u64>,
    /// Objects left untouched, with why.
    pub failures: Vec<Failure>,
    /// Every stored key now opens with the current master alone: the retired master keys can
    /// be destroyed (never true for a dry run).
    pub retired_masters_destroyable: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub object: String,
    pub reason: String,
}

pub async fn run(a: &RewrapArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let masters = master_keys(&a.privacy)?;
    let url = a.privacy.privacy_key_store_url.clone();
    if url.is_empty() {
        return Err(Error::Usage(
            "rewrap-subject-keys: no --privacy-key-store-url".into(),
        ));
    }
    let conditional = url.starts_with("s3://");
    let mode = match (a.dry_run, conditional, a.exclusive) {
        (true, _, _) => WriteMode::DryRun,
        (false, true, _) => WriteMode::Conditional,
        (false, false, true) => WriteMode::Exclusive,
        (false, false, false) => {
            return Err(Error::Usage(format!(
                "rewrap-subject-keys: the key store {url} is a local folder, which cannot write \
                 conditionally; stop every enrich and `auditctl erase` using it and pass \
                 --exclusive"
            )))
        }
    };
    let store = StoreLocation {
        url: url.clone(),
        s3_endpoint: a.privacy.privacy_key_store_s3_endpoint.clone(),
        s3_access_key_id: a
            .privacy
            .privacy_key_store_s3_access_key_id
            .expose()
            .to_owned(),
        s3_secret_access_key: a
            .privacy
            .privacy_key_store_s3_secret_access_key
            .expose()
            .to_owned(),
    }
    .build()
    .map_err(privacy_err)?;
    let mut report = rewrap_all(store, &masters, mode, usize::from(a.concurrency)).await?;
    report.key_store = url;
    let text = if a.json {
        serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Usage(format!("serializing the rewrap report: {e}")))?
    } else {
        human(&report)
    };
    writeln!(out, "{text}").map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(if report.failed > 0 {
        Outcome::Findings
    } else {
        Outcome::Ok
    })
}

/// The current master key (required) and the retired ones, with distinct ids: `unwrap` picks
/// the master by the id a wrapped key names, so two keys with one id would make that choice
/// ambiguous.
fn master_keys(p: &PrivacyArgs) -> Result<Vec<NamedKey>, Error> {
    let current = p
        .master_key()
        .map_err(privacy_err)?
        .ok_or_else(|| privacy_err(PrivacyError::NoMasterKey))?;
    let mut masters = vec![current];
    for entry in p
        .privacy_retired_master_key_files
        .iter()
        .filter(|e| !e.trim().is_empty())
    {
        let (id, path) = entry.split_once('=').ok_or_else(|| {
            Error::Usage(
                "--privacy-retired-master-key-file: expected ID=FILE (the file name, never the \
                 key)"
                    .into(),
            )
        })?;
        let key = NamedKey::load(
            id.trim(),
            Some(std::path::Path::new(path.trim())),
            "",
            "retired master key",
        )
        .map_err(privacy_err)?
        .ok_or_else(|| Error::Usage(format!("retired master key {id}: empty")))?;
        if masters.iter().any(|m| m.id() == key.id()) {
            return Err(Error::Usage(format!(
                "master key id {:?} given twice: every master key needs an id of its own",
                key.id()
            )));
        }
        masters.push(key);
    }
    Ok(masters)
}

/// Lists every key object and re-wraps each under `masters[0]`.
pub async fn rewrap_all(
    store: Arc<dyn ObjectStore>,
    masters: &[NamedKey],
    mode: WriteMode,
    concurrency: usize,
) -> Result<RewrapReport, Error> {
    let current = masters
        .first()
        .ok_or_else(|| privacy_err(PrivacyError::NoMasterKey))?;
    let mut paths: Vec<ObjPath> = store
        .list(Some(&ObjPath::from(SUBJECTS_DIR)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(Error::os("listing the subject key store"))?;
    paths.sort();
    let mut report = RewrapReport {
        current_master_key_id: current.id().to_owned(),
        dry_run: mode == WriteMode::DryRun,
        objects: paths.len() as u64,
        ..RewrapReport::default()
    };
    let results: Vec<(ObjPath, ObjectOutcome, u64)> = futures::stream::iter(paths)
        .map(|path| {
            let store = store.clone();
            async move {
                let mut changes = 0;
                loop {
                    let outcome = rewrap_path(store.as_ref(), &path, masters, mode).await?;
                    if outcome != ObjectOutcome::ChangedMeanwhile {
                        return Ok::<_, Error>((path, outcome, changes));
                    }
                    changes += 1;
                    if changes >= u64::from(MAX_ATTEMPTS) {
                        let why = format!("changed concurrently {changes} times; run again");
                        return Ok((path, ObjectOutcome::Failed(why), changes));
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for (path, outcome, changes) in results {
        report.concurrent_changes += changes;
        match outcome {
            ObjectOutcome::Rewrapped { from_master } => {
                report.rewrapped += 1;
                *report.rewrapped_from.entry(from_master).or_default() += 1;
            }
            ObjectOutcome::AlreadyCurrent => report.already_current += 1,
            ObjectOutcome::Tombstone => report.tombstones_skipped += 1,
            ObjectOutcome::Vanished => report.vanished += 1,
            ObjectOutcome::ChangedMeanwhile => {
                report.failed += 1;
                report.failures.push(Failure {
                    object: path.to_string(),
                    reason: "changed concurrently; run again".into(),
                });
            }
            // (The loop above turns a lasting `ChangedMeanwhile` into `Failed`.)
            ObjectOutcome::Failed(reason) => {
                report.failed += 1;
                report.failures.push(Failure {
                    object: path.to_string(),
                    reason,
                });
            }
        }
    }
    report.failures.sort_by(|a, b| a.object.cmp(&b.object));
    report.retired_masters_destroyable = !report.dry_run && report.failed == 0;
    Ok(report)
}

/// Reads one object and re-wraps it (one attempt).
pub async fn rewrap_path(
    store: &dyn ObjectStore,
    path: &ObjPath,
    masters: &[NamedKey],
    mode: WriteMode,
) -> Result<ObjectOutcome, Error> {
    match read(store, path).await? {
        None => Ok(ObjectOutcome::Vanished),
        Some(seen) => rewrap_seen(store, &seen, masters, mode).await,
    }
}

/// Reads an object with the version a conditional write must find; `None` if it is gone.
pub async fn read(store: &dyn ObjectStore, path: &ObjPath) -> Result<Option<Seen>, Error> {
    let got = match store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::os(format!("reading {path}"))(e)),
    };
    let (e_tag, version) = (got.meta.e_tag.clone(), got.meta.version.clone());
    let bytes = got
        .bytes()
        .await
        .map_err(Error::os(format!("reading {path}")))?;
    Ok(Some(Seen {
        path: path.clone(),
        bytes,
        e_tag,
        version,
    }))
}

/// What `seen` holds, decided without writing: the re-wrapped object to write, or the outcome.
pub fn decide(seen: &Seen, masters: &[NamedKey]) -> Result<(WrappedKey, String), ObjectOutcome> {
    let current = masters
        .first()
        .ok_or_else(|| ObjectOutcome::Failed("no master key".into()))?;
    if !seen.path.as_ref().ends_with(".json") {
        return Err(ObjectOutcome::Failed(
            "not a subject key object (subjects/<subject token>.json)".into(),
        ));
    }
    let wrapped: WrappedKey = match serde_json::from_slice(&seen.bytes) {
        Ok(w) => w,
        Err(_) => {
            return Err(match serde_json::from_slice::<Tombstone>(&seen.bytes) {
                Ok(t) if t.erased => ObjectOutcome::Tombstone,
                _ => ObjectOutcome::Failed("neither a wrapped subject key nor a tombstone".into()),
            })
        }
    };
    if wrapped.master_key_id == current.id() {
        return match crypto::unwrap(std::slice::from_ref(current), &wrapped) {
            Ok(_) => Err(ObjectOutcome::AlreadyCurrent),
            Err(_) => Err(ObjectOutcome::Failed(format!(
                "names the current master key id {:?} but does not open with it (another key \
                 with the same id, or corrupt)",
                current.id()
            ))),
        };
    }
    let key = crypto::unwrap(masters, &wrapped).map_err(|e| {
        ObjectOutcome::Failed(match e {
            PrivacyError::UnknownMasterKey(id) => {
                format!("wrapped by master key {id:?}, which was not given")
            }
            _ => format!(
                "does not open with the master key {:?} given (other key bytes, or corrupt)",
                wrapped.master_key_id
            ),
        })
    })?;
    let rewrapped = crypto::wrap(current, &key)
        .map_err(|_| ObjectOutcome::Failed("the system random generator failed".into()))?;
    // Before anything is written: the new object must open with the current master alone and
    // give the very same subject key (a probe sealed with the old key opens with the new).
    let probe = crypto::seal(&key, "rewrap-check", "probe", "rewrap-check");
    let same = crypto::unwrap(std::slice::from_ref(current), &rewrapped)
        .ok()
        .and_then(|k| crypto::open(&k, "rewrap-check", "probe", &probe).ok())
        .is_some_and(|p| p == "rewrap-check");
    if !same || rewrapped.key_ref != wrapped.key_ref {
        return Err(ObjectOutcome::Failed(
            "the re-wrapped key did not check out; left as it is".into(),
        ));
    }
    Ok((rewrapped, wrapped.master_key_id))
}

/// Re-wraps what was read in `seen` and writes it back only if the object is unchanged.
pub async fn rewrap_seen(
    store: &dyn ObjectStore,
    seen: &Seen,
    masters: &[NamedKey],
    mode: WriteMode,
) -> Result<ObjectOutcome, Error> {
    let (rewrapped, from_master) = match decide(seen, masters) {
        Ok(w) => w,
        Err(outcome) => return Ok(outcome),
    };
    let body = serde_json::to_vec(&rewrapped)
        .map_err(|e| Error::Usage(format!("serializing a wrapped key: {e}")))?;
    let written = match mode {
        WriteMode::DryRun => true,
        WriteMode::Conditional => put_if_unchanged(store, seen, body).await?,
        WriteMode::Exclusive => {
            // No conditional put on a local folder: compare again right before the overwrite.
            // `--exclusive` promised that nothing writes meanwhile; this only narrows the
            // window if the promise is broken.
            match read(store, &seen.path).await? {
                Some(now) if now.bytes == seen.bytes => {
                    store
                        .put(&seen.path, PutPayload::from(body))
                        .await
                        .map_err(Error::os(format!("writing {}", seen.path)))?;
                    true
                }
                _ => false,
            }
        }
    };
    Ok(if written {
        ObjectOutcome::Rewrapped { from_master }
    } else {
        ObjectOutcome::ChangedMeanwhile
    })
}

/// Writes `body` over `seen.path` only if the object still has the ETag (and version) read
/// with `seen`: `Ok(false)` when it changed (or vanished) meanwhile, nothing written.
pub async fn put_if_unchanged(
    store: &dyn ObjectStore,
    seen: &Seen,
    body: Vec<u8>,
) -> Result<bool, Error> {
    if seen.e_tag.is_none() {
        // Without an ETag there is nothing to make the write conditional on: refuse rather
        // than overwrite blind (a tombstone written meanwhile would be undone).
        return Err(Error::Service(format!(
            "the key store returned no ETag for {}: cannot write it conditionally",
            seen.path
        )));
    }
    let opts = PutOptions {
        mode: PutMode::Update(UpdateVersion {
            e_tag: seen.e_tag.clone(),
            version: seen.version.clone(),
        }),
        ..PutOptions::default()
    };
    match store
        .put_opts(&seen.path, PutPayload::from(body), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
            Ok(false)
        }
        Err(e) => Err(Error::os(format!("writing {}", seen.path))(e)),
    }
}

fn human(r: &RewrapReport) -> String {
    let mut s = format!(
        "subject key store {}: current master key {}{}\n",
        r.key_store,
        r.current_master_key_id,
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    let from = if r.rewrapped_from.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = r
            .rewrapped_from
            .iter()
            .map(|(m, n)| format!("{n} from {m}"))
            .collect();
        format!(" ({})", parts.join(", "))
    };
    let verb = if r.dry_run {
        "to re-wrap"
    } else {
        "re-wrapped"
    };
    s.push_str(&format!("  objects              {}\n", r.objects));
    s.push_str(&format!("  {verb:<20} {}{from}\n", r.rewrapped));
    s.push_str(&format!("  already current      {}\n", r.already_current));
    s.push_str(&format!(
        "  tombstones skipped   {}\n",
        r.tombstones_skipped
    ));
    s.push_str(&format!("  failed               {}\n", r.failed));
    if r.vanished > 0 {
        s.push_str(&format!("  vanished             {}\n", r.vanished));
    }
    if r.concurrent_changes > 0 {
        s.push_str(&format!(
            "  concurrent changes   {}\n",
            r.concurrent_changes
        ));
    }
    for f in &r.failures {
        s.push_str(&format!("FAILED {}: {}\n", f.object, f.reason));
    }
    s.push_str(if r.retired_masters_destroyable {
        "every stored subject key opens with the current master key alone: the retired master \
         keys can be destroyed"
    } else if r.failed > 0 {
        "some keys were left as they are (above): keep the retired master keys"
    } else {
        "dry run: keep the retired master keys"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrich::privacy::crypto::SubjectKey;

    fn m(id: &str, b: u8) -> NamedKey {
        NamedKey::new(id, [b; 32]).expect("key")
    }

    fn seen(path: &str, body: Vec<u8>) -> Seen {
        Seen {
            path: ObjPath::from(path),
            bytes: Bytes::from(body),
            e_tag: Some("e".into()),
            version: None,
        }
    }

    #[test]
    fn decides_by_what_the_object_holds() {
        let (m1, m2, m9) = (m("m1", 1), m("m2", 2), m("m9", 9));
        let key = SubjectKey::new("t1.s.g".into(), [7; 32]);
        let under = |master: &NamedKey| {
            serde_json::to_vec(&crypto::wrap(master, &key).expect("wrap")).expect("json")
        };
        let masters = [m2.clone(), m1.clone()];
        let p = "subjects/t1.s.json";
        // Under the retired master: re-wrapped under the current one, same key ref and key.
        let (w, from) = decide(&seen(p, under(&m1)), &masters).expect("rewrap");
        assert_eq!((w.master_key_id.as_str(), from.as_str()), ("m2", "m1"));
        let back = crypto::unwrap(std::slice::from_ref(&m2), &w).expect("opens with m2");
        let sealed = crypto::seal(&key, "e1", "actor.email", "ada@example.com");
        assert_eq!(
            crypto::open(&back, "e1", "actor.email", &sealed).ok(),
            Some("ada@example.com".to_owned())
        );
        // No key material in what is printed about it.
        assert!(!format!("{w:?}{back:?}").contains("[7, 7"));
        assert_eq!(
            decide(&seen(p, under(&m2)), &masters).err(),
            Some(ObjectOutcome::AlreadyCurrent)
        );
        let tomb = br#"{"version":1,"erased":true}"#.to_vec();
        assert_eq!(
            decide(&seen(p, tomb), &masters).err(),
            Some(ObjectOutcome::Tombstone)
        );
        // Unknown master, wrong bytes under a known id, the current id with other bytes,
        // garbage, a stray name: failed, never rewritten.
        for (body, want) in [
            (under(&m9), "which was not given"),
            (
                under(&m("m1", 3)),
                "does not open with the master key \"m1\"",
            ),
            (under(&m("m2", 4)), "names the current master key id"),
            (b"{}".to_vec(), "neither"),
        ] {
            match decide(&seen(p, body), &masters) {
                Err(ObjectOutcome::Failed(why)) => assert!(why.contains(want), "{why}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        assert!(matches!(
            decide(&seen("subjects/x.tmp", under(&m1)), &masters),
            Err(ObjectOutcome::Failed(_))
        ));
    }

    #[tokio::test]
    async fn a_local_folder_needs_exclusive_and_then_rewraps() {
        let dir = tempfile::tempdir().expect("tmp");
        let (m1, m2) = (m("m1", 1), m("m2", 2));
        let loc = StoreLocation {
            url: dir.path().display().to_string(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
        };
        let old = enrich::privacy::store::SubjectKeys::new(
            loc.build().expect("store"),
            vec![m1.clone()],
            std::time::Duration::from_secs(1),
        );
        old.get_or_create("t1.a").await.expect("key");
        let before = std::fs::read(dir.path().join("subjects/t1.a.json")).expect("object");
        let dir_s = dir.path().display().to_string();
        let m1_file = dir.path().join("m1.key");
        std::fs::write(&m1_file, "01".repeat(32)).expect("m1 file");
        let argv = |extra: &[&str]| {
            let mut v = vec![
                "auditctl".to_owned(),
                "rewrap-subject-keys".to_owned(),
                "--privacy-master-key".to_owned(),
                "02".repeat(32),
                "--privacy-master-key-id".to_owned(),
                "m2".to_owned(),
                "--privacy-retired-master-key-file".to_owned(),
                format!("m1={}", m1_file.display()),
                "--privacy-key-store-url".to_owned(),
                dir_s.clone(),
            ];
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            <crate::Cli as clap::Parser>::parse_from(v)
        };
        let mut out = Vec::new();
        let res = crate::run(argv(&[]), &mut out).await;
        assert_eq!(crate::exit_code(&res), crate::EXIT_USAGE, "{res:?}");
        assert_eq!(
            std::fs::read(dir.path().join("subjects/t1.a.json")).expect("object"),
            before,
            "nothing written without --exclusive"
        );
        let res = crate::run(argv(&["--exclusive", "--json"]), &mut out).await;
        assert_eq!(crate::exit_code(&res), crate::EXIT_OK, "{res:?}");
        let fresh = enrich::privacy::store::SubjectKeys::new(
            loc.build().expect("store"),
            vec![m2],
            std::time::Duration::from_secs(1),
        );
        assert!(fresh.get("t1.a").await.expect("opens with m2").is_some());
    }
}
