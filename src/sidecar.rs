//! `ferry sidecar`: job pod, beside the tool. Waits for the tool to end, uploads the outputs and
//! the workdir changes, and writes `done.json` last.

use crate::attempt;
use crate::cli::SidecarMode;
use crate::config::Transfer;
use crate::done::{Done, FailedOutput, ModeChange, Reason};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{Dataset, Entry, Kind, is_within};
use crate::output::{self, Found};
use crate::pack;
use crate::transfer::{self, Upload};
use crate::tree;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Wait {
    pub mode: SidecarMode,
    /// Give up after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// How long the workdir must stay unchanged after the exit-code file appears.
    pub quiet: Duration,
    /// shared-pid: how long to wait for a first tool process before deciding it never ran.
    pub start_grace: Duration,
}

const POLL: Duration = Duration::from_millis(200);

/// Waits for the tool, then uploads what this pod's attempt produced and writes its
/// `done.json`. `None`: a newer attempt of the job exists, so this one recorded nothing.
pub async fn run(job: &Job, wait: &Wait, cfg: Transfer) -> Result<Option<Done>> {
    let started = Instant::now();
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("/", "install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("/", "install SIGINT handler", e))?;
    tracing::info!(job = %job.manifest.job_id, "sidecar: mode={}, waiting for the tool to end", wait.mode);
    let reason = match wait.mode {
        SidecarMode::File => wait_file(job, wait, &mut term).await?,
        SidecarMode::SharedPid => wait_shared_pid(job, wait, &mut term).await?,
        SidecarMode::Native => wait_native(wait, &mut term).await,
    };
    let waited = started.elapsed();
    // From here a signal means "stop now": no done.json, the next run finishes the job.
    let finish = finish(job, reason, waited, cfg);
    tokio::select! {
        r = finish => r,
        _ = term.recv() => Err(Error::Interrupted("SIGTERM during upload")),
        _ = int.recv() => Err(Error::Interrupted("SIGINT during upload")),
    }
}

/// Decides what this pod may record: only a pod whose init completed records the job's
/// changes; otherwise `done.json` says `init-failed` and nothing else.
async fn finish(
    job: &Job,
    reason: Reason,
    waited: Duration,
    cfg: Transfer,
) -> Result<Option<Done>> {
    let state = attempt::state_dir(job);
    let marker = attempt::read_marker(&state)?;
    let (claim, init_complete) = match marker {
        Some(m) => (
            attempt::Claim {
                attempt: m.attempt,
                name: m.claim,
            },
            m.init_complete,
        ),
        // init never ran in this pod (or failed before it claimed a number).
        None => (attempt::claim(job, "sidecar").await?, false),
    };
    let n = claim.attempt;
    if !init_complete {
        tracing::warn!(
            job = %job.manifest.job_id,
            "sidecar: ferry init did not complete in this pod (attempt {n}); recording nothing but that"
        );
        let mut record = Done::empty(&job.manifest.job_id, n, None, Reason::InitFailed);
        record.claim = claim.name;
        return write_done(job, record).await.map(Some);
    }
    let exit_code = read_exit_code(&job.exit_code_file());
    let reason = match (reason, exit_code) {
        (Reason::Exited, None) => Reason::Crashed,
        (r, _) => r,
    };
    tracing::info!(
        job = %job.manifest.job_id,
        "tool ended after {:.1} s: {}, reason {reason}, attempt {n}; uploading",
        waited.as_secs_f64(),
        exit_code.map_or("no exit code".into(), |c| format!("exit code {c}")),
    );
    upload_results(job, &claim, exit_code, reason, waited, cfg).await
}

/// The code in the exit-code file, if it holds one (Galaxy writes `echo $? > file`). The file
/// is the job's: read only if it is a regular file (never a symlink or a FIFO), at most 64
/// bytes, and its content is never logged.
pub fn read_exit_code(path: &Path) -> Option<i32> {
    use std::io::Read;
    let mut text = String::new();
    let read = crate::tree::open_regular(path).and_then(|f| f.take(64).read_to_string(&mut text));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("{}: not read as an exit code ({e})", path.display());
            None
        }
        Ok(_) => match text.trim().parse::<i32>() {
            Ok(c) => Some(c),
            Err(_) => {
                tracing::warn!("{}: does not hold an exit code", path.display());
                None
            }
        },
    }
}

