//! Concurrent transfers between files and S3: bounded concurrency across files and parts,
//! ranged parallel GETs with positional writes, parallel multipart uploads, checksums,
//! temp-then-rename so nothing partial is ever at a final path.

use crate::checksum::{self, Crc};
use crate::config::Transfer;
use crate::error::{Error, Result};
use crate::manifest::{Entry, Kind};
use crate::progress::{self, Progress};
use crate::store::Store;
use crate::sumcache::SumCache;
use std::fs::{File, FileTimes, OpenOptions, Permissions};
use std::future::Future;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// One object to bring into place at `dest`.
#[derive(Debug, Clone)]
pub struct Download {
    pub key: String,
    pub dest: PathBuf,
    pub size: u64,
    pub crc64nvme: String,
    pub mode: u32,
    pub mtime_ns: i64,
}

impl Download {
    /// A file dataset (input, index, output) placed at `dest`.
    pub fn of_dataset(d: &crate::manifest::Dataset, dest: PathBuf) -> Download {
        Download {
            key: d.key.clone(),
            dest,
            size: d.size,
            crc64nvme: d.crc64nvme.clone().unwrap_or_default(),
            mode: d.mode,
            mtime_ns: d.mtime_ns,
        }
    }
}

/// One local file to send to `key`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub src: PathBuf,
    pub key: String,
    pub size: u64,
    pub crc64nvme: String,
}

/// What a batch moved and what it found already in place.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    pub skipped_files: u64,
    pub skipped_bytes: u64,
}

impl Stats {
    fn add(&mut self, moved: bool, bytes: u64) {
        if moved {
            self.files += 1;
            self.bytes += bytes;
        } else {
            self.skipped_files += 1;
            self.skipped_bytes += bytes;
        }
    }
}

/// The mode bits a download may set: read/write/execute only. A job's setuid, setgid or sticky
/// bit never reaches the head node (nor the pod).
pub const PERMISSION_BITS: u32 = 0o777;

/// How often a body stream that breaks mid-transfer is resumed from where it broke.
const BODY_ATTEMPTS: u32 = 6;

/// The temporary name beside `dest`: hidden, fixed (a re-run reuses and then removes it).
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.ferry-tmp"))
}

fn mtime(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// mtime of a file as nanoseconds since the epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// True if `dest` already holds exactly these bytes (size, then checksum).
pub(crate) fn already_in_place(dest: &Path, size: u64, crc: &str) -> bool {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_file() && m.len() == size => {
            checksum::of_file(dest).is_ok_and(|(_, c)| checksum::encode(c) == crc)
        }
        _ => false,
    }
}

/// Refuses `base/rel` when a directory on the way below `base` exists as a symlink: a link
/// the job (or a crafted record) left in a tree must never lead a write outside it. Components
/// that do not exist yet are fine (they are created as directories).
pub fn check_beneath(base: &Path, rel: &str) -> Result<()> {
    let mut path = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::unsafe_path(
                    path.display().to_string(),
                    "is a symlink where a directory is expected; ferry never writes through symlinks",
                ));
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Creates `dir` and its parents (mode 0755 before umask); refuses to go through a symlink.
pub fn create_dirs(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::unsafe_path(
                dir.display().to_string(),
                "is a symlink where a directory is expected; ferry never writes through symlinks",
            ));
        }
        Ok(_) => {
            return Err(Error::io(
                dir,
                "create directory",
                std::io::Error::other("a file is in the way"),
            ));
        }
        Err(_) => {}
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, "create directory", e)),
    }
}

/// Writes small bytes at `dest` atomically (temp, then rename).
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = dest.parent() {
        create_dirs(parent)?;
    }
    let tmp = temp_path(dest);
    let res = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.set_permissions(Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, dest)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(dest, "write", e)
    })
}

/// Places a symlink at `dest` pointing to `target` (never followed), replacing what is there.
pub fn place_symlink(dest: &Path, target: &str) -> Result<()> {
    if std::fs::read_link(dest).is_ok_and(|existing| existing.as_os_str() == target) {
        return Ok(());
    }
    let tmp = temp_path(dest);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, "create symlink", e))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(dest, "place symlink", e)
    })
}

