//! Packs: what ferry alone reads back (the workdir's small files) travels as a few objects
//! instead of one object per file, so thousands of small files cost a handful of requests.
//! Each pack holds its members' bytes back to back; the manifest records each member's offset,
//! and each file is verified on arrival by its own size and CRC64-NVME, as an unpacked one is.
//! Datasets (inputs, outputs, indices) are never packed: other tools read them from S3.

use crate::checksum;
use crate::error::{Error, Result};
use crate::manifest::{Entry, Member, Pack};
use crate::store::Store;
use crate::transfer::{self, Stats};
use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinSet;

/// Files up to this size are packed; bigger ones keep an object of their own.
pub const MEMBER_MAX: u64 = 1 << 20;

/// Packs in flight at most (each is held in memory while it moves), and at most `--concurrency`.
const IN_FLIGHT: usize = 8;

/// The largest pack, whatever `--part-size` says: a pack is read whole into memory on both
/// sides, and readers refuse small objects over `store::MAX_SMALL_OBJECT` (256 MiB).
pub const MAX_PACK: u64 = 64 << 20;

/// One local file to pack.
#[derive(Debug, Clone)]
pub struct Source {
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Groups files, in order, into packs of at most `target` bytes (a file is never split; a
/// group holds at least one file).
pub fn plan(files: Vec<Source>, target: u64) -> Vec<Vec<Source>> {
    let mut groups: Vec<Vec<Source>> = Vec::new();
    let mut size = 0u64;
    for f in files {
        match groups.last_mut() {
            Some(g) if size + f.size <= target => {
                size += f.size;
                g.push(f);
            }
            _ => {
                size = f.size;
                groups.push(vec![f]);
            }
        }
    }
    groups
}

/// Each member's checksum by workdir-relative path.
type Crcs = Vec<(String, String)>;

/// What [`upload`] sent: the packs for the manifest and each member's checksum by path.
pub struct Sent {
    pub packs: Vec<Pack>,
    pub crcs: HashMap<String, String>,
    pub files: u64,
    pub bytes: u64,
}

/// Reads each group's files once (their checksums come from the bytes read) and uploads the
/// group as object `key(n)`.
pub async fn upload(
    store: &Arc<Store>,
    key: impl Fn(usize) -> String,
    groups: Vec<Vec<Source>>,
    concurrency: usize,
) -> Result<Sent> {
    let in_flight = concurrency.clamp(1, IN_FLIGHT);
    let mut set = JoinSet::new();
    let mut done: Vec<(usize, Pack, Crcs)> = Vec::new();
    for (n, group) in groups.into_iter().enumerate() {
        while set.len() >= in_flight {
            done.push(join(&mut set).await?);
        }
        let (store, key) = (store.clone(), key(n));
        set.spawn(async move {
            let (bytes, pack, crcs) = tokio::task::spawn_blocking(move || read_group(key, group))
                .await
                .map_err(|e| Error::io("pack", "read", std::io::Error::other(e.to_string())))??;
            store.put_bytes(&pack.key, bytes, &pack.crc64nvme).await?;
            Ok::<_, Error>((n, pack, crcs))
        });
    }
    while !set.is_empty() {
        done.push(join(&mut set).await?);
    }
    done.sort_by_key(|d| d.0);
    let mut sent = Sent {
        packs: Vec::new(),
        crcs: HashMap::new(),
        files: 0,
        bytes: 0,
    };
    for (_, pack, crcs) in done {
        sent.files += pack.members.len() as u64;
        sent.bytes += pack.size;
        sent.crcs.extend(crcs);
        sent.packs.push(pack);
    }
    Ok(sent)
}

async fn join<T: 'static>(set: &mut JoinSet<Result<T>>) -> Result<T> {
    match set.join_next().await {
        Some(Ok(r)) => r.inspect_err(|_| set.abort_all()),
        Some(Err(e)) => {
            set.abort_all();
            Err(Error::io(
                "pack",
                "transfer",
                std::io::Error::other(e.to_string()),
            ))
        }
        None => Err(Error::io(
            "pack",
            "transfer",
            std::io::Error::other("no task"),
        )),
    }
}

/// Reads a group's files back to back (never through a symlink), checking each is still the
/// size it was listed with.
fn read_group(key: String, group: Vec<Source>) -> Result<(Vec<u8>, Pack, Crcs)> {
    let total: u64 = group.iter().map(|s| s.size).sum();
    let mut bytes = Vec::with_capacity(total as usize);
    let mut members = Vec::with_capacity(group.len());
    let mut crcs = Vec::with_capacity(group.len());
    let mut whole = checksum::of_bytes(b"");
    for s in group {
        let offset = bytes.len() as u64;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&s.path)
            .map_err(|e| Error::io(&s.path, "read", e))?;
        let n = std::io::Read::read_to_end(&mut f, &mut bytes)
            .map_err(|e| Error::io(&s.path, "read", e))? as u64;
        crate::sumcache::note_read(n);
        if n != s.size {
            return Err(Error::Checksum {
                what: format!(
                    "size of {} (it changed after ferry listed it; run again once it is written)",
                    s.path.display()
                ),
                expected: s.size.to_string(),
                actual: n.to_string(),
            });
        }
        let crc = checksum::of_bytes(&bytes[offset as usize..]);
        whole = checksum::combine(whole, crc, n);
        crcs.push((s.rel.clone(), checksum::encode(crc)));
        members.push(Member {
            path: s.rel,
            offset,
        });
    }
    let pack = Pack {
        key,
        size: bytes.len() as u64,
        crc64nvme: checksum::encode(whole),
        members,
    };
    Ok((bytes, pack, crcs))
}

