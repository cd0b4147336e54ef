//! `ferry collect`: head node, after the job. Waits for `done.json`, downloads the workdir
//! changes and the outputs into place, and makes sure a job without an exit code never looks
//! successful.

use crate::attempt;
use crate::config::Transfer;
use crate::done::{Done, Reason};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{self, Dataset, Kind, check_rel};
use crate::pack;
use crate::transfer::{self, Download, plan_tree, write_atomic};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The exit code written when no `done.json` arrived.
pub const NO_DONE_EXIT_CODE: i32 = 1;

pub async fn run(
    job: &Job,
    wait: Duration,
    link_under: Option<&Path>,
    cfg: Transfer,
) -> Result<Done> {
    let started = Instant::now();
    let m = &job.manifest;
    let ec = job.exit_code_file();
    // Until everything is in place the head's .ec says "failed": a collect that stops halfway
    // (an error, a signal, a refused done.json) never leaves an earlier run's 0 behind.
    write_atomic(&ec, format!("{NO_DONE_EXIT_CODE}\n").as_bytes(), 0o644)?;
    let Some(done) = wait_for_done(job, wait).await? else {
        return Err(Error::JobFailed {
            job_id: m.job_id.clone(),
            reason: format!(
                "no done.json under s3://{}/{}/ after {} s: the pod did not finish; wrote exit code {NO_DONE_EXIT_CODE} to {}",
                m.bucket,
                manifest::attempts_key(&m.prefix, &m.job_id),
                wait.as_secs(),
                ec.display()
            ),
        });
    };
    // An attempt whose init never completed recorded nothing: the head keeps every file.
    let stats = if done.reason == Reason::InitFailed {
        transfer::Stats::default()
    } else {
        apply(job, &done, link_under, cfg).await?
    };
    let code = done.exit_code_for_head();
    write_atomic(&ec, format!("{code}\n").as_bytes(), 0o644)?;
    tracing::info!(
        job = %m.job_id,
        "collect done: {}, reason {}, attempt {}; {}; {}",
        done.exit_code.map_or("no exit code".into(), |c| format!("exit code {c}")),
        done.reason,
        done.attempt,
        crate::progress::summary(stats.files, stats.bytes, started.elapsed()),
        job.store.requests()
    );
    if let Some(why) = done.failure() {
        return Err(Error::JobFailed {
            job_id: m.job_id.clone(),
            reason: format!("{why}; wrote exit code {code} to {}", ec.display()),
        });
    }
    Ok(done)
}

/// Brings the attempt's workdir changes and outputs into place and removes what it deleted.
async fn apply(
    job: &Job,
    done: &Done,
    link_under: Option<&Path>,
    cfg: Transfer,
) -> Result<transfer::Stats> {
    let wd = job.workdir();
    let mut downloads = Vec::new();
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    let mut dirs = Vec::new();
    let workdir_key = attempt::workdir_key(job, done.attempt);
    // The exit-code file is collect's to write, whatever a done.json lists.
    let ec = job.rel_in_workdir(&job.manifest.exit_code_file);
    let changed: Vec<_> = done
        .changed
        .iter()
        .filter(|e| Some(&e.path) != ec.as_ref())
        .cloned()
        .collect();
    let (in_packs, own) = pack::split(&changed, &done.packs);
    plan_tree(
        &wd,
        &workdir_key,
        &own,
        &mut downloads,
        &mut links,
        &mut dirs,
    )?;
    for o in &done.outputs {
        let dest = job.local(&o.path);
        if let Some(mount) = link_under {
            link_output(mount, o, &dest)?;
            continue;
        }
        match o.kind {
            Kind::File => downloads.push(Download::of_dataset(o, dest)),
            _ => {
                transfer::create_dirs(&dest)?;
                plan_tree(
                    &dest,
                    &o.key,
                    &o.files,
                    &mut downloads,
                    &mut links,
                    &mut dirs,
                )?;
            }
        }
    }
    let packed = pack::place(
        &job.store,
        &done.packs,
        &in_packs,
        &wd,
        cfg.concurrency.get(),
    )
    .await?;
    let mut stats = transfer::download_all(&job.store, downloads, cfg, "collect download").await?;
    stats.files += packed.files;
    stats.bytes += packed.bytes;
    for (path, target) in &links {
        transfer::place_symlink(path, target)?;
    }
    // Judged once all are placed: a link may lead out through another link the job made.
    for (path, target) in &links {
        if !leads_inside_roots(job, path) {
            tracing::warn!(
                "not placing {}: a symlink the job made to {target}, leading outside the job's \
                 roots; on the head it would show a file of the head's own",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| Error::io(path, "remove a symlink", e))?;
        }
    }
    remove_deleted(job, done);
    let modes = done
        .mode_changes
        .iter()
        .map(|c| (wd.join(&c.path), c.mode))
        .chain(dirs.into_iter().rev());
    for (path, mode) in modes {
        set_mode(&path, mode);
    }
    Ok(stats)
}

