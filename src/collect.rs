//! `ferry collect`: head node, after the job. Waits for `done.json`, downloads the workdir
//! changes and the outputs into place, and makes sure a job without an exit code never looks
//! successful.

use crate::config::Transfer;
use crate::done::Done;
use crate::error::{Error, Result};
use crate::init::plan_tree;
use crate::job::Job;
use crate::manifest::{Dataset, Kind, check_rel};
use crate::transfer::{self, Download, write_atomic};
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
    let Some(done) = wait_for_done(job, wait).await? else {
        write_atomic(&ec, format!("{NO_DONE_EXIT_CODE}\n").as_bytes(), 0o644)?;
        return Err(Error::JobFailed {
            job_id: m.job_id.clone(),
            reason: format!(
                "no done.json at s3://{}/{} after {} s: the pod did not finish; wrote exit code {NO_DONE_EXIT_CODE} to {}",
                m.bucket,
                m.done_key,
                wait.as_secs(),
                ec.display()
            ),
        });
    };
    check(job, &done)?;

    let wd = job.workdir();
    let mut downloads = Vec::new();
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    let mut dirs = Vec::new();
    plan_tree(
        &wd,
        &m.workdir.key,
        &done.changed,
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
    let stats = transfer::download_all(&job.store, downloads, cfg, "collect download").await?;
    for (path, target) in &links {
        transfer::place_symlink(path, target)?;
    }
    remove_deleted(job, &done);
    write_atomic(
        &ec,
        format!("{}\n", done.exit_code_for_head()).as_bytes(),
        0o644,
    )?;
    tracing::info!(
        job = %m.job_id,
        "collect done: exit={} reason={:?}; {}",
        done.exit_code.map_or("none".into(), |c| c.to_string()),
        done.reason,
        crate::progress::summary(stats.files, stats.bytes, started.elapsed())
    );
    if done.exit_code.is_none() {
        return Err(Error::JobFailed {
            job_id: m.job_id.clone(),
            reason: format!(
                "the tool ended without an exit code ({:?}); wrote {} to {}",
                done.reason,
                done.exit_code_for_head(),
                ec.display()
            ),
        });
    }
    Ok(done)
}

/// Replaces an output with a symlink to where a read-only mount of the bucket shows its object,
/// after checking that the mount shows it with the recorded size.
fn link_output(mount: &Path, o: &Dataset, dest: &Path) -> Result<()> {
    let target = mount.join(&o.key);
    let meta = std::fs::metadata(&target)
        .map_err(|e| Error::io(&target, "find the output in the S3 mount", e))?;
    if o.kind == Kind::File && meta.len() != o.size {
        return Err(Error::Checksum {
            what: format!("size of {} in the S3 mount", target.display()),
            expected: o.size.to_string(),
            actual: meta.len().to_string(),
        });
    }
    if let Some(parent) = dest.parent() {
        transfer::create_dirs(parent)?;
    }
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink()) {
        std::fs::remove_dir_all(dest).map_err(|e| Error::io(dest, "replace with a symlink", e))?;
    }
    transfer::place_symlink(dest, &target.to_string_lossy())
}

async fn wait_for_done(job: &Job, wait: Duration) -> Result<Option<Done>> {
    let m = &job.manifest;
    let end = Instant::now() + wait;
    let mut next_log = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(bytes) = job.store.get_small(&m.done_key).await? {
            let url = format!("s3://{}/{}", m.bucket, m.done_key);
            return Done::from_json(&bytes)
                .map(Some)
                .map_err(|r| Error::manifest(url, r));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        if Instant::now() >= next_log {
            tracing::info!("collect: waiting for s3://{}/{}", m.bucket, m.done_key);
            next_log += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
    }
}

/// `done.json` comes from the pod: its paths and keys are checked like a manifest's.
fn check(job: &Job, done: &Done) -> Result<()> {
    let m = &job.manifest;
    let url = format!("s3://{}/{}", m.bucket, m.done_key);
    let bad = |r: String| Error::manifest(&url, r);
    if done.job_id != m.job_id {
        return Err(bad(format!(
            "it is for job {}, not {}",
            done.job_id, m.job_id
        )));
    }
    for p in done.changed.iter().map(|e| &e.path).chain(&done.deleted) {
        check_rel(p).map_err(|r| bad(format!("workdir entry `{p}`: {r}")))?;
    }
    for o in &done.outputs {
        if !m.outputs.iter().any(|d| d.path == o.path && d.key == o.key) {
            return Err(bad(format!(
                "output `{}` ({}) is not one the manifest declares",
                o.path, o.key
            )));
        }
        for f in &o.files {
            check_rel(&f.path).map_err(|r| bad(format!("output file `{}`: {r}", f.path)))?;
        }
    }
    Ok(())
}

/// Removes workdir files the job deleted, but only where the head still has the staged bytes:
/// files the head created or changed since staging are never removed.
fn remove_deleted(job: &Job, done: &Done) {
    let wd = job.workdir();
    for rel in &done.deleted {
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