fn deadline(wait: &Wait) -> tokio::time::Instant {
    let far = Duration::from_secs(100 * 365 * 86400);
    tokio::time::Instant::now() + wait.timeout.unwrap_or(far)
}

/// `file` mode: the exit-code file appears (inotify, with polling), then the workdir stays quiet.
async fn wait_file(job: &Job, wait: &Wait, term: &mut Signal) -> Result<Reason> {
    let ec = job.exit_code_file();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = watch(ec.parent().unwrap_or(Path::new("/")), move || {
        let _ = tx.send(());
    });
    let end = deadline(wait);
    while std::fs::symlink_metadata(&ec).is_err() {
        tokio::select! {
            _ = rx.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = term.recv() => return Ok(Reason::Evicted),
            _ = tokio::time::sleep_until(end) => return Ok(Reason::Timeout),
        }
    }
    wait_quiet(job, wait.quiet).await?;
    Ok(Reason::Exited)
}

/// Watches `dir` (non-recursive) and calls `wake` on every event; `None` if inotify is unavailable
/// (the caller polls anyway).
fn watch(dir: &Path, wake: impl Fn() + Send + 'static) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |_: notify::Result<notify::Event>| wake()).ok()?;
    match w.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::debug!("no inotify on {} ({e}); polling", dir.display());
            None
        }
    }
}

/// Returns once the workdir listing (paths, sizes, mtimes) has not changed for `quiet`.
async fn wait_quiet(job: &Job, quiet: Duration) -> Result<()> {
    let wd = job.workdir();
    let mut last = tree::scan(&wd, &|_, _, _| false)?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        tokio::time::sleep(POLL.min(quiet)).await;
        let now = tree::scan(&wd, &|_, _, _| false)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

/// `native` mode: the kubelet sends SIGTERM once the tool container has exited.
async fn wait_native(wait: &Wait, term: &mut Signal) -> Reason {
    tokio::select! {
        _ = term.recv() => Reason::Exited,
        _ = tokio::time::sleep_until(deadline(wait)) => Reason::Timeout,
    }
}

/// `shared-pid` mode: the tool's processes (other cgroups than ours, not PID 1) appear, then are gone.
async fn wait_shared_pid(job: &Job, wait: &Wait, term: &mut Signal) -> Result<Reason> {
    let me = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("/proc/self/cgroup", "read", e))?;
    let ec = job.exit_code_file();
    let end = deadline(wait);
    let started = Instant::now();
    let mut seen = false;
    let mut ec_since: Option<Instant> = None;
    loop {
        let others = tool_processes(&me);
        if others > 0 && !seen {
            tracing::info!("sidecar: tool running ({others} processes)");
        }
        seen |= others > 0;
        if seen && others == 0 {
            return Ok(Reason::Exited);
        }
        // A tool that ended before we first looked leaves only its exit-code file; one that
        // never started, or was killed at once (OOM at start), leaves nothing at all.
        if !seen && std::fs::symlink_metadata(&ec).is_ok() {
            let t = *ec_since.get_or_insert_with(Instant::now);
            if t.elapsed() >= wait.quiet {
                return Ok(Reason::Exited);
            }
        } else if !seen && started.elapsed() >= wait.start_grace {
            tracing::warn!(
                "sidecar: no tool process and no exit-code file after {} s: the tool never started or ended at once",
                wait.start_grace.as_secs()
            );
            return Ok(Reason::Crashed);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = term.recv() => return Ok(Reason::Evicted),
            _ = tokio::time::sleep_until(end) => return Ok(Reason::Timeout),
        }
    }
}