/// Splits `entries` into the files held by `packs` and everything else.
pub fn split(entries: &[Entry], packs: &[Pack]) -> (Vec<Entry>, Vec<Entry>) {
    let packed: std::collections::HashSet<&str> = packs
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.path.as_str()))
        .collect();
    entries
        .iter()
        .cloned()
        .partition(|e| packed.contains(e.path.as_str()))
}

/// Packs the small files among `entries` (files under `base`) as objects `<prefix>/NNNNN`,
/// reading each once; their checksums become those of the bytes sent. Returns the packs and
/// what they moved; the files not packed are left for one object each.
pub async fn upload_small(
    store: &Arc<Store>,
    base: &Path,
    entries: &mut [Entry],
    prefix: &str,
    part_size: u64,
    concurrency: usize,
) -> Result<(Vec<Pack>, Stats)> {
    let sources: Vec<Source> = entries
        .iter()
        .filter(|e| e.kind == crate::manifest::Kind::File && e.size <= MEMBER_MAX)
        .map(|e| Source {
            rel: e.path.clone(),
            path: base.join(&e.path),
            size: e.size,
        })
        .collect();
    let sent = upload(
        store,
        |n| format!("{prefix}/{n:05}"),
        plan(sources, part_size.min(MAX_PACK)),
        concurrency,
    )
    .await?;
    for e in entries.iter_mut() {
        if let Some(c) = sent.crcs.get(&e.path) {
            e.crc64nvme = Some(c.clone());
        }
    }
    let stats = Stats {
        files: sent.files,
        bytes: sent.bytes,
        ..Stats::default()
    };
    Ok((sent.packs, stats))
}

/// Places every member of `packs` under `base` (the workdir), verified per file, with its
/// entry's mode and mtime. A pack whose members are all in place already is not fetched.
pub async fn place(
    store: &Arc<Store>,
    packs: &[Pack],
    entries: &[Entry],
    base: &Path,
    concurrency: usize,
) -> Result<Stats> {
    let in_flight = concurrency.clamp(1, IN_FLIGHT);
    let by_path: HashMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut set = JoinSet::new();
    let mut stats = Stats::default();
    for p in packs {
        while set.len() >= in_flight {
            add(&mut stats, join(&mut set).await?);
        }
        let mut members: Vec<(PathBuf, Entry, u64)> = Vec::new();
        for m in &p.members {
            if let Some(e) = by_path.get(m.path.as_str()) {
                transfer::check_beneath(base, &m.path)?;
                members.push((base.join(&m.path), (*e).clone(), m.offset));
            }
        }
        let (store, pack) = (store.clone(), p.clone());
        set.spawn(async move { place_pack(&store, &pack, members).await });
    }
    while !set.is_empty() {
        add(&mut stats, join(&mut set).await?);
    }
    Ok(stats)
}

fn add(total: &mut Stats, s: Stats) {
    total.files += s.files;
    total.bytes += s.bytes;
    total.skipped_files += s.skipped_files;
    total.skipped_bytes += s.skipped_bytes;
}

