//! The checksum cache: a file's CRC64-NVME remembered together with what proves the file
//! unchanged (device, inode, size, mtime and ctime in ns), so that staging an unchanged input
//! again costs a `stat` and no read.
//!
//! Where it lives: a user xattr on the file itself (`user.ferry.crc64nvme`), found again after a
//! restart of the handler; where the file takes no user xattr (a filesystem without them, a file
//! ferry may read but not write), one small file per inode under `--checksum-cache DIR`.
//!
//! Writing an xattr changes the file's ctime, so an xattr entry cannot hold the ctime it leaves
//! behind. It holds a window instead: the ctime when the bytes were read, and a bound taken just
//! before the xattr write plus [`CTIME_SLACK_NS`] (2 ms); the write is checked to have landed
//! inside it (else the entry goes to the directory, or nowhere). A later change to the bytes
//! moves the ctime past the window (the kernel stamps ctime on every write and on every mtime
//! reset), so the file is read again. Like every ctime-based check (make, rsync, git's "racy"
//! entries) a change that keeps size and mtime to the nanosecond is not seen if its ctime falls
//! in the window: made within 2 ms of ferry's read and write, or within one kernel clock tick on
//! filesystems with coarse timestamps. A directory entry leaves the file untouched and holds its
//! exact ctime.
//!
//! Trust: only a process that may write the file can set its user xattrs, and such a process can
//! change the bytes anyway; a forged entry is an optimisation that lies, so every path that reads
//! the bytes (an upload) uses the checksum of what it read, not the entry's. What is not read is
//! an input S3 already holds with the same size and the entry's checksum: a forged entry whose
//! checksum matches an older upload of the same path makes the job see that older upload (and
//! init verifies it against that checksum). `--no-checksum-cache` reads every byte instead.
//! Directory entries are used only from a directory owned by ferry's user and not writable by
//! group or others.

use crate::checksum::{self, Crc};
use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The xattr holding an entry.
pub const XATTR: &str = "user.ferry.crc64nvme";

/// How long after ferry's xattr write a change that keeps size and mtime goes unseen.
pub const CTIME_SLACK_NS: i64 = 2_000_000;

/// Attempts to read a file that keeps changing while it is read.
const READ_ATTEMPTS: u32 = 3;

static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Counts bytes ferry read from local files (reported in the stage summary).
pub fn note_read(n: u64) {
    BYTES_READ.fetch_add(n, Ordering::Relaxed);
}

/// Bytes read from local files by this process so far.
pub fn bytes_read() -> u64 {
    BYTES_READ.load(Ordering::Relaxed)
}