/// Plans the entries of one tree rooted at `base` whose objects live under `key`.
pub fn plan_tree(
    base: &Path,
    key: &str,
    entries: &[Entry],
    downloads: &mut Vec<Download>,
    links: &mut Vec<(PathBuf, String)>,
    dirs: &mut Vec<(PathBuf, u32)>,
) -> Result<()> {
    for e in entries {
        check_beneath(base, &e.path)?;
        let path = base.join(&e.path);
        match e.kind {
            Kind::Dir => {
                create_dirs(&path)?;
                dirs.push((path, e.mode));
            }
            Kind::File => downloads.push(Download {
                key: format!("{key}/{}", e.path),
                dest: path,
                size: e.size,
                crc64nvme: e.crc64nvme.clone().unwrap_or_default(),
                mode: e.mode,
                mtime_ns: e.mtime_ns,
            }),
            Kind::Symlink => links.push((path, e.target.clone().unwrap_or_default())),
        }
    }
    Ok(())
}

/// Downloads every item, `concurrency` files or parts at a time, big files in ranged parts.
pub async fn download_all(
    store: &Arc<Store>,
    items: Vec<Download>,
    cfg: Transfer,
    label: &'static str,
) -> Result<Stats> {
    let sem = Arc::new(Semaphore::new(cfg.concurrency.get()));
    for_each_file(
        items,
        |d| d.size,
        label,
        "already in place",
        4 * cfg.concurrency.get(),
        |item: Download, progress| {
            let (store, sem) = (store.clone(), sem.clone());
            let part = cfg.part_size.for_object(item.size);
            async move { download_one(&store, &sem, &item, part, &progress).await }
        },
    )
    .await
}

/// Runs `work` on every file, biggest first (their parts fill the pipe while small files queue
/// behind them), with progress lines, and adds up what was moved and what was already there.
async fn for_each_file<T, Fut>(
    mut items: Vec<T>,
    size: fn(&T) -> u64,
    label: &'static str,
    already: &str,
    in_flight: usize,
    work: impl Fn(T, Arc<Progress>) -> Fut,
) -> Result<Stats>
where
    Fut: Future<Output = Result<bool>> + Send + 'static,
{
    let total: u64 = items.iter().map(size).sum();
    let (progress, _reporter) = Progress::start(label, items.len() as u64, total);
    items.sort_by_key(|i| std::cmp::Reverse(size(i)));
    // Tasks are started a bounded number at a time: a future per file for 50,000 files would
    // hold hundreds of MiB; this keeps memory ≈ concurrency × part size whatever the file count.
    let mut set = JoinSet::new();
    let mut stats = Stats::default();
    for item in items {
        while set.len() >= in_flight {
            join_next(&mut set, &mut stats).await?;
        }
        let bytes = size(&item);
        let moved = work(item, progress.clone());
        let progress = progress.clone();
        set.spawn(async move {
            let moved = moved.await?;
            progress.file_done();
            Ok::<_, Error>((moved, bytes))
        });
    }
    while !set.is_empty() {
        join_next(&mut set, &mut stats).await?;
    }
    if stats.files > 0 || stats.skipped_files > 0 {
        tracing::info!(
            "{label}: {}; {} files {already}",
            progress::summary(stats.files, stats.bytes, progress.elapsed()),
            stats.skipped_files
        );
    }
    Ok(stats)
}

/// Waits for the next task; on a failure the others are cancelled (their temp files go with them).
async fn join_next(set: &mut JoinSet<Result<(bool, u64)>>, stats: &mut Stats) -> Result<()> {
    match set.join_next().await {
        None => Ok(()),
        Some(Ok(Ok((moved, bytes)))) => {
            stats.add(moved, bytes);
            Ok(())
        }
        Some(Ok(Err(e))) => {
            set.abort_all();
            Err(e)
        }
        Some(Err(e)) => {
            set.abort_all();
            Err(Error::Io {
                path: PathBuf::new(),
                what: "transfer task",
                source: std::io::Error::other(e.to_string()),
            })
        }
    }
}

