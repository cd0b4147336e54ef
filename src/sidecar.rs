//! `ferry sidecar`: job pod, beside the tool. Waits for the tool to end, uploads the outputs and
//! the workdir changes, and writes `done.json` last.

use crate::cli::SidecarMode;
use crate::config::Transfer;
use crate::done::{self, Done, Reason};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{Entry, Kind, is_within};
use crate::transfer::{self, Upload};
use crate::tree;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Wait {
    pub mode: SidecarMode,
    /// Give up after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// How long the workdir must stay unchanged after the exit-code file appears.
    pub quiet: Duration,
}

const POLL: Duration = Duration::from_millis(200);

pub async fn run(job: &Job, wait: &Wait, cfg: Transfer) -> Result<Done> {
    let started = Instant::now();
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("/", "install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("/", "install SIGINT handler", e))?;
    tracing::info!(job = %job.manifest.job_id, mode = ?wait.mode, "sidecar: waiting for the tool to end");
    let reason = match wait.mode {
        SidecarMode::File => wait_file(job, wait, &mut term).await?,
        SidecarMode::SharedPid => wait_shared_pid(job, wait, &mut term).await?,
        SidecarMode::Native => wait_native(wait, &mut term).await,
    };
    let waited = started.elapsed();
    let exit_code = read_exit_code(&job.exit_code_file());
    let reason = match (reason, exit_code) {
        (Reason::Exited, None) => Reason::Crashed,
        (r, _) => r,
    };
    tracing::info!(job = %job.manifest.job_id, ?exit_code, ?reason, "tool ended after {:.1} s; uploading", waited.as_secs_f64());
    // From here a signal means "stop now": no done.json, the next run finishes the job.
    let upload = upload_results(job, exit_code, reason, waited, cfg);
    tokio::select! {
        r = upload => r,
        _ = term.recv() => Err(Error::Interrupted("SIGTERM during upload")),
        _ = int.recv() => Err(Error::Interrupted("SIGINT during upload")),
    }
}

/// The code in the exit-code file, if it holds one (Galaxy writes `echo $? > file`).
pub fn read_exit_code(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse::<i32>() {
        Ok(c) => Some(c),
        Err(_) => {
            tracing::warn!("{}: `{}` is not an exit code", path.display(), text.trim());
            None
        }
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
    while !ec.exists() {
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
        // A tool that ended before we first looked leaves only its exit-code file.
        if !seen && ec.exists() {
            let t = *ec_since.get_or_insert_with(Instant::now);
            if t.elapsed() >= wait.quiet {
                return Ok(Reason::Exited);
            }
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

async fn upload_results(
    job: &Job,
    exit_code: Option<i32>,
    reason: Reason,
    waited: Duration,
    cfg: Transfer,
) -> Result<Done> {
    let started = Instant::now();
    let m = &job.manifest;
    let wd = job.workdir();
    let staged: HashMap<&str, &Entry> = m
        .workdir
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    let apart: Vec<String> = m
        .outputs
        .iter()
        .filter_map(|o| job.rel_in_workdir(&o.path))
        .collect();
    let needs_crc = |rel: &str, size: u64, mtime: i64| {
        staged
            .get(rel)
            .is_none_or(|s| s.kind != Kind::File || s.size != size || s.mtime_ns != mtime)
    };
    let current: Vec<Entry> = tree::scan(&wd, &needs_crc)?
        .into_iter()
        .filter(|e| !apart.iter().any(|o| is_within(&e.path, o)))
        .collect();
    let changed: Vec<Entry> = current
        .iter()
        .filter(|e| match staged.get(e.path.as_str()) {
            None => true,
            Some(s) => {
                s.kind != e.kind
                    || (e.kind == Kind::File && e.crc64nvme.is_some() && e.crc64nvme != s.crc64nvme)
                    || e.target != s.target
            }
        })
        .map(|e| {
            let mut e = e.clone();
            if e.kind == Kind::File && e.crc64nvme.is_none() {
                e.crc64nvme = staged
                    .get(e.path.as_str())
                    .and_then(|s| s.crc64nvme.clone());
            }
            e
        })
        .collect();
    let present: std::collections::HashSet<&str> =
        current.iter().map(|e| e.path.as_str()).collect();
    let deleted: Vec<String> = m
        .workdir
        .entries
        .iter()
        .filter(|e| {
            !present.contains(e.path.as_str()) && !apart.iter().any(|o| is_within(&e.path, o))
        })
        .map(|e| e.path.clone())
        .collect();

    let mut uploads: Vec<Upload> = changed
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| Upload {
            src: wd.join(&e.path),
            key: job.workdir_key(&e.path),
            size: e.size,
            crc64nvme: e.crc64nvme.clone().unwrap_or_default(),
        })
        .collect();
    let mut outputs = Vec::new();
    let mut missing_outputs = Vec::new();
    for o in &m.outputs {
        let local = job.local(&o.path);
        match std::fs::symlink_metadata(&local) {
            Err(_) => missing_outputs.push(o.path.clone()),
            Ok(meta) if meta.file_type().is_symlink() => {
                tracing::warn!(
                    "output {} is a symlink; not followed, not uploaded",
                    local.display()
                );
                missing_outputs.push(o.path.clone());
            }
            Ok(_) => {
                let mut d = crate::stage::dataset(&local.to_string_lossy(), &o.key)?;
                uploads.extend(crate::stage::dataset_uploads(std::iter::once(&d)));
                d.path = o.path.clone();
                outputs.push(d);
            }
        }
    }
    if !missing_outputs.is_empty() {
        tracing::warn!(
            "outputs not written by the job: {}",
            missing_outputs.join(", ")
        );
    }
    tracing::info!(
        "sidecar: {} workdir entries changed, {} deleted, {} outputs; {} files to upload",
        changed.len(),
        deleted.len(),
        outputs.len(),
        uploads.len()
    );
    let stats = transfer::upload_all(&job.store, uploads, cfg, false, "sidecar upload").await?;
    let record = Done {
        version: done::VERSION,
        job_id: m.job_id.clone(),
        exit_code,
        reason,
        changed,
        deleted,
        outputs,
        missing_outputs,
        files_uploaded: stats.files,
        bytes_uploaded: stats.bytes,
        requests: job.store.requests(),
        wait_seconds: waited.as_secs_f64(),
        upload_seconds: started.elapsed().as_secs_f64(),
        finished_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    job.store
        .put_small(&m.done_key, record.to_json(), "application/json")
        .await?;
    // The job no longer uses its cached indices: let eviction have them.
    if let Some(dir) = std::env::var_os(crate::env::CACHE_DIR).filter(|d| Path::new(d).is_dir()) {
        crate::cache::unpin(Path::new(&dir), &m.job_id);
    }
    tracing::info!(
        job = %m.job_id,
        "sidecar done: exit={} reason={:?}; {}; wrote s3://{}/{}",
        exit_code.map_or("none".to_string(), |c| c.to_string()),
        reason,
        crate::progress::summary(stats.files, stats.bytes, started.elapsed()),
        m.bucket,
        m.done_key
    );
    Ok(record)
}