/// What proves a file unchanged since its checksum was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Key {
    pub fn of(m: &Metadata) -> Key {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Key {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// One entry: the key it was taken under, the window the ctime may be in, and the checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: Key,
    ctime_max: i64,
    crc: u64,
}

impl Record {
    fn to_text(&self) -> String {
        let k = &self.key;
        format!(
            "1 {} {} {} {} {} {} {:016x}",
            k.dev, k.ino, k.size, k.mtime_ns, k.ctime_ns, self.ctime_max, self.crc
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let f: Vec<&str> = text.trim().split(' ').collect();
        if f.len() != 8 || f[0] != "1" {
            return None;
        }
        Some(Record {
            key: Key {
                dev: f[1].parse().ok()?,
                ino: f[2].parse().ok()?,
                size: f[3].parse().ok()?,
                mtime_ns: f[4].parse().ok()?,
                ctime_ns: f[5].parse().ok()?,
            },
            ctime_max: f[6].parse().ok()?,
            crc: u64::from_str_radix(f[7], 16).ok()?,
        })
    }

    /// True if the file now described by `now` is the one this entry was taken of.
    fn matches(&self, now: &Key) -> bool {
        let k = &self.key;
        k.dev == now.dev
            && k.ino == now.ino
            && k.size == now.size
            && k.mtime_ns == now.mtime_ns
            && (k.ctime_ns..=self.ctime_max).contains(&now.ctime_ns)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn xattr_name() -> CString {
    CString::new(XATTR).expect("no NUL in the xattr name")
}

fn get_xattr(f: &File) -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: fd is open for the call; buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            xattr_name().as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn set_xattr(f: &File, value: &str) -> std::io::Result<()> {
    // SAFETY: fd is open for the call; value is valid for its length.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            xattr_name().as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where checksums are remembered; `disabled()` remembers nothing and reads every byte.
pub struct SumCache {
    enabled: bool,
    dir: Option<PathBuf>,
    warned: AtomicBool,
}

impl SumCache {
    pub fn disabled() -> SumCache {
        SumCache {
            enabled: false,
            dir: None,
            warned: AtomicBool::new(false),
        }
    }

    /// xattrs, and `dir` (created 0700 if missing) for files that take none. A directory ferry
    /// cannot create, or one another user could write, is not used (one warning).
    pub fn new(dir: Option<&Path>) -> SumCache {
        let dir = dir.and_then(|d| match usable_dir(d) {
            Ok(()) => Some(d.to_path_buf()),
            Err(why) => {
                tracing::warn!(
                    "checksum cache directory {}: {why}; not used (files without xattrs are read in full)",
                    d.display()
                );
                None
            }
        });
        SumCache {
            enabled: true,
            dir,
            warned: AtomicBool::new(false),
        }
    }

    /// The remembered checksum of the open file `f`, if its entry still matches it.
    pub fn lookup(&self, f: &File, key: &Key) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let text = get_xattr(f).or_else(|| {
            let p = self.dir.as_ref()?.join(entry_name(key));
            std::fs::read_to_string(p).ok()
        })?;
        Record::parse(&text)
            .filter(|r| r.matches(key))
            .map(|r| r.crc)
    }

    /// Remembers `crc` for the open file `f`, read whole under `key` (best effort).
    pub fn record(&self, f: &File, key: &Key, crc: u64) {
        if !self.enabled {
            return;
        }
        let ctime_max = now_ns().max(key.ctime_ns) + CTIME_SLACK_NS;
        let rec = Record {
            key: *key,
            ctime_max,
            crc,
        };
        let landed = set_xattr(f, &rec.to_text())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                // The write moved the ctime: it must lie in the window, or the entry is useless.
                let after = f.metadata().map_err(|e| e.to_string())?;
                let now = Key::of(&after);
                match rec.matches(&now) {
                    true => Ok(()),
                    false => Err("the xattr write moved the ctime outside its window".into()),
                }
            });
        let Err(why) = landed else { return };
        let exact = Record {
            key: *key,
            ctime_max: key.ctime_ns,
            crc,
        };
        match &self.dir {
            Some(dir) => {
                if let Err(e) = write_entry(dir, key, &exact.to_text()) {
                    self.warn_once(&format!(
                        "cannot write to checksum cache directory {} ({e})",
                        dir.display()
                    ));
                }
            }
            None => self.warn_once(&format!(
                "no user xattr on a staged file ({why}) and no --checksum-cache DIR"
            )),
        }
    }

    /// Drops the entry of the file at `path` (it proved wrong), best effort.
    pub fn forget(&self, path: &Path) {
        let Ok(f) = File::open(path) else { return };
        // SAFETY: fd is open for the call.
        unsafe { libc::fremovexattr(f.as_raw_fd(), xattr_name().as_ptr()) };
        if let (Some(dir), Ok(m)) = (&self.dir, f.metadata()) {
            let _ = std::fs::remove_file(dir.join(entry_name(&Key::of(&m))));
        }
    }

    fn warn_once(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{what}: such files are read in full on every stage");
        }
    }

    /// The checksum of the file at `path` (following symlinks): from the cache when its entry
    /// matches, otherwise by reading it once (then remembered). Returns the key and the checksum.
    pub fn checksum(&self, path: &Path) -> std::io::Result<(Key, u64)> {
        self.read_stable(path, false).map(|(k, _, c)| (k, c))
    }

    /// Reads the whole file into memory with its checksum (one pass), and remembers it.
    pub fn read_whole(&self, path: &Path) -> std::io::Result<(Key, Vec<u8>, u64)> {
        self.read_stable(path, true)
    }

    /// Reads the file, checking that it did not change while it was read (size, mtime, ctime);
    /// a file that keeps changing is an error. With `keep`, returns the bytes.
    fn read_stable(&self, path: &Path, keep: bool) -> std::io::Result<(Key, Vec<u8>, u64)> {
        for _ in 0..READ_ATTEMPTS {
            let mut f = File::open(path)?;
            let before = Key::of(&f.metadata()?);
            if !keep && let Some(crc) = self.lookup(&f, &before) {
                return Ok((before, Vec::new(), crc));
            }
            let (bytes, n, crc) = read_all(&mut f, keep, before.size)?;
            let after = Key::of(&f.metadata()?);
            if before == after && n == before.size {
                self.record(&f, &before, crc);
                return Ok((before, bytes, crc));
            }
        }
        Err(std::io::Error::other(format!(
            "changed while ferry read it ({READ_ATTEMPTS} times); stage again once it is written"
        )))
    }
}

/// Reads to the end: (bytes if `keep`, bytes read, CRC).
fn read_all(f: &mut File, keep: bool, size_hint: u64) -> std::io::Result<(Vec<u8>, u64, u64)> {
    let mut crc = Crc::default();
    let mut n = 0u64;
    if keep {
        let mut bytes = Vec::with_capacity(size_hint as usize);
        f.read_to_end(&mut bytes)?;
        crc.update(&bytes);
        note_read(bytes.len() as u64);
        let len = bytes.len() as u64;
        return Ok((bytes, len, crc.value()));
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        crc.update(&buf[..k]);
        n += k as u64;
        note_read(k as u64);
    }
    Ok((Vec::new(), n, crc.value()))
}

fn entry_name(key: &Key) -> String {
    format!("{:x}-{:x}", key.dev, key.ino)
}

fn write_entry(dir: &Path, key: &Key, text: &str) -> std::io::Result<()> {
    let name = entry_name(key);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn usable_dir(d: &Path) -> Result<(), String> {
    if !d.exists() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create it ({e})"))?;
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
    }
    let m = std::fs::metadata(d).map_err(|e| e.to_string())?;
    if !m.is_dir() {
        return Err("not a directory".into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}; it must be ferry's own (uid {me}) and not group/other-writable",
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Encodes a checksum for the manifest (re-exported for callers of this module).
pub fn encode(crc: u64) -> String {
    checksum::encode(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn write(p: &Path, b: &[u8]) {
        std::fs::write(p, b).unwrap();
    }

    #[test]
    fn a_record_round_trips_through_its_text() {
        let r = Record {
            key: Key {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: -4,
                ctime_ns: 5,
            },
            ctime_max: 6,
            crc: u64::MAX,
        };
        assert_eq!(Record::parse(&r.to_text()), Some(r));
        assert_eq!(Record::parse("2 1 2 3 4 5 6 ff"), None);
        assert_eq!(Record::parse("garbage"), None);
    }

    #[test]
    fn an_unchanged_file_is_read_once_and_a_rewritten_one_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"hello world");
        let c = SumCache::new(Some(&d.path().join("cache")));
        let (_, crc) = c.checksum(&p).unwrap();
        assert_eq!(crc, checksum::of_bytes(b"hello world"));
        let f = File::open(&p).unwrap();
        let k = Key::of(&f.metadata().unwrap());
        assert_eq!(c.lookup(&f, &k), Some(crc), "the second look is a hit");
        // Same size, mtime put back: the ctime moved, so the entry no longer matches (past the
        // documented 2 ms window after ferry's write).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"HELLO", 0).unwrap();
        w.set_modified(mtime).unwrap();
        drop(w);
        let f = File::open(&p).unwrap();
        let k2 = Key::of(&f.metadata().unwrap());
        assert_eq!(k2.mtime_ns, k.mtime_ns);
        assert_eq!(c.lookup(&f, &k2), None);
        assert_eq!(
            c.checksum(&p).unwrap().1,
            checksum::of_bytes(b"HELLO world")
        );
    }

    #[test]
    fn a_disabled_cache_remembers_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"x");
        let c = SumCache::disabled();
        c.checksum(&p).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(get_xattr(&f), None);
        assert_eq!(c.lookup(&f, &Key::of(&f.metadata().unwrap())), None);
    }

    #[test]
    fn a_directory_another_user_could_write_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            usable_dir(&open)
                .unwrap_err()
                .contains("not group/other-writable")
        );
        assert!(usable_dir(&d.path().join("new")).is_ok());
    }
}
