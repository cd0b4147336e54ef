//! A declared output as the job left it, read for upload. A symlink (the output itself, a file
//! inside an output directory, or a directory on its path) is followed to the bytes it points
//! to, but only into the pod's roots: a job's link to `/proc/self/environ` or to a mounted
//! token is never read. What exists and cannot be read is a failure, never an empty success.

use crate::checksum;
use crate::job::Job;
use crate::manifest::{Dataset, Entry, Kind, Output};
use crate::transfer::{Upload, mtime_ns};
use crate::tree;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What the sidecar found at a declared output.
pub enum Found {
    /// Nothing at the path: the job did not write it.
    Missing,
    /// Something is there but cannot be read; the reason.
    Failed(String),
    /// Read: the record for `done.json` (at the declared path) and the files to upload.
    Read(Dataset, Vec<Upload>),
}

/// The pod's roots as real paths: the only places an output's symlinks may lead.
pub fn real_roots(job: &Job) -> Vec<PathBuf> {
    job.manifest
        .roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(job.local(&r.path)).ok())
        .collect()
}

/// Reads output `o`, to be uploaded under `key` (the attempt's own); every problem with what the
/// job left there is a [`Found::Failed`].
pub fn read(job: &Job, o: &Output, key: String, roots: &[PathBuf]) -> Found {
    let local = job.local(&o.path);
    if std::fs::symlink_metadata(&local).is_err() {
        return Found::Missing;
    }
    let real = match resolve(&local, roots) {
        Ok(p) => p,
        Err(why) => return Found::Failed(why),
    };
    let meta = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) => return Found::Failed(format!("stat {}: {e}", real.display())),
    };
    let mut dataset = Dataset {
        path: o.path.clone(),
        key,
        kind: Kind::File,
        size: 0,
        mode: meta.permissions().mode() & 0o7777,
        mtime_ns: mtime_ns(&meta),
        crc64nvme: None,
        files: vec![],
    };
    if meta.is_file() {
        return match file(&real, dataset.key.clone()) {
            Ok((size, crc, upload)) => {
                dataset.size = size;
                dataset.crc64nvme = Some(crc);
                Found::Read(dataset, vec![upload])
            }
            Err(why) => Found::Failed(why),
        };
    }
    if !meta.is_dir() {
        return Found::Failed(format!(
            "{} is not a regular file or directory",
            real.display()
        ));
    }
    match directory(&real, &dataset.key, roots) {
        Ok((files, uploads)) => {
            dataset.kind = Kind::Dir;
            dataset.size = files.iter().map(|f| f.size).sum();
            dataset.files = files;
            Found::Read(dataset, uploads)
        }
        Err(why) => Found::Failed(why),
    }
}

/// The real path of `path`, if it lies inside one of `roots`.
fn resolve(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| {
        format!(
            "{} cannot be resolved ({e}); a dangling symlink?",
            path.display()
        )
    })?;
    if roots.iter().any(|r| real.starts_with(r)) {
        Ok(real)
    } else {
        Err(format!(
            "{} leads to {}, outside the job's directories; ferry does not read it",
            path.display(),
            real.display()
        ))
    }
}

/// One regular file: its size, checksum and upload (a FIFO or device is refused, never read).
fn file(real: &Path, key: String) -> Result<(u64, String, Upload), String> {
    let (size, crc) =
        tree::checksum_regular(real).map_err(|e| format!("read {}: {e}", real.display()))?;
    let crc = checksum::encode(crc);
    let upload = Upload {
        src: real.to_path_buf(),
        key,
        size,
        crc64nvme: crc.clone(),
    };
    Ok((size, crc, upload))
}

/// The files of an output directory; a symlink to a file inside it becomes that file's bytes.
/// A symlink to a directory inside it is refused (its files would silently be missing, and on
/// the head the link would show whatever the head has there).
fn directory(
    real: &Path,
    key: &str,
    roots: &[PathBuf],
) -> Result<(Vec<Entry>, Vec<Upload>), String> {
    let mut entries = tree::scan(real, &|_, _, _| false).map_err(|e| e.to_string())?;
    let mut uploads = Vec::new();
    for e in entries.iter_mut() {
        let path = real.join(&e.path);
        let target = match e.kind {
            Kind::Dir => continue,
            Kind::File => path,
            Kind::Symlink => {
                let target = resolve(&path, roots)?;
                if target.is_dir() {
                    return Err(format!(
                        "{} is a symlink to the directory {}; an output directory may link files, not directories",
                        path.display(),
                        target.display()
                    ));
                }
                target
            }
        };
        let (size, crc, upload) = file(&target, format!("{key}/{}", e.path))?;
        if e.kind == Kind::Symlink {
            let meta = std::fs::metadata(&target).map_err(|err| err.to_string())?;
            e.kind = Kind::File;
            e.target = None;
            e.mode = meta.permissions().mode() & 0o7777;
            e.mtime_ns = mtime_ns(&meta);
        }
        e.size = size;
        e.crc64nvme = Some(crc);
        uploads.push(upload);
    }
    Ok((entries, uploads))
}