/// Processes of other containers: in another cgroup than ours, and not PID 1 (pause/catatonit).
fn tool_processes(my_cgroup: &str) -> usize {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != me)
        .filter(|pid| {
            // A process that vanished between the listing and this read is gone: not counted.
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c != my_cgroup && !is_zombie(*pid))
        })
        .count()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// What the job did to its workdir, against the staged entries.
struct Changes {
    /// New, or changed in kind, bytes or symlink target: uploaded.
    changed: Vec<Entry>,
    deleted: Vec<String>,
    /// Same bytes, other mode: nothing to upload.
    mode_changes: Vec<ModeChange>,
}

fn workdir_changes(job: &Job) -> Result<Changes> {
    let m = &job.manifest;
    let staged: HashMap<&str, &Entry> = m
        .workdir
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    // Outputs travel on their own; the exit-code file is written by collect itself.
    let apart: Vec<String> = m
        .outputs
        .iter()
        .map(|o| o.path.as_str())
        .chain([m.exit_code_file.as_str()])
        .filter_map(|p| job.rel_in_workdir(p))
        .collect();
    let outside = |p: &str| !apart.iter().any(|o| is_within(p, o));
    // A file of the staged size and mtime has the staged bytes: not read again.
    let needs_crc = |rel: &str, size: u64, mtime: i64| {
        staged
            .get(rel)
            .is_none_or(|s| s.kind != Kind::File || s.size != size || s.mtime_ns != mtime)
    };
    let current: Vec<Entry> = tree::scan(&job.workdir(), &needs_crc)?
        .into_iter()
        .filter(|e| outside(&e.path))
        .collect();
    let mut changes = Changes {
        changed: vec![],
        deleted: vec![],
        mode_changes: vec![],
    };
    for e in &current {
        let Some(s) = staged.get(e.path.as_str()) else {
            changes.changed.push(e.clone());
            continue;
        };
        let same_bytes = e.kind == s.kind
            && e.target == s.target
            && (e.kind != Kind::File || e.crc64nvme.is_none() || e.crc64nvme == s.crc64nvme);
        if !same_bytes {
            changes.changed.push(e.clone());
        } else if e.kind != Kind::Symlink && e.mode != s.mode {
            changes.mode_changes.push(ModeChange {
                path: e.path.clone(),
                mode: e.mode,
            });
        }
    }
    let present: HashSet<&str> = current.iter().map(|e| e.path.as_str()).collect();
    changes.deleted = m
        .workdir
        .entries
        .iter()
        .filter(|e| !present.contains(e.path.as_str()) && outside(&e.path))
        .map(|e| e.path.clone())
        .collect();
    Ok(changes)
}

/// The declared outputs: records, files to upload, the ones not written, the ones unreadable.
struct Outputs {
    found: Vec<Dataset>,
    uploads: Vec<Upload>,
    missing: Vec<String>,
    failed: Vec<FailedOutput>,
}

/// Reads the declared outputs for this pod's attempt, each to go under the claim's own key.
fn read_outputs(job: &Job, claim: &attempt::Claim) -> Outputs {
    let roots = output::real_roots(job);
    let mut out = Outputs {
        found: vec![],
        uploads: vec![],
        missing: vec![],
        failed: vec![],
    };
    for o in &job.manifest.outputs {
        let key = attempt::output_key(job, claim.attempt, &claim.name, &o.path);
        match output::read(job, o, key, &roots) {
            Found::Missing => out.missing.push(o.path.clone()),
            Found::Failed(error) => {
                tracing::error!("output {}: {error}", o.path);
                out.failed.push(FailedOutput {
                    path: o.path.clone(),
                    error,
                });
            }
            Found::Read(d, uploads) => {
                out.found.push(d);
                out.uploads.extend(uploads);
            }
        }
    }
    if !out.missing.is_empty() {
        tracing::warn!("outputs not written by the job: {}", out.missing.join(", "));
    }
    out
}

