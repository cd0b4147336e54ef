//! Attempts: each pod that runs a staged job is one attempt, numbered 1, 2, … A retried Job
//! (`backoffLimit > 0`) or a pod re-created after an eviction is a new attempt, so an earlier
//! attempt's results can never be taken for a later one's.
//!
//! In S3, under `jobs/<id>/attempts/<n>/`: `claim.json` (written once, `If-None-Match: *`, by the
//! first ferry container of the pod that needs a number: init, or the sidecar when init never
//! ran), `workdir/…` (the workdir files the attempt changed) and `done.json` (written last); its
//! outputs under `outputs/<id>/<n>-<claim>/…`, keys no other pod writes.
//! In the pod, a small state directory shared by init and the sidecar only (an emptyDir of its
//! own, `FERRY_STATE_DIR`) holds `attempt.json`: the number, and whether init completed.

use crate::env;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{self, Manifest};
use crate::store::Store;
use crate::transfer::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The most attempts one job may have (a bound on the probes, far above any backoffLimit).
pub const MAX: u32 = 1000;

/// What the pod's state directory says about this pod's attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub attempt: u32,
    /// `true` once init placed every file; only then may the sidecar record changes.
    pub init_complete: bool,
    /// The claim's random name (see [`Claim`]); empty in a marker of an older ferry.
    #[serde(default)]
    pub claim: String,
}

/// One pod's claim of an attempt: its number, and a random name no other claim has. The name is
/// part of the attempt's output keys, so even a pod of an earlier staging of the same job id
/// (which numbers its attempts from 1 again) never writes where this pod's outputs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub attempt: u32,
    pub name: String,
}

/// The pod's state directory: `FERRY_STATE_DIR` (`inject` sets it), else, for local runs,
/// `ferry-state-<uid>/<job>-<hash of the manifest URL and --root>` in the temporary directory (never
/// inside the roots, which hold only the job's files).
pub fn state_dir(job: &Job) -> PathBuf {
    if let Some(dir) = std::env::var_os(env::STATE_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let root = job
        .root
        .as_deref()
        .map(Path::to_string_lossy)
        .unwrap_or_default();
    let id = format!("{}\n{root}", job.url);
    let name = format!(
        "{}-{:016x}",
        job.manifest.job_id,
        crate::checksum::of_bytes(id.as_bytes())
    );
    // Our UID (the owner of /proc/self): users of one machine never share the folder.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let user = format!("ferry-state-{uid}");
    std::env::temp_dir().join(user).join(name)
}

fn marker_path(dir: &Path) -> PathBuf {
    dir.join("attempt.json")
}

/// The pod's marker; `None` when no ferry container of this pod claimed an attempt yet.
pub fn read_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = marker_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::manifest(
                path.display().to_string(),
                format!("not an attempt marker: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, "read attempt marker", e)),
    }
}

pub fn write_marker(dir: &Path, m: &Marker) -> Result<()> {
    let bytes = serde_json::to_vec(&m).expect("a marker serialises");
    write_atomic(&marker_path(dir), &bytes, 0o600).map_err(|e| match e {
        Error::Io { path, what, source } => Error::Io {
            path,
            what,
            source: std::io::Error::new(
                source.kind(),
                format!("{source}; set {} to a writable directory", env::STATE_DIR),
            ),
        },
        e => e,
    })
}

fn claim_key(job: &Job, n: u32) -> String {
    claim_key_of(&job.manifest, n)
}

fn claim_key_of(m: &Manifest, n: u32) -> String {
    format!(
        "{}/claim.json",
        manifest::attempt_key(&m.prefix, &m.job_id, n)
    )
}

/// `stage` of a job id that ran before: its old attempts are forgotten (claims and records,
/// newest first), so a new pod is attempt 1 and `collect` never returns an old run's result.
/// Re-stage a job only when no pod of its earlier staging still runs.
pub async fn forget_all(store: &Store, m: &Manifest) -> Result<u32> {
    let mut n = 0;
    while n < MAX && store.head(&claim_key_of(m, n + 1)).await?.is_some() {
        n += 1;
    }
    for k in (1..=n).rev() {
        let base = manifest::attempt_key(&m.prefix, &m.job_id, k);
        store.delete(&format!("{base}/done.json")).await?;
        store.delete(&claim_key_of(m, k)).await?;
    }
    if n > 0 {
        tracing::info!(job = %m.job_id, "stage: forgot {n} attempts of an earlier staging of this job");
    }
    Ok(n)
}

/// Claims the next free attempt number in S3 (`If-None-Match: *`: two pods never get one
/// number) under a new random name, and returns both.
pub async fn claim(job: &Job, by: &str) -> Result<Claim> {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let name = new_name();
    for n in 1..=MAX {
        let body = serde_json::json!({ "attempt": n, "by": by, "pod": host, "claim": name });
        let bytes = serde_json::to_vec(&body).expect("a claim serialises");
        if job.store.put_small_new(&claim_key(job, n), bytes).await? {
            tracing::info!(job = %job.manifest.job_id, "{by}: this pod is attempt {n} (claim {name})");
            return Ok(Claim { attempt: n, name });
        }
    }
    Err(Error::Config(format!(
        "job {} already has {MAX} attempts; stage it again under a new job id",
        job.manifest.job_id
    )))
}

/// 16 random hex digits (from the kernel; the time and process id where it has no urandom).
fn new_name() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{now}-{}", std::process::id());
        bytes = crate::checksum::of_bytes(seed.as_bytes()).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name under which attempt `n` was claimed (empty: a claim of an older ferry); `None` when
/// attempt `n` was never claimed.
pub async fn claim_name(job: &Job, n: u32) -> Result<Option<String>> {
    let Some(bytes) = job.store.get_small(&claim_key(job, n)).await? else {
        return Ok(None);
    };
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(Some(body["claim"].as_str().unwrap_or_default().to_string()))
}

/// Whether attempt `n` was claimed.
pub async fn exists(job: &Job, n: u32) -> Result<bool> {
    Ok(job.store.head(&claim_key(job, n)).await?.is_some())
}

/// The newest claimed attempt (0: none yet). One HEAD per attempt.
pub async fn latest(job: &Job) -> Result<u32> {
    let mut n = 0;
    while n < MAX && exists(job, n + 1).await? {
        n += 1;
    }
    Ok(n)
}

/// Where attempt `n` uploads the workdir files it changed.
pub fn workdir_key(job: &Job, n: u32) -> String {
    let m = &job.manifest;
    format!("{}/workdir", manifest::attempt_key(&m.prefix, &m.job_id, n))
}

/// Where attempt `n`'s packs of small workdir files go.
pub fn packs_key(job: &Job, n: u32) -> String {
    let m = &job.manifest;
    format!("{}/packs", manifest::attempt_key(&m.prefix, &m.job_id, n))
}

/// Where the pod that claimed attempt `n` as `claim` uploads the output declared at `abs` (its
/// own key: see [`manifest::outputs_key`]).
pub fn output_key(job: &Job, n: u32, claim: &str, abs: &str) -> String {
    let m = &job.manifest;
    manifest::output_key(&m.prefix, &m.job_id, n, claim, abs)
}

/// Attempt `n`'s completion record.
pub fn done_key(job: &Job, n: u32) -> String {
    let m = &job.manifest;
    format!(
        "{}/done.json",
        manifest::attempt_key(&m.prefix, &m.job_id, n)
    )
}