async fn download_one(
    store: &Arc<Store>,
    sem: &Arc<Semaphore>,
    item: &Download,
    part: u64,
    progress: &Arc<Progress>,
) -> Result<bool> {
    let dest = item.dest.clone();
    let (size, crc) = (item.size, item.crc64nvme.clone());
    let in_place = tokio::task::spawn_blocking(move || already_in_place(&dest, size, &crc))
        .await
        .unwrap_or(false);
    if in_place {
        // Same bytes, perhaps another mode (a job's chmod): the mode still comes back.
        if std::fs::metadata(&item.dest)
            .is_ok_and(|m| m.permissions().mode() & 0o7777 != item.mode & PERMISSION_BITS)
        {
            std::fs::set_permissions(
                &item.dest,
                Permissions::from_mode(item.mode & PERMISSION_BITS),
            )
            .map_err(|e| Error::io(&item.dest, "set mode", e))?;
        }
        progress.add_bytes(item.size);
        return Ok(false);
    }
    if let Some(parent) = item.dest.parent() {
        create_dirs(parent)?;
    }
    let tmp = TempFile(temp_path(&item.dest));
    fetch_to_temp(store, sem, item, part, &tmp.0, progress)
        .await
        .map_err(|e| match e {
            // Name the file the user knows, not our temporary name beside it.
            Error::Io { path, what, source } if path == tmp.0 => Error::Io {
                path: item.dest.clone(),
                what,
                source,
            },
            e => e,
        })?;
    Ok(true)
}

/// Removes the temporary file when dropped: on error, and when the task is cancelled
/// (another file failed, or SIGTERM). After the rename there is nothing left to remove.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn fetch_to_temp(
    store: &Arc<Store>,
    sem: &Arc<Semaphore>,
    item: &Download,
    part: u64,
    tmp: &Path,
    progress: &Arc<Progress>,
) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| Error::io(tmp, "create", e))?;
    file.set_len(item.size)
        .map_err(|e| Error::io(tmp, "preallocate", e))?;
    let file = Arc::new(file);
    let crc = if item.size == 0 {
        checksum::of_bytes(b"")
    } else if item.size <= part {
        let _permit = sem.acquire().await.expect("semaphore open");
        fetch_range(store, &item.key, None, item.size, &file, tmp, progress).await?
    } else {
        let mut set = JoinSet::new();
        let mut start = 0;
        while start < item.size {
            let len = part.min(item.size - start);
            let (store, sem, file, progress) =
                (store.clone(), sem.clone(), file.clone(), progress.clone());
            let (key, tmp) = (item.key.clone(), tmp.to_path_buf());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let crc =
                    fetch_range(&store, &key, Some(start), len, &file, &tmp, &progress).await?;
                Ok::<_, Error>((start, len, crc))
            });
            start += len;
        }
        let mut parts = Vec::new();
        while let Some(j) = set.join_next().await {
            match j {
                Ok(Ok(p)) => parts.push(p),
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(Error::io(
                        tmp,
                        "download part",
                        std::io::Error::other(e.to_string()),
                    ));
                }
            }
        }
        parts.sort_by_key(|p| p.0);
        parts
            .iter()
            .skip(1)
            .fold(parts[0].2, |acc, &(_, len, crc)| {
                checksum::combine(acc, crc, len)
            })
    };
    let got = checksum::encode(crc);
    if got != item.crc64nvme {
        return Err(Error::Checksum {
            what: format!(
                "crc64nvme of s3://{}/{} (for {})",
                store.bucket,
                item.key,
                item.dest.display()
            ),
            expected: item.crc64nvme.clone(),
            actual: got,
        });
    }
    file.set_permissions(Permissions::from_mode(item.mode & PERMISSION_BITS))
        .map_err(|e| Error::io(tmp, "set mode", e))?;
    file.set_times(FileTimes::new().set_modified(mtime(item.mtime_ns)))
        .map_err(|e| Error::io(tmp, "set mtime", e))?;
    drop(file);
    std::fs::rename(tmp, &item.dest).map_err(|e| Error::io(&item.dest, "rename into place", e))
}

