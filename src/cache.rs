//! The node-local reference cache (`init --cache-dir DIR`; off by default).
//!
//! Index files are the same for thousands of jobs: with a cache, each is downloaded once per node.
//! DIR is a hostPath shared by every pod on the node:
//! - `objects/<addr>`: the content, read-only. `<addr>` is `<crc64nvme as 16 hex digits>-<size>`,
//!   both from the manifest, so equal bytes share one entry whatever their key or path.
//! - `locks/<addr>.lock`: an exclusive `flock` held while an entry is checked, filled or evicted.
//! - `tmp/`: downloads in progress; a verified download is published into `objects/` by rename.
//! - `pins/<job id>-<hash>`: the addrs one attempt of a job uses, one per line (see [`pin_name`]). Written by `init` before it takes any
//!   lock, removed by the sidecar after `done.json`. Eviction skips every addr named by a pin
//!   younger than [`PIN_TTL`] (older pins are left by jobs that never finished).
//!
//! A hit is checked (size and checksum) before use; a corrupted entry is logged, removed and
//! downloaded again. The job's index paths become symlinks to `DIR/objects/<addr>` (hard links
//! fail across mounts with EXDEV), so DIR must be mounted at the same path in the tool containers.
//! Every hit and fill sets the mtime of the entry's lock file to now: eviction drops the least
//! recently used first.
//!
//! Pods of one node run as different UIDs: the cache's folders are made mode 0777 by whoever
//! creates them and lock files 0666, so every ferry can lock, fill, use and evict any entry
//! (entries stay 0444, and the tool containers mount DIR read-only). Create DIR itself with
//! mode 0777 (or let the first ferry create it) when pods run as several UIDs.

use crate::config::Transfer;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::transfer::{self, Download, create_dirs, place_symlink};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A pin older than this is ignored: its job ended without its sidecar removing it.
pub const PIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a lock held by another pod is tried again.
const LOCK_POLL: Duration = Duration::from_millis(100);

const MIB: f64 = 1048576.0;

/// What the cache did for one job: entries found (hits) or downloaded (misses), and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    /// Entries found damaged, removed and downloaded again (counted in `misses` too).
    pub corrupted: u64,
    pub bytes_downloaded: u64,
    pub bytes_served: u64,
}

impl Stats {
    /// For the init summary line.
    pub fn line(&self) -> String {
        format!(
            "index cache: hits={} misses={} corrupted={} bytes_downloaded={} bytes_from_cache={}",
            self.hits, self.misses, self.corrupted, self.bytes_downloaded, self.bytes_served
        )
    }
}

/// The cache address of a file: `<crc64nvme hex>-<size>`; `None` if the checksum is malformed.
pub fn addr(crc64nvme: &str, size: u64) -> Option<String> {
    let bytes = aws_smithy_types::base64::decode(crc64nvme).ok()?;
    let crc = u64::from_be_bytes(bytes.try_into().ok()?);
    Some(format!("{crc:016x}-{size}"))
}

pub struct Cache {
    dir: PathBuf,
    max_bytes: Option<u64>,
}

