//! `ferry init`: job pod, init container. Recreates the workdir, inputs and indices at their
//! absolute paths, verified, with modes, symlinks and empty directories. With a node-local
//! cache (`--cache-dir`), index files are symlinks into it instead (see [`crate::cache`]).

use crate::attempt::{self, Marker};
use crate::cache::{self, Cache};
use crate::config::Transfer;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::Kind;
use crate::pack;
use crate::transfer::{self, Download, create_dirs, place_symlink, plan_tree};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub async fn run(job: &Job, cache: Option<&Cache>, cfg: Transfer) -> Result<()> {
    let started = Instant::now();
    let m = &job.manifest;
    let state = attempt::state_dir(job);
    let claim = claim_attempt(job, &state).await?;
    let n = claim.attempt;
    let marker = |init_complete| Marker {
        attempt: n,
        init_complete,
        claim: claim.name.clone(),
    };
    attempt::write_marker(&state, &marker(false))?;
    let mut plan = plan(job, cache.is_some())?;
    tracing::info!(job = %m.job_id, "init: {} files to place, {} symlinks, into {} roots", plan.downloads.len(), plan.links.len(), m.roots.len());
    // A file whose checksum gives no cache address (none recorded) downloads in place.
    let mut cached = Vec::new();
    for d in std::mem::take(&mut plan.index_files) {
        match cache::addr(&d.crc64nvme, d.size) {
            Some(a) => cached.push((a, d)),
            None => plan.downloads.push(d),
        }
    }
    let cache_stats = match cache {
        Some(c) => {
            let pin = cache::pin_name(&m.job_id, &job.url, n);
            Some(c.place(&job.store, &pin, cached, cfg).await?)
        }
        None => None,
    };
    let wd = job.workdir();
    let packs = pack::place(
        &job.store,
        &m.workdir.packs,
        &plan.in_packs,
        &wd,
        cfg.concurrency.get(),
    )
    .await?;
    let mut stats =
        transfer::download_all(&job.store, plan.downloads, cfg, "init download").await?;
    stats.files += packs.files;
    stats.bytes += packs.bytes;
    stats.skipped_files += packs.skipped_files;
    stats.skipped_bytes += packs.skipped_bytes;
    finish_tree(job, &plan.links, &plan.dirs)?;
    // Last: from here on the sidecar may record what the job changes and deletes.
    attempt::write_marker(&state, &marker(true))?;
    tracing::info!(
        job = %m.job_id,
        "init done: {}; {} of them from {} packs; {} files ({:.1} MiB) already in place; {}{}",
        crate::progress::summary(stats.files, stats.bytes, started.elapsed()),
        packs.files,
        m.workdir.packs.len(),
        stats.skipped_files,
        stats.skipped_bytes as f64 / 1048576.0,
        cache_stats.map_or(String::new(), |c| c.line() + "; "),
        job.store.requests()
    );
    Ok(())
}

/// This pod's attempt: claimed once per pod (a restarted init container keeps its number).
async fn claim_attempt(job: &Job, state: &Path) -> Result<attempt::Claim> {
    create_dirs(state)?;
    match attempt::read_marker(state)? {
        // A re-stage of the job forgets its attempts: then this is a new one.
        // Ours only if S3 still names our claim (not a newer pod's after a re-stage).
        Some(marker)
            if attempt::claim_name(job, marker.attempt).await?.as_deref()
                == Some(marker.claim.as_str()) =>
        {
            Ok(attempt::Claim {
                attempt: marker.attempt,
                name: marker.claim,
            })
        }
        _ => attempt::claim(job, "init").await,
    }
}

/// What init places: downloads, index files (through the cache when there is one), packed
/// workdir files, symlinks and directory modes.
struct Plan {
    downloads: Vec<Download>,
    index_files: Vec<Download>,
    in_packs: Vec<crate::manifest::Entry>,
    links: Vec<(PathBuf, String)>,
    dirs: Vec<(PathBuf, u32)>,
}

/// Creates the roots and directories and plans every file of the manifest.
fn plan(job: &Job, cached: bool) -> Result<Plan> {
    let m = &job.manifest;
    for r in &m.roots {
        create_dirs(&job.local(&r.path))?;
    }
    let wd = job.workdir();
    create_dirs(&wd)?;
    let (mut downloads, mut index_files) = (Vec::new(), Vec::new());
    let (mut links, mut dirs) = (Vec::new(), Vec::new());
    // Packed files come out of their packs; the rest of the workdir one object per file.
    let (in_packs, own) = pack::split(&m.workdir.entries, &m.workdir.packs);
    plan_tree(
        &wd,
        &m.workdir.key,
        &own,
        &mut downloads,
        &mut links,
        &mut dirs,
    )?;
    // Index files go through the cache when there is one; everything else downloads in place.
    let datasets = m.inputs.iter().map(|d| (d, false));
    for (d, is_index) in datasets.chain(m.indices.iter().map(|d| (d, true))) {
        let dest = job.local(&d.path);
        let into = if is_index && cached {
            &mut index_files
        } else {
            &mut downloads
        };
        match d.kind {
            Kind::File => into.push(Download::of_dataset(d, dest)),
            _ => {
                create_dirs(&dest)?;
                dirs.push((dest.clone(), d.mode));
                plan_tree(&dest, &d.key, &d.files, into, &mut links, &mut dirs)?;
            }
        }
    }
    for o in &m.outputs {
        if let Some(parent) = job.local(&o.path).parent() {
            create_dirs(parent)?;
        }
    }
    Ok(Plan {
        downloads,
        index_files,
        in_packs,
        links,
        dirs,
    })
}

/// Symlinks, then directory modes (last: a read-only directory must not block the files placed
/// inside it), then no stale exit-code file (it would make the sidecar think the tool ended).
fn finish_tree(job: &Job, links: &[(PathBuf, String)], dirs: &[(PathBuf, u32)]) -> Result<()> {
    for (path, target) in links {
        place_symlink(path, target)?;
    }
    for (path, mode) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::io(path, "set mode", e))?;
    }
    let ec = job.exit_code_file();
    match std::fs::remove_file(&ec) {
        Ok(()) => {
            tracing::warn!("removed a stale exit-code file {}", ec.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&ec, "remove stale exit-code file", e)),
    }
}

/// `init --install-self DIR`: copies the running ferry binary to `DIR/ferry` (mode 0555,
/// temp-then-rename), for the tool containers of `inject --wrap` to run `ferry exec` from.
pub fn install_self(dir: &Path) -> Result<PathBuf> {
    let exe = Path::new("/proc/self/exe");
    let bytes = std::fs::read(exe).map_err(|e| Error::io(exe, "read the ferry binary", e))?;
    let dest = dir.join("ferry");
    // A temp file left by a killed run is read-only: remove it rather than fail to reopen it.
    let _ = std::fs::remove_file(transfer::temp_path(&dest));
    transfer::write_atomic(&dest, &bytes, 0o555)?;
    tracing::info!(
        "installed ferry ({} bytes) at {}",
        bytes.len(),
        dest.display()
    );
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_self_places_a_read_only_executable_copy_of_ferry_and_can_run_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ferry-bin");
        let dest = install_self(&dir).unwrap();
        assert_eq!(dest, dir.join("ferry"));
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), me);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o555);
        install_self(&dir).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("ferry")]);
    }
}