/// Sets `path`'s permission bits (never setuid, setgid or sticky), never through a symlink; a
/// path the head no longer has is skipped.
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_symlink() => {
            let mode = mode & transfer::PERMISSION_BITS;
            if meta.permissions().mode() & 0o7777 != mode
                && let Err(e) =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            {
                tracing::warn!("could not set the mode of {}: {e}", path.display());
            }
        }
        _ => {}
    }
}

/// Whether symlink `path` leads inside the manifest's roots on the head, as the kernel would
/// follow it (through any other link on the way); the part of its way that does not exist yet is
/// judged by its words. Anything else would make the head read its own files through the job's
/// link (Galaxy reads `outputs/tool_stdout` that way).
fn leads_inside_roots(job: &Job, path: &Path) -> bool {
    let (Ok(target), Some(parent)) = (std::fs::read_link(path), path.parent()) else {
        return false;
    };
    let dest = real_or_words(&parent.join(target));
    job.manifest
        .roots
        .iter()
        .map(|r| real_or_words(&job.local(&r.path)))
        .any(|r| dest.starts_with(r))
}

/// The real path of the longest part of `path` that exists, followed by the rest of its words
/// with `.` and `..` resolved.
fn real_or_words(path: &Path) -> PathBuf {
    let parts: Vec<_> = path.components().collect();
    for i in (0..=parts.len()).rev() {
        let head: PathBuf = parts[..i].iter().collect();
        if let Ok(real) = std::fs::canonicalize(&head) {
            let rest: PathBuf = parts[i..].iter().collect();
            return normalize(&real.join(rest));
        }
    }
    normalize(path)
}

/// `path` with `.` and `..` resolved by their words alone (never above `/`).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Replaces an output with a symlink to where a read-only mount of the bucket shows its object,
/// after checking that the mount shows it with the recorded size.
fn link_output(mount: &Path, o: &Dataset, dest: &Path) -> Result<()> {
    let target = mount.join(&o.key);
    if let Some(parent) = dest.parent() {
        transfer::create_dirs(parent)?;
    }
    // A mount of the bucket shows no directory without an object in it: an output directory
    // holding no file is made on the head instead, with its empty subdirectories.
    if o.kind == Kind::Dir && !o.files.iter().any(|f| f.kind != Kind::Dir) {
        if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(dest).map_err(|e| Error::io(dest, "replace a link", e))?;
        }
        transfer::create_dirs(dest)?;
        for d in &o.files {
            transfer::create_dirs(&dest.join(&d.path))?;
        }
        return Ok(());
    }
    let sized = match o.kind {
        Kind::File => vec![(target.clone(), o.size)],
        _ => o
            .files
            .iter()
            .filter(|f| f.kind == Kind::File)
            .map(|f| (target.join(&f.path), f.size))
            .collect(),
    };
    // Every file as the mount shows it, with the size the pod recorded.
    for (path, size) in sized {
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, "find the output in the S3 mount", e))?;
        if meta.len() != size {
            return Err(Error::Checksum {
                what: format!("size of {} in the S3 mount", path.display()),
                expected: size.to_string(),
                actual: meta.len().to_string(),
            });
        }
    }
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink()) {
        std::fs::remove_dir_all(dest).map_err(|e| Error::io(dest, "replace with a symlink", e))?;
    }
    transfer::place_symlink(dest, &target.to_string_lossy())
}

