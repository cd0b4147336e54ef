//! Reading a local directory tree into manifest entries (never following symlinks).

use crate::checksum;
use crate::error::{Error, Result};
use crate::manifest::{Entry, Kind};
use crate::transfer::mtime_ns;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every file, directory and symlink under `dir`, relative to it, sorted by path.
/// `checksum(rel, size, mtime_ns)` says whether a file's content must be read for its CRC
/// (`false` leaves `crc64nvme` empty: the caller knows it already).
pub fn scan(dir: &Path, checksum: &dyn Fn(&str, u64, i64) -> bool) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(dir, "", checksum, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    checksum: &dyn Fn(&str, u64, i64) -> bool,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let reader = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    for dent in reader {
        let dent = dent.map_err(|e| Error::io(dir, "read directory", e))?;
        let name = dent.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::unsafe_path(
                dent.path().display().to_string(),
                "file name is not UTF-8; rename it (S3 keys are UTF-8)",
            ));
        };
        if name.ends_with(".ferry-tmp") {
            continue; // our own temporary file from an interrupted run
        }
        let path = dent.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, "stat", e))?;
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let mode = meta.permissions().mode() & 0o7777;
        let mtime = mtime_ns(&meta);
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(|e| Error::io(&path, "read symlink", e))?;
            out.push(Entry {
                path: child,
                kind: Kind::Symlink,
                size: 0,
                mode,
                mtime_ns: mtime,
                crc64nvme: None,
                target: Some(target.to_string_lossy().into_owned()),
            });
        } else if ft.is_dir() {
            out.push(Entry {
                path: child.clone(),
                kind: Kind::Dir,
                size: 0,
                mode,
                mtime_ns: mtime,
                crc64nvme: None,
                target: None,
            });
            walk(&path, &child, checksum, out)?;
        } else if ft.is_file() {
            let crc = if checksum(&child, meta.len(), mtime) {
                let (_, c) = checksum::of_file(&path).map_err(|e| Error::io(&path, "read", e))?;
                Some(checksum::encode(c))
            } else {
                None
            };
            out.push(Entry {
                path: child,
                kind: Kind::File,
                size: meta.len(),
                mode,
                mtime_ns: mtime,
                crc64nvme: crc,
                target: None,
            });
        } else {
            tracing::warn!(path = %path.display(), "skipping a special file (fifo, socket or device)");
        }
    }
    Ok(())
}

/// Opens a file the job left, for reading, only if it is a regular file: never through a
/// symlink (`O_NOFOLLOW`) and never blocking on a FIFO or device (`O_NONBLOCK`, then `fstat`).
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Size and CRC64-NVME of a regular file the job left (see [`open_regular`]).
pub fn checksum_regular(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut crc = checksum::Crc::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, crc.value()));
        }
        crc.update(&buf[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_files_dirs_and_symlinks_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/empty")).unwrap();
        std::fs::write(d.path().join("a/f.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("out")).unwrap();
        let entries = scan(d.path(), &|_, _, _| true).unwrap();
        let summary: Vec<(&str, Kind)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            summary,
            vec![
                ("a", Kind::Dir),
                ("a/empty", Kind::Dir),
                ("a/f.txt", Kind::File),
                ("out", Kind::Symlink)
            ]
        );
        assert_eq!(
            entries[2].crc64nvme.as_deref(),
            Some(checksum::encode(checksum::of_bytes(b"hello")).as_str())
        );
        assert_eq!(entries[3].target.as_deref(), Some("/etc"));
    }

    #[test]
    fn open_regular_refuses_a_symlink_and_a_fifo_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"3\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("f"), d.path().join("l")).unwrap();
        nix::unistd::mkfifo(&d.path().join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(checksum_regular(&d.path().join("f")).unwrap().0, 2);
        assert!(open_regular(&d.path().join("l")).is_err());
        assert!(open_regular(&d.path().join("p")).is_err());
    }
}