async fn upload_results(
    job: &Job,
    claim: &attempt::Claim,
    exit_code: Option<i32>,
    reason: Reason,
    waited: Duration,
    cfg: Transfer,
) -> Result<Option<Done>> {
    let started = Instant::now();
    let changes = workdir_changes(job)?;
    let n = claim.attempt;
    let outputs = read_outputs(job, claim);
    // Each attempt has its own output keys, so a straggler never changes a newer attempt's
    // results; it still sends nothing once it knows it was superseded.
    if attempt::exists(job, n + 1).await? {
        tracing::warn!(
            job = %job.manifest.job_id,
            "sidecar: attempt {} of this job exists; attempt {n} uploads nothing and writes no done.json",
            n + 1
        );
        return Ok(None);
    }
    let workdir_key = attempt::workdir_key(job, n);
    let wd = job.workdir();
    let mut changes = changes;
    let (packs, packed) = pack::upload_small(
        &job.store,
        &wd,
        &mut changes.changed,
        &attempt::packs_key(job, n),
        cfg.part_size.bytes(),
        cfg.concurrency.get(),
    )
    .await?;
    let (_, own) = pack::split(&changes.changed, &packs);
    let mut uploads: Vec<Upload> = own
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| Upload {
            src: wd.join(&e.path),
            key: format!("{workdir_key}/{}", e.path),
            size: e.size,
            crc64nvme: e.crc64nvme.clone().unwrap_or_default(),
        })
        .collect();
    uploads.extend(outputs.uploads);
    tracing::info!(
        "sidecar: {} workdir entries changed, {} deleted, {} modes changed, {} outputs; {} files to upload",
        changes.changed.len(),
        changes.deleted.len(),
        changes.mode_changes.len(),
        outputs.found.len(),
        uploads.len()
    );
    let stats = transfer::upload_all(&job.store, uploads, cfg, false, "sidecar upload").await?;
    let mut record = Done::empty(&job.manifest.job_id, n, exit_code, reason);
    record.claim = claim.name.clone();
    record.changed = changes.changed;
    record.packs = packs;
    record.deleted = changes.deleted;
    record.mode_changes = changes.mode_changes;
    record.outputs = outputs.found;
    record.missing_outputs = outputs.missing;
    record.failed_outputs = outputs.failed;
    record.files_uploaded = stats.files + packed.files;
    record.bytes_uploaded = stats.bytes + packed.bytes;
    record.wait_seconds = waited.as_secs_f64();
    record.upload_seconds = started.elapsed().as_secs_f64();
    let record = write_done(job, record).await?;
    tracing::info!(
        "sidecar: {}",
        crate::progress::summary(stats.files, stats.bytes, started.elapsed())
    );
    Ok(Some(record))
}

/// Writes the attempt's `done.json`, last, and lets the node cache evict the job's indices.
async fn write_done(job: &Job, mut record: Done) -> Result<Done> {
    let m = &job.manifest;
    let key = attempt::done_key(job, record.attempt);
    record.requests = job.store.requests();
    record.finished_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    job.store
        .put_small(&key, record.to_json(), "application/json")
        .await?;
    if let Some(dir) = std::env::var_os(crate::env::CACHE_DIR).filter(|d| Path::new(d).is_dir()) {
        let pin = crate::cache::pin_name(&m.job_id, &job.url, record.attempt);
        crate::cache::unpin(Path::new(&dir), &pin);
    }
    tracing::info!(
        job = %m.job_id,
        "sidecar done: {}, reason {}, attempt {}; wrote s3://{}/{key}",
        record
            .exit_code
            .map_or("no exit code".into(), |c| format!("exit code {c}")),
        record.reason,
        record.attempt,
        m.bucket,
    );
    Ok(record)
}