impl Cache {
    /// Opens (creating) the cache at `dir`, made absolute: symlinks point into it.
    pub fn open(dir: &Path, max_bytes: Option<u64>) -> Result<Cache> {
        let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, "resolve", e))?;
        create_dirs(&dir)?;
        share(&dir, 0o777);
        for sub in ["objects", "locks", "tmp", "pins"] {
            let path = dir.join(sub);
            create_dirs(&path)?;
            share(&path, 0o777);
            nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK).map_err(|e| {
                Error::io(
                    &path,
                    "write to the cache",
                    std::io::Error::other(format!(
                        "{e}; pods of several UIDs share the cache: make {} and its folders mode 0777",
                        dir.display()
                    )),
                )
            })?;
        }
        Ok(Cache { dir, max_bytes })
    }

    pub fn object(&self, addr: &str) -> PathBuf {
        self.dir.join("objects").join(addr)
    }

    /// Places each `(addr, download)` as a symlink at the download's `dest` to the cache entry,
    /// downloading the entries the cache lacks; then evicts down to `--cache-max-bytes`.
    pub async fn place(
        &self,
        store: &Arc<Store>,
        pin_file: &str,
        items: Vec<(String, Download)>,
        cfg: Transfer,
    ) -> Result<Stats> {
        let mut wanted: BTreeMap<&str, &Download> = BTreeMap::new();
        for (a, d) in &items {
            wanted.entry(a.as_str()).or_insert(d);
        }
        // Pin first: an evictor that takes an entry's lock after this sees the pin.
        let pin: String = wanted.keys().map(|a| format!("{a}\n")).collect();
        transfer::write_atomic(&self.dir.join("pins").join(pin_file), pin.as_bytes(), 0o644)?;

        // Sorted order: two pods never wait for each other in a cycle.
        let mut locks = Vec::new();
        for a in wanted.keys() {
            locks.push(self.lock_waiting(a).await?);
        }
        let mut stats = Stats::default();
        let mut fills = Vec::new();
        for (&a, &d) in &wanted {
            let (object, size, crc) = (self.object(a), d.size, d.crc64nvme.clone());
            let state = tokio::task::spawn_blocking(move || check(&object, size, &crc))
                .await
                .map_err(|e| Error::io(self.object(a), "check", std::io::Error::other(e)))??;
            match state {
                Entry::Good => {
                    stats.hits += 1;
                    stats.bytes_served += d.size;
                    continue;
                }
                Entry::Corrupted(why) => {
                    tracing::warn!(
                        "cache: entry {} is corrupted ({why}); removed, downloading it again",
                        self.object(a).display()
                    );
                    stats.corrupted += 1;
                }
                Entry::Missing => {}
            }
            stats.misses += 1;
            let tmp = self.dir.join("tmp").join(a);
            // A fill killed midway (perhaps another UID's) left its temporary file: we hold the lock.
            let _ = std::fs::remove_file(transfer::temp_path(&tmp));
            fills.push((a, tmp, d));
        }
        // download_all verifies size and checksum before its own rename into tmp/.
        let downloads = fills.iter().map(|&(_, ref tmp, d)| Download {
            dest: tmp.clone(),
            mode: 0o444,
            mtime_ns: 0,
            ..d.clone()
        });
        let moved = transfer::download_all(store, downloads.collect(), cfg, "cache download");
        stats.bytes_downloaded = moved.await?.bytes;
        for (a, tmp, _) in &fills {
            let object = self.object(a);
            std::fs::rename(tmp, &object)
                .map_err(|e| Error::io(&object, "publish cache entry", e))?;
        }
        drop(locks);

        for (a, _) in &items {
            self.touch(a);
        }
        for (a, d) in &items {
            if let Some(parent) = d.dest.parent() {
                create_dirs(parent)?;
            }
            place_symlink(&d.dest, &self.object(a).to_string_lossy())?;
        }
        if let Some(max) = self.max_bytes {
            self.evict(max)?;
        }
        Ok(stats)
    }

    /// The lock of entry `addr`, waiting (cancellably) while another pod holds it.
    async fn lock_waiting(&self, addr: &str) -> Result<Flock<File>> {
        let mut logged = false;
        loop {
            if let Some(l) = self.try_lock(addr)? {
                return Ok(l);
            }
            if !logged {
                tracing::info!("cache: entry {addr} is busy (another pod fills it); waiting");
                logged = true;
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    fn lock_path(&self, addr: &str) -> PathBuf {
        self.dir.join("locks").join(format!("{addr}.lock"))
    }

    /// Marks entry `addr` as just used: its lock file's mtime (0666, so any UID may set it).
    fn touch(&self, addr: &str) {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        let path = self.lock_path(addr);
        let now = TimeSpec::UTIME_NOW;
        if let Err(e) = utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &now,
            &now,
            UtimensatFlags::NoFollowSymlink,
        ) {
            tracing::debug!("cache: cannot touch {}: {e}", path.display());
        }
    }

    /// When entry `addr` was last used (its lock file's mtime, else the entry's own).
    fn last_used(&self, addr: &str, entry: &std::fs::Metadata) -> SystemTime {
        std::fs::metadata(self.lock_path(addr))
            .and_then(|m| m.modified())
            .or_else(|_| entry.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The lock of entry `addr`, or `None` if another process holds it.
    fn try_lock(&self, addr: &str) -> Result<Option<Flock<File>>> {
        let path = self.lock_path(addr);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(&path)
            .map_err(|e| Error::io(&path, "open lock", e))?;
        // The umask took bits off: other UIDs must be able to open it read-write too.
        let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(Some(l)),
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(Error::io(&path, "lock", e.into())),
            }
        }
    }

    /// Removes the least recently used entries, never a pinned or locked one, until the cache
    /// holds at most `max` bytes.
    pub fn evict(&self, max: u64) -> Result<()> {
        let dir = self.dir.join("objects");
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "list", e))? {
            let e = e.map_err(|e| Error::io(&dir, "list", e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = e.metadata() {
                entries.push((self.last_used(&name, &m), m.len(), name));
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= max {
            return Ok(());
        }
        entries.sort();
        let (mut count, mut freed) = (0u64, 0u64);
        for (_, size, a) in entries {
            if total <= max {
                break;
            }
            let Some(_lock) = self.try_lock(&a)? else {
                continue;
            };
            if self.pinned()?.contains(&a) {
                continue;
            }
            match std::fs::remove_file(self.object(&a)) {
                Ok(()) => {
                    count += 1;
                    freed += size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(self.object(&a), "evict", e)),
            }
            total -= size;
        }
        tracing::info!(
            "cache: evicted {count} entries ({:.1} MiB); {:.1} MiB left (max {:.1} MiB)",
            freed as f64 / MIB,
            total as f64 / MIB,
            max as f64 / MIB
        );
        if total > max {
            tracing::warn!(
                "cache: still above --cache-max-bytes: the rest is pinned by running jobs or in use"
            );
        }
        Ok(())
    }

    /// Every addr named by a pin younger than [`PIN_TTL`].
    fn pinned(&self) -> Result<HashSet<String>> {
        let dir = self.dir.join("pins");
        let now = SystemTime::now();
        let mut out = HashSet::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "list", e))? {
            let Ok(e) = e else { continue };
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < PIN_TTL);
            if fresh && let Ok(text) = std::fs::read_to_string(e.path()) {
                out.extend(text.lines().map(str::to_string));
            }
        }
        Ok(out)
    }
}