/// GETs `len` bytes (at `start`, or the whole object) into `file`, resuming a body that breaks.
async fn fetch_range(
    store: &Store,
    key: &str,
    start: Option<u64>,
    len: u64,
    file: &File,
    tmp: &Path,
    progress: &Progress,
) -> Result<u64> {
    let base = start.unwrap_or(0);
    let mut crc = Crc::default();
    let mut done = 0u64;
    let mut attempt = 0;
    loop {
        let range = (start.is_some() || done > 0).then(|| (base + done, base + len - 1));
        let mut body = store.get(key, range).await?;
        let broke = loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    if done + chunk.len() as u64 > len {
                        return Err(Error::Checksum {
                            what: format!("size of s3://{}/{key}", store.bucket),
                            expected: format!("{len} bytes"),
                            actual: "more bytes".into(),
                        });
                    }
                    file.write_all_at(&chunk, base + done)
                        .map_err(|e| Error::io(tmp, "write", e))?;
                    crc.update(&chunk);
                    done += chunk.len() as u64;
                    progress.add_bytes(chunk.len() as u64);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        match broke {
            None if done == len => return Ok(crc.value()),
            None => {
                return Err(Error::Checksum {
                    what: format!("size of s3://{}/{key}", store.bucket),
                    expected: format!("{len} bytes"),
                    actual: format!("{done} bytes"),
                });
            }
            Some(e) => {
                attempt += 1;
                if attempt >= BODY_ATTEMPTS {
                    return Err(Error::S3 {
                        op: "get",
                        bucket: store.bucket.clone(),
                        key: key.to_string(),
                        message: format!("body broke {attempt} times, last: {e}"),
                    });
                }
                tracing::warn!(
                    key,
                    done,
                    "body broke mid-transfer ({e}); resuming at byte {}",
                    base + done
                );
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
        }
    }
}

/// Uploads every item; with `skip_present`, one HEAD first skips objects S3 already holds
/// with the same size and checksum. Every upload reads its file once, checksumming what it
/// sends; a file whose bytes no longer match its recorded checksum is an error.
pub async fn upload_all(
    store: &Arc<Store>,
    items: Vec<Upload>,
    cfg: Transfer,
    skip_present: bool,
    label: &'static str,
) -> Result<Stats> {
    let how = UploadHow {
        skip_present,
        adopt_read_crc: false,
        sums: Arc::new(SumCache::disabled()),
    };
    upload_all_with(store, items, cfg, &how, label)
        .await
        .map(|(s, _)| s)
}

/// How a batch of uploads treats checksums.
pub struct UploadHow {
    /// HEAD first; skip objects S3 holds with the same size and checksum.
    pub skip_present: bool,
    /// An item whose checksum is unknown (empty) or no longer matches its bytes is uploaded
    /// with the checksum of the bytes read (stage: the upload read is the truth); otherwise
    /// a mismatch is an error.
    pub adopt_read_crc: bool,
    /// Where checksums of files read whole are remembered.
    pub sums: Arc<SumCache>,
}

/// [`upload_all`], also returning the checksum each uploaded or skipped key was sent with.
pub async fn upload_all_with(
    store: &Arc<Store>,
    items: Vec<Upload>,
    cfg: Transfer,
    how: &UploadHow,
    label: &'static str,
) -> Result<(Stats, Vec<(String, String)>)> {
    let sem = Arc::new(Semaphore::new(cfg.concurrency.get()));
    let sums_out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stats = for_each_file(
        items,
        |u| u.size,
        label,
        "already in S3",
        4 * cfg.concurrency.get(),
        |item: Upload, progress| {
            let (store, sem, out) = (store.clone(), sem.clone(), sums_out.clone());
            let part = cfg.part_size.for_object(item.size);
            let (skip, adopt, sums) = (how.skip_present, how.adopt_read_crc, how.sums.clone());
            async move {
                let (moved, crc) =
                    upload_one(&store, &sem, &item, part, (skip, adopt), &sums, &progress).await?;
                out.lock().expect("lock").push((item.key.clone(), crc));
                Ok(moved)
            }
        },
    )
    .await?;
    let crcs = std::mem::take(&mut *sums_out.lock().expect("lock"));
    Ok((stats, crcs))
}

fn changed(item: &Upload, expected: &str, actual: &str) -> Error {
    Error::Checksum {
        what: format!(
            "crc64nvme of {} (it changed after ferry checksummed it; run again once it is written)",
            item.src.display()
        ),
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

async fn skip_if_present(store: &Store, sem: &Semaphore, item: &Upload, crc: &str) -> Result<bool> {
    let _permit = sem.acquire().await.expect("semaphore open");
    is_present(store, item, crc).await
}

/// True if S3 holds `item.key` with the same size and checksum (one HEAD).
async fn is_present(store: &Store, item: &Upload, crc: &str) -> Result<bool> {
    let head = store.head(&item.key).await?;
    Ok(head.is_some_and(|h| h.size == item.size && h.crc64nvme.as_deref() == Some(crc)))
}

async fn upload_one(
    store: &Arc<Store>,
    sem: &Arc<Semaphore>,
    item: &Upload,
    part: u64,
    (skip_present, adopt): (bool, bool),
    sums: &Arc<SumCache>,
    progress: &Arc<Progress>,
) -> Result<(bool, String)> {
    let known = item.crc64nvme.clone();
    if skip_present && !known.is_empty() && skip_if_present(store, sem, item, &known).await? {
        progress.add_bytes(item.size);
        return Ok((false, known));
    }
    if item.size <= part {
        // One read: the bytes in memory and their checksum. The permit is held until the bytes
        // are sent, so at most `concurrency` buffers of ≤ part size exist at once.
        let _permit = sem.acquire().await.expect("semaphore open");
        let (src, sums2) = (item.src.clone(), sums.clone());
        let (key, bytes, crc) = blocking(&item.src, "read", move || sums2.read_whole(&src)).await?;
        let crc = checksum::encode(crc);
        if key.size != item.size {
            return Err(Error::Checksum {
                what: format!(
                    "size of {} (it changed after ferry listed it; run again once it is written)",
                    item.src.display()
                ),
                expected: item.size.to_string(),
                actual: key.size.to_string(),
            });
        }
        if !known.is_empty() && crc != known {
            if !adopt {
                return Err(changed(item, &known, &crc));
            }
            tracing::warn!(
                "{}: its checksum cache entry did not match the bytes; uploading what was read now",
                item.src.display()
            );
        }
        if skip_present && known.is_empty() && is_present(store, item, &crc).await? {
            progress.add_bytes(item.size);
            return Ok((false, crc));
        }
        store.put_bytes(&item.key, bytes, &crc).await?;
        progress.add_bytes(item.size);
        return Ok((true, crc));
    }
    // Multipart: the checksum goes into the object's metadata at the start, so it must be known
    // first (a cache hit, or one checksum pass); the parts are checked against it as they are read.
    let crc = if known.is_empty() {
        let (src, sums2) = (item.src.clone(), sums.clone());
        let (_, c) = blocking(&item.src, "read", move || sums2.checksum(&src)).await?;
        let c = checksum::encode(c);
        if skip_present && skip_if_present(store, sem, item, &c).await? {
            progress.add_bytes(item.size);
            return Ok((false, c));
        }
        c
    } else {
        known
    };
    match upload_parts(store, sem, item, part, &crc, progress).await {
        // A checksum cache entry that lied (forged, or a change it could not see): forget it,
        // read the file again and upload that.
        Err(Error::Checksum { .. }) if adopt => {
            tracing::warn!(
                "{}: its checksum cache entry did not match the bytes; reading it again",
                item.src.display()
            );
            sums.forget(&item.src);
            let (src, sums2) = (item.src.clone(), sums.clone());
            let (_, c) = blocking(&item.src, "read", move || sums2.checksum(&src)).await?;
            let c = checksum::encode(c);
            upload_parts(store, sem, item, part, &c, progress).await?;
            Ok((true, c))
        }
        r => r.map(|()| (true, crc)),
    }
}

/// Runs blocking file work off the async threads, naming `path` if it fails.
async fn blocking<T: Send + 'static>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| Error::io(path, what, e)),
        Err(e) => Err(Error::io(path, what, std::io::Error::other(e.to_string()))),
    }
}

/// Reads `len` bytes at `offset` of `path` (one part), with their CRC.
fn read_part(path: &Path, offset: u64, len: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    crate::sumcache::note_read(len);
    let crc = checksum::of_bytes(&buf);
    Ok((buf, crc))
}

async fn upload_parts(
    store: &Arc<Store>,
    sem: &Arc<Semaphore>,
    item: &Upload,
    part: u64,
    crc: &str,
    progress: &Arc<Progress>,
) -> Result<()> {
    let id = store.create_multipart(&item.key, crc).await?;
    let mut set = JoinSet::new();
    let (mut start, mut number) = (0u64, 1i32);
    while start < item.size {
        let len = part.min(item.size - start);
        let (store, sem, progress) = (store.clone(), sem.clone(), progress.clone());
        let (key, id, src) = (item.key.clone(), id.clone(), item.src.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let s2 = src.clone();
            let (bytes, crc) = blocking(&src, "read", move || read_part(&s2, start, len)).await?;
            let p = store.upload_part_bytes(&key, &id, number, bytes).await?;
            progress.add_bytes(len);
            Ok::<_, Error>((p, start, len, crc))
        });
        start += len;
        number += 1;
    }
    let mut parts = Vec::new();
    let mut failure = None;
    while let Some(j) = set.join_next().await {
        match j {
            Ok(Ok(p)) => parts.push(p),
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(e) => {
                failure = Some(Error::io(
                    &item.src,
                    "upload part",
                    std::io::Error::other(e.to_string()),
                ));
                break;
            }
        }
    }
    if failure.is_none() {
        parts.sort_by_key(|p| p.1);
        let whole = parts
            .iter()
            .skip(1)
            .fold(parts[0].3, |acc, p| checksum::combine(acc, p.3, p.2));
        let got = checksum::encode(whole);
        if got != crc {
            failure = Some(changed(item, crc, &got));
        }
    }
    if let Some(e) = failure {
        set.abort_all();
        store.abort_multipart(&item.key, &id).await;
        return Err(e);
    }
    let parts = parts.into_iter().map(|p| p.0).collect();
    if let Err(e) = store.complete_multipart(&item.key, &id, parts).await {
        store.abort_multipart(&item.key, &id).await;
        return Err(e);
    }
    Ok(())
}