/// GETs a whole pack; a body that breaks mid-transfer is fetched again (the SDK retries the
/// request itself, not a body that breaks after the headers).
async fn get_pack(store: &Store, key: &str) -> Result<Option<Vec<u8>>> {
    let mut attempt = 0u32;
    loop {
        match store.get_small(key).await {
            Err(Error::S3 { message, .. }) if attempt < 5 && message.starts_with("body broke") => {
                attempt += 1;
                tracing::warn!(
                    key,
                    "pack body broke mid-transfer ({message}); fetching it again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            r => return r,
        }
    }
}

async fn place_pack(
    store: &Store,
    pack: &Pack,
    members: Vec<(PathBuf, Entry, u64)>,
) -> Result<Stats> {
    let (missing, in_place) = tokio::task::spawn_blocking(move || {
        members.into_iter().partition::<Vec<_>, _>(|(dest, e, _)| {
            !transfer::already_in_place(dest, e.size, e.crc64nvme.as_deref().unwrap_or(""))
        })
    })
    .await
    .map_err(|e| Error::io("pack", "check", std::io::Error::other(e.to_string())))?;
    let mut stats = Stats {
        skipped_files: in_place.len() as u64,
        skipped_bytes: in_place.iter().map(|m| m.1.size).sum(),
        ..Stats::default()
    };
    if missing.is_empty() {
        return Ok(stats);
    }
    let bytes = get_pack(store, &pack.key)
        .await?
        .ok_or_else(|| Error::Missing {
            op: "get",
            bucket: store.bucket.clone(),
            key: pack.key.clone(),
            hint: " (a pack of workdir files)".into(),
        })?;
    if bytes.len() as u64 != pack.size {
        return Err(Error::Checksum {
            what: format!("size of s3://{}/{}", store.bucket, pack.key),
            expected: pack.size.to_string(),
            actual: bytes.len().to_string(),
        });
    }
    let (bucket, key) = (store.bucket.clone(), pack.key.clone());
    let placed = tokio::task::spawn_blocking(move || {
        let mut placed = (0u64, 0u64);
        for (dest, e, offset) in missing {
            let slice = &bytes[offset as usize..(offset + e.size) as usize];
            let got = checksum::encode(checksum::of_bytes(slice));
            let want = e.crc64nvme.clone().unwrap_or_default();
            if got != want {
                return Err(Error::Checksum {
                    what: format!(
                        "crc64nvme of {} in s3://{bucket}/{key} at offset {offset}",
                        dest.display()
                    ),
                    expected: want,
                    actual: got,
                });
            }
            if let Some(parent) = dest.parent() {
                transfer::create_dirs(parent)?;
            }
            transfer::place_bytes(&dest, slice, e.mode, e.mtime_ns)
                .map_err(|err| Error::io(&dest, "write", err))?;
            placed.0 += 1;
            placed.1 += e.size;
        }
        Ok::<_, Error>(placed)
    })
    .await
    .map_err(|e| Error::io("pack", "place", std::io::Error::other(e.to_string())))??;
    stats.files = placed.0;
    stats.bytes = placed.1;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(rel: &str, size: u64) -> Source {
        Source {
            rel: rel.into(),
            path: PathBuf::from(rel),
            size,
        }
    }

    #[test]
    fn files_are_grouped_in_order_up_to_the_target_size() {
        let groups = plan(
            vec![
                src("a", 4),
                src("b", 4),
                src("c", 3),
                src("d", 9),
                src("e", 0),
            ],
            8,
        );
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|s| s.rel.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
    }

    #[test]
    fn a_group_is_read_back_to_back_with_each_files_checksum() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"hello ").unwrap();
        std::fs::write(d.path().join("b"), b"world").unwrap();
        let group = ["a", "b"]
            .iter()
            .map(|n| Source {
                rel: n.to_string(),
                path: d.path().join(n),
                size: std::fs::metadata(d.path().join(n)).unwrap().len(),
            })
            .collect();
        let (bytes, pack, crcs) = read_group("k".into(), group).unwrap();
        assert_eq!(bytes, b"hello world");
        assert_eq!(pack.members[1].offset, 6);
        assert_eq!(
            pack.crc64nvme,
            checksum::encode(checksum::of_bytes(b"hello world"))
        );
        assert_eq!(crcs[1].1, checksum::encode(checksum::of_bytes(b"world")));
    }

    #[test]
    fn a_file_that_grew_since_it_was_listed_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"longer now").unwrap();
        let group = vec![Source {
            rel: "a".into(),
            path: d.path().join("a"),
            size: 3,
        }];
        let e = read_group("k".into(), group).unwrap_err();
        assert!(
            e.to_string().contains("changed after ferry listed it"),
            "{e}"
        );
    }
}