/// The pin of one attempt of one staged job: jobs of the same id from other buckets, prefixes
/// or Galaxy instances, and other attempts of the same job, never share (or remove) a pin.
pub fn pin_name(job_id: &str, manifest_url: &str, attempt: u32) -> String {
    let id = format!("{manifest_url}\n{attempt}");
    format!("{job_id}-{:016x}", crate::checksum::of_bytes(id.as_bytes()))
}

/// Removes pin `name` (the sidecar, after `done.json`), if the cache is there.
pub fn unpin(dir: &Path, name: &str) {
    let pin = dir.join("pins").join(name);
    match std::fs::remove_file(&pin) {
        Ok(()) => tracing::info!("cache: unpinned {}", pin.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cache: cannot remove pin {}: {e}", pin.display()),
    }
}

enum Entry {
    Good,
    Missing,
    Corrupted(String),
}

/// Checks a cache entry against the manifest's size and checksum; removes a corrupted one.
fn check(object: &Path, size: u64, crc: &str) -> Result<Entry> {
    let meta = match std::fs::symlink_metadata(object) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(e) => return Err(Error::io(object, "check cache entry", e)),
    };
    if transfer::already_in_place(object, size, crc) {
        return Ok(Entry::Good);
    }
    let why = if meta.len() != size {
        format!("{} bytes, expected {size}", meta.len())
    } else {
        "checksum mismatch".to_string()
    };
    std::fs::remove_file(object).map_err(|e| Error::io(object, "remove corrupted entry", e))?;
    Ok(Entry::Corrupted(why))
}

/// Makes a folder we created usable by every UID (a folder of another UID is left as it is).
fn share(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o7777 != mode) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &Cache, addr: &str, len: usize, age_secs: u64) {
        let p = c.object(addr);
        std::fs::write(&p, vec![7u8; len]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_secs);
        File::open(&p).unwrap().set_modified(t).unwrap();
    }

    fn left(c: &Cache) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(c.dir.join("objects"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_address_is_the_checksum_in_hex_and_the_size() {
        let crc = crate::checksum::encode(0xae8b_1486_0a79_9888);
        assert_eq!(addr(&crc, 9).unwrap(), "ae8b14860a799888-9");
        assert_eq!(addr("AAAAAAAAAAA=", 0).unwrap(), "0000000000000000-0");
        assert!(addr("not base64!", 1).is_none());
        assert!(addr("AAAA", 1).is_none());
    }

    #[test]
    fn eviction_drops_the_oldest_unpinned_entries_until_under_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path(), None).unwrap();
        put(&c, "a-10", 10, 400); // oldest, but pinned
        put(&c, "b-10", 10, 300);
        put(&c, "c-10", 10, 200);
        put(&c, "d-10", 10, 100);
        std::fs::write(d.path().join("pins/job1"), "a-10\n").unwrap();
        c.evict(25).unwrap();
        assert_eq!(left(&c), ["a-10", "d-10"]);
    }

    #[test]
    fn a_stale_pin_protects_nothing_and_a_locked_entry_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path(), None).unwrap();
        put(&c, "a-10", 10, 400);
        put(&c, "b-10", 10, 300);
        put(&c, "c-10", 10, 200);
        let pin = d.path().join("pins/old-job");
        std::fs::write(&pin, "a-10\n").unwrap();
        let old = SystemTime::now() - PIN_TTL - Duration::from_secs(60);
        File::open(&pin).unwrap().set_modified(old).unwrap();
        let held = c.try_lock("b-10").unwrap().unwrap();
        c.evict(10).unwrap();
        drop(held);
        assert_eq!(left(&c), ["b-10"]);
    }
}
