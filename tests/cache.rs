//! The node-local reference cache (`init --cache-dir`) against a real S3 server: jobs on one
//! node share index files, downloaded once, checked on every use, evicted least recently used.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::*;

const MIB: usize = 1 << 20;

fn write(p: &Path, bytes: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// `len` bytes that differ per `seed` and per MiB (so no two MiB are equal).
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..MIB as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut out = Vec::with_capacity(len);
    for n in 0..len.div_ceil(MIB) {
        let take = MIB.min(len - out.len());
        let start = out.len();
        out.extend_from_slice(&block[..take]);
        out[start] = n as u8;
    }
    out
}

/// Stages job `id` (a tiny workdir) with `indices` under `head`; returns the manifest URL.
fn stage(bucket: &str, head: &Path, id: &str, indices: &[&Path]) -> String {
    let wd = head.join("jobs").join(id);
    write(&wd.join(format!("galaxy_{id}.sh")), b"#!/bin/sh\n");
    let url = format!("s3://{bucket}/ferry");
    let mut args = vec![
        "stage".to_string(),
        "--url".into(),
        url,
        "--job-id".into(),
        id.into(),
        "--workdir".into(),
        wd.to_str().unwrap().into(),
    ];
    for i in indices {
        args.push("--index".into());
        args.push(i.to_str().unwrap().into());
    }
    ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

fn init_args<'a>(url: &'a str, root: &'a Path, cache: &'a Path) -> Vec<&'a str> {
    let (root, cache) = (root.to_str().unwrap(), cache.to_str().unwrap());
    vec![
        "init",
        "--manifest",
        url,
        "--root",
        root,
        "--cache-dir",
        cache,
    ]
}

/// Runs `ferry init` with the cache; returns its log.
fn init(url: &str, root: &Path, cache: &Path, extra: &[&str]) -> String {
    let mut args = init_args(url, root, cache);
    args.extend_from_slice(extra);
    let out = ferry(&args);
    let log = stderr(&out);
    ok(out);
    log
}

/// A number from the init summary's `index cache:` part, e.g. `bytes_downloaded`.
fn cache_field(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("init done") && l.contains("index cache:"))
        .unwrap_or_else(|| panic!("no init summary with the cache in:\n{log}"));
    let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The pin file of attempt 1 of job `id` staged at `url`.
fn pin_of(cache: &Path, url: &str, id: &str) -> PathBuf {
    cache.join("pins").join(ferry::cache::pin_name(id, url, 1))
}

/// Where absolute `path` of the head node lands under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap())
}