/// Waits for the `done.json` of the job's newest attempt. A newer attempt (a retried Job, a
/// re-created pod) always wins over an older one's record, even one already written.
async fn wait_for_done(job: &Job, wait: Duration) -> Result<Option<Done>> {
    let m = &job.manifest;
    let end = Instant::now() + wait;
    let mut next_log = Instant::now() + Duration::from_secs(10);
    let mut n = attempt::latest(job).await?;
    loop {
        if attempt::exists(job, n + 1).await? {
            n += 1;
            continue;
        }
        if n > 0 {
            let key = attempt::done_key(job, n);
            if let Some(bytes) = job.store.get_small(&key).await? {
                let url = format!("s3://{}/{key}", m.bucket);
                let done = Done::from_json(&bytes).map_err(|r| Error::manifest(&url, r))?;
                check(job, &done, n).map_err(|r| Error::manifest(&url, r))?;
                check_claim(job, &done, &url).await?;
                // A pod that claimed the next number meanwhile makes this record stale.
                if !attempt::exists(job, n + 1).await? {
                    return Ok(Some(done));
                }
                continue;
            }
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        if Instant::now() >= next_log {
            match n {
                0 => tracing::info!("collect: waiting for a pod of job {} to start", m.job_id),
                n => tracing::info!(
                    "collect: waiting for attempt {n} of job {} to finish",
                    m.job_id
                ),
            }
            next_log += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
    }
}

/// A `done.json` is taken only from the pod that claimed its attempt: one written by a pod of
/// an earlier staging of the job id (which numbers its attempts from 1 again) is refused.
async fn check_claim(job: &Job, done: &Done, url: &str) -> Result<()> {
    let n = done.attempt;
    let claimed = attempt::claim_name(job, n).await?.unwrap_or_default();
    if claimed != done.claim {
        return Err(Error::manifest(
            url,
            format!(
                "it was written by the pod of claim `{}`, but attempt {n} was claimed as `{claimed}`: \
                 a pod of an earlier staging of this job id? re-stage a job only when none of its pods runs",
                done.claim
            ),
        ));
    }
    Ok(())
}

/// `done.json` comes from the pod: its paths and keys are checked like a manifest's.
fn check(job: &Job, done: &Done, attempt: u32) -> std::result::Result<(), String> {
    let m = &job.manifest;
    if done.job_id != m.job_id {
        return Err(format!("it is for job {}, not {}", done.job_id, m.job_id));
    }
    if done.attempt != attempt {
        return Err(format!(
            "it says attempt {}, but it is stored as attempt {attempt}",
            done.attempt
        ));
    }
    let paths = done.changed.iter().map(|e| &e.path).chain(&done.deleted);
    for p in paths.chain(done.mode_changes.iter().map(|c| &c.path)) {
        check_rel(p).map_err(|r| format!("workdir entry `{p}`: {r}"))?;
    }
    let packs = attempt::packs_key(job, attempt);
    crate::manifest::check_packs(&done.changed, &done.packs, &packs)?;
    // The claim name becomes part of output keys and of the links collect makes.
    if done.claim.len() > 32 || !done.claim.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("claim `{}` is not a claim name", done.claim));
    }
    for o in &done.outputs {
        if !m.outputs.iter().any(|d| d.path == o.path) {
            return Err(format!(
                "output `{}` is not one the manifest declares",
                o.path
            ));
        }
        // Only the pod that claimed attempt `n` writes its keys: what collect verifies or links
        // stays as it is.
        let own = attempt::output_key(job, attempt, &done.claim, &o.path);
        if o.key != own {
            return Err(format!(
                "output `{}` is recorded at {}, not at attempt {attempt}'s own key {own} \
                 (a done.json of another ferry version? use one version on the head and in the image)",
                o.path, o.key
            ));
        }
        for f in &o.files {
            check_rel(&f.path).map_err(|r| format!("output file `{}`: {r}", f.path))?;
        }
    }
    Ok(())
}

/// Removes workdir files the job deleted, but only where the head still has the staged bytes:
/// files the head created or changed since staging are never removed.
fn remove_deleted(job: &Job, done: &Done) {
    let wd = job.workdir();
    // Deepest first: a directory is removed once the files the job removed from it are gone.
    for rel in done.deleted.iter().rev() {
        let Some(staged) = job.manifest.workdir.entries.iter().find(|e| &e.path == rel) else {
            continue;
        };
        let path = wd.join(rel);
        let unchanged = match staged.kind {
            Kind::File => crate::checksum::of_file(&path).is_ok_and(|(size, crc)| {
                size == staged.size && Some(crate::checksum::encode(crc)) == staged.crc64nvme
            }),
            Kind::Symlink => std::fs::read_link(&path)
                .is_ok_and(|t| Some(t.to_string_lossy().as_ref()) == staged.target.as_deref()),
            Kind::Dir => std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none()),
        };
        if !unchanged {
            continue;
        }
        let r = if staged.kind == Kind::Dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = r {
            tracing::warn!(
                "could not remove {} deleted by the job: {e}",
                path.display()
            );
        }
    }
}