/// Writes `bytes` at `dest` with its mode and mtime: temp file beside it, then rename.
pub fn place_bytes(dest: &Path, bytes: &[u8], mode: u32, mtime_ns: i64) -> std::io::Result<()> {
    let tmp = TempFile(temp_path(dest));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp.0)?;
    f.write_all_at(bytes, 0)?;
    f.set_permissions(Permissions::from_mode(mode & PERMISSION_BITS))?;
    f.set_times(FileTimes::new().set_modified(mtime(mtime_ns)))?;
    drop(f);
    std::fs::rename(&tmp.0, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_name_is_hidden_beside_the_final_one() {
        assert_eq!(
            temp_path(Path::new("/a/b/out.txt")),
            PathBuf::from("/a/b/.out.txt.ferry-tmp")
        );
    }

    #[test]
    fn write_atomic_leaves_only_the_final_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("sub/x.ec");
        write_atomic(&dest, b"3\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"3\n");
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.ec")]);
    }

    #[test]
    fn a_path_through_a_symlinked_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("outside/sub")).unwrap();
        std::fs::create_dir_all(d.path().join("wd")).unwrap();
        std::os::unix::fs::symlink("../outside", d.path().join("wd/link")).unwrap();
        let e = check_beneath(&d.path().join("wd"), "link/sub/pwn").unwrap_err();
        assert!(
            e.to_string().contains("never writes through symlinks"),
            "{e}"
        );
        check_beneath(&d.path().join("wd"), "new/dir/file").unwrap();
        check_beneath(&d.path().join("wd"), "link").unwrap();
    }

    #[test]
    fn create_dirs_refuses_to_go_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("link")).unwrap();
        let e = create_dirs(&d.path().join("link/inner")).unwrap_err();
        assert!(
            e.to_string().contains("never writes through symlinks"),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_is_placed_verbatim_and_replaced_when_its_target_changes() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("l");
        place_symlink(&l, "../../etc/passwd").unwrap();
        assert_eq!(
            std::fs::read_link(&l).unwrap(),
            PathBuf::from("../../etc/passwd")
        );
        place_symlink(&l, "other").unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), PathBuf::from("other"));
    }
}