/// True if both files hold the same bytes (read in chunks: the files are large).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 4 * MIB], vec![0u8; 4 * MIB]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn objects(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// The index path is a symlink into the cache and reads as the head node's file.
fn assert_placed(root: &Path, index: &Path, cache: &Path) {
    let placed = under(root, index);
    let target = fs::read_link(&placed).unwrap();
    assert!(target.starts_with(cache.join("objects")), "{target:?}");
    assert!(same_bytes(&placed, index), "{} differs", placed.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_inits_of_the_same_index_download_it_once() {
    let bucket = bucket("cache_concurrent").await;
    let tmp = tempfile::tempdir().unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    let index = head.join("refs/genome.fa");
    let size = 300 * MIB;
    write(&index, &pattern(1, size));
    let urls = [
        stage(&bucket, &head, "1", &[&index]),
        stage(&bucket, &head, "2", &[&index]),
    ];
    let roots = [tmp.path().join("r1"), tmp.path().join("r2")];
    let children: Vec<_> = urls
        .iter()
        .zip(&roots)
        .map(|(url, root)| {
            let mut cmd = Command::new(ferry_bin());
            cmd.args(init_args(url, root, &cache))
                .env_remove("FERRY_MANIFEST")
                .env_remove("FERRY_ROOT")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (k, v) in s3_env() {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let logs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let log = stderr(&out);
            assert!(out.status.success(), "init failed:\n{log}");
            log
        })
        .collect();
    let total = |f: &str| logs.iter().map(|l| cache_field(l, f)).sum::<u64>();
    assert_eq!(total("bytes_downloaded"), size as u64, "{logs:#?}");
    assert_eq!(total("bytes_from_cache"), size as u64, "{logs:#?}");
    assert_eq!((total("misses"), total("hits")), (1, 1), "{logs:#?}");
    for root in &roots {
        assert_placed(root, &index, &cache);
    }
    assert_eq!(
        fs::read_link(under(&roots[0], &index)).unwrap(),
        fs::read_link(under(&roots[1], &index)).unwrap()
    );
    assert_eq!(objects(&cache).len(), 1);
    assert_eq!(fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_job_downloads_no_index_bytes() {
    let bucket = bucket("cache_second").await;
    let tmp = tempfile::tempdir().unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    // A file index and a directory index (bwa-style: several files, one of them empty).
    let fasta = head.join("refs/hg/genome.fa");
    write(&fasta, &pattern(2, 3 * MIB + 5));
    let dir = head.join("refs/bwa");
    write(&dir.join("genome.bwt"), &pattern(3, 2 * MIB));
    write(&dir.join("genome.sa"), &pattern(4, 20_000));
    write(&dir.join("sub/genome.ann"), b"");
    let url1 = stage(&bucket, &head, "1", &[&fasta, &dir]);
    let url2 = stage(&bucket, &head, "2", &[&fasta, &dir]);
    let (r1, r2) = (tmp.path().join("r1"), tmp.path().join("r2"));

    let first = init(&url1, &r1, &cache, &[]);
    let bytes = (3 * MIB + 5 + 2 * MIB + 20_000) as u64;
    assert_eq!(cache_field(&first, "bytes_downloaded"), bytes, "{first}");
    assert_eq!(cache_field(&first, "misses"), 4, "{first}");

    let second = init(&url2, &r2, &cache, &[]);
    assert_eq!(cache_field(&second, "bytes_downloaded"), 0, "{second}");
    assert_eq!(cache_field(&second, "misses"), 0, "{second}");
    assert_eq!(cache_field(&second, "hits"), 4, "{second}");
    assert_eq!(cache_field(&second, "bytes_from_cache"), bytes, "{second}");
    for root in [&r1, &r2] {
        assert_placed(root, &fasta, &cache);
        for f in ["genome.bwt", "genome.sa", "sub/genome.ann"] {
            assert_placed(root, &dir.join(f), &cache);
        }
    }
    // Each job pins what it uses until its sidecar is done.
    for (id, url) in [("1", &url1), ("2", &url2)] {
        let pin = fs::read_to_string(pin_of(&cache, url, id)).unwrap();
        assert_eq!(pin.lines().count(), 4, "{pin}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_cache_entry_is_detected_and_replaced() {
    let bucket = bucket("cache_corrupt").await;
    let tmp = tempfile::tempdir().unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    let index = head.join("refs/genome.fa");
    write(&index, &pattern(5, 3 * MIB));
    let url1 = stage(&bucket, &head, "1", &[&index]);
    let url2 = stage(&bucket, &head, "2", &[&index]);
    init(&url1, &tmp.path().join("r1"), &cache, &[]);

    let [entry] = objects(&cache).try_into().unwrap();
    let object = cache.join("objects").join(&entry);
    fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&object).unwrap();
    bytes[MIB + 7] ^= 0x01;
    fs::write(&object, &bytes).unwrap();

    let r2 = tmp.path().join("r2");
    let log = init(&url2, &r2, &cache, &[]);
    assert!(
        log.contains(&format!("entry {} is corrupted", object.display())),
        "{log}"
    );
    assert_eq!(cache_field(&log, "corrupted"), 1, "{log}");
    assert_eq!(cache_field(&log, "hits"), 0, "{log}");
    assert_eq!(
        cache_field(&log, "bytes_downloaded"),
        3 * MIB as u64,
        "{log}"
    );
    assert_placed(&r2, &index, &cache);
    assert!(same_bytes(&object, &index));
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_pinned_entries_and_drops_the_least_recently_used() {
    let bucket = bucket("cache_evict").await;
    let tmp = tempfile::tempdir().unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    let index = |name: &str, seed: u32| {
        let p = head.join("refs").join(name);
        write(&p, &pattern(seed, MIB));
        p
    };
    let (a, b, c, d) = (
        index("a", 10),
        index("b", 11),
        index("c", 12),
        index("d", 13),
    );
    let root = |id: &str| tmp.path().join(format!("r{id}"));
    // Runs job `id` on index `i`; a finished job's sidecar removes its pin.
    let job = |id: &str, i: &Path, finish: bool, extra: &[&str]| {
        let url = stage(&bucket, &head, id, &[i]);
        let log = init(&url, &root(id), &cache, extra);
        if finish {
            let wd = under(&root(id), &head.join("jobs").join(id));
            write(&wd.join(format!("galaxy_{id}.ec")), b"0\n");
            let cache_env = [("FERRY_CACHE_DIR", cache.to_str().unwrap())];
            let r = root(id);
            let args = [
                "sidecar",
                "--manifest",
                &url,
                "--root",
                r.to_str().unwrap(),
                "--quiet-ms",
                "50",
            ];
            ok(ferry_with(&args, &cache_env));
            assert!(!pin_of(&cache, &url, id).exists());
        }
        log
    };
    job("1", &a, false, &[]); // still running: `a` stays pinned though least recently used
    job("2", &b, true, &[]);
    job("3", &d, true, &[]);
    job("4", &b, true, &[]); // a hit: `b` is now more recently used than `d`
    assert_eq!(objects(&cache).len(), 3);
    let log = job("5", &c, false, &["--cache-max-bytes", "3MiB"]);
    assert!(log.contains("evicted 1 entries"), "{log}");

    // The entry a job's index symlink points to (it dangles once evicted).
    let addr = |id: &str, p: &Path| {
        let target = fs::read_link(under(&root(id), p)).unwrap();
        target.file_name().unwrap().to_string_lossy().to_string()
    };
    let mut kept = vec![addr("1", &a), addr("4", &b), addr("5", &c)];
    kept.sort();
    assert_eq!(objects(&cache), kept);
    assert!(!under(&root("3"), &d).exists(), "d was evicted");
    assert_placed(&root("1"), &a, &cache);
    assert_placed(&root("5"), &c, &cache);
}

/// Runs `ferry init` with the cache as another user, the way pods of several UIDs share a node.
fn init_as(uid: u32, url: &str, root: &Path, cache: &Path, extra: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    fs::create_dir_all(root).unwrap();
    std::os::unix::fs::chown(root, Some(uid), Some(uid)).unwrap();
    let mut args = init_args(url, root, cache);
    args.extend_from_slice(extra);
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args(&args)
        .uid(uid)
        .gid(uid)
        .env_remove("FERRY_STATE_DIR");
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "init as uid {uid} failed:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_of_two_uids_share_the_cache_without_permission_errors() {
    let bucket = bucket("cache_uids").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    let (index, other) = (head.join("refs/genome.fa"), head.join("refs/other.fa"));
    write(&index, &pattern(1, 3 * MIB));
    write(&other, &pattern(2, 2 * MIB));
    let a = stage(&bucket, &head, "a", &[&index]);
    let b = stage(&bucket, &head, "b", &[&index]);
    let c = stage(&bucket, &head, "c", &[&other]);

    // uid 1001 fills the cache (and creates its folders), uid 1002 uses that entry.
    let log = init_as(1001, &a, &tmp.path().join("pod-a"), &cache, &[]);
    assert_eq!(cache_field(&log, "misses"), 1);
    let log = init_as(1002, &b, &tmp.path().join("pod-b"), &cache, &[]);
    assert_eq!(cache_field(&log, "hits"), 1);
    assert_eq!(cache_field(&log, "bytes_downloaded"), 0);
    assert_placed(&tmp.path().join("pod-b"), &index, &cache);

    // Both jobs ended (their sidecars unpinned): uid 1002 may evict uid 1001's entry.
    for (id, url) in [("a", &a), ("b", &b)] {
        fs::remove_file(pin_of(&cache, url, id)).unwrap();
    }
    let max = (2 * MIB).to_string();
    init_as(
        1002,
        &c,
        &tmp.path().join("pod-c"),
        &cache,
        &["--cache-max-bytes", &max],
    );
    let left = objects(&cache);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(&format!("-{}", 2 * MIB)), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_the_same_id_from_two_prefixes_keep_their_own_pins() {
    let bucket = bucket("cache_pins").await;
    let tmp = tempfile::tempdir().unwrap();
    let (head, cache) = (tmp.path().join("head"), tmp.path().join("cache"));
    let index = head.join("refs/x.fa");
    write(&index, &pattern(5, MIB));
    let wd = head.join("jobs/1");
    write(&wd.join("run.sh"), b"x");
    let mut urls = Vec::new();
    for prefix in ["galaxy-a", "galaxy-b"] {
        let o = ferry(&[
            "stage",
            "--url",
            &format!("s3://{bucket}/{prefix}"),
            "--job-id",
            "1",
            "--workdir",
            wd.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ]);
        urls.push(ok(o));
    }
    for (i, url) in urls.iter().enumerate() {
        init(url, &tmp.path().join(format!("r{i}")), &cache, &[]);
    }
    for url in &urls {
        assert!(pin_of(&cache, url, "1").exists(), "{url}");
    }
    assert_eq!(fs::read_dir(cache.join("pins")).unwrap().count(), 2);
}
