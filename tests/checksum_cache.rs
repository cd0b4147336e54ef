//! The head reads a byte at most once: re-staging an unchanged input reads nothing; a changed
//! one is always read again; a missing, unwritable or forged cache only costs reads.
//! Reads are counted by ferry itself (`read N bytes from local files` in the stage summary).

mod support;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use support::*;

const MIB: usize = 1 << 20;

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// What one stage run reported.
struct Staged {
    url: String,
    read: u64,
    head: u64,
    put: u64,
}

fn number_after(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| {
            panic!("no `{label}` in the log:\n{text}");
        });
    let rest = &line[line.rfind(label).unwrap() + label.len()..];
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

fn reads_of(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("bytes from local files"))
        .unwrap();
    let before = &line[..line.find(" bytes from local files").unwrap()];
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

fn stage(bucket: &str, job: &str, wd: &Path, inputs: &[&Path], extra: &[&str]) -> Staged {
    let o = stage_output(bucket, job, wd, inputs, extra);
    let log = stderr(&o);
    let url = ok(o);
    Staged {
        url,
        read: reads_of(&log),
        head: number_after(&log, "head="),
        put: number_after(&log, "put="),
    }
}

fn stage_output(
    bucket: &str,
    job: &str,
    wd: &Path,
    inputs: &[&Path],
    extra: &[&str],
) -> std::process::Output {
    let url = format!("s3://{bucket}/p");
    let mut args = vec![
        "--part-size",
        "5MiB",
        "stage",
        "--url",
        &url,
        "--job-id",
        job,
        "--workdir",
        wd.to_str().unwrap(),
    ];
    for i in inputs {
        args.extend(["--input", i.to_str().unwrap()]);
    }
    args.extend(extra);
    ferry(&args)
}

/// The crc64nvme the manifest at `url` records for the input at `path`.
async fn manifest_crc(bucket: &str, url: &str, path: &Path) -> String {
    let key = url.strip_prefix(&format!("s3://{bucket}/")).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&get(bucket, key).await.unwrap()).unwrap();
    let input = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == path.to_str().unwrap())
        .unwrap();
    input["crc64nvme"].as_str().unwrap().to_string()
}

fn crc_of(b: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b);
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// A head with a 10-byte workdir and the given inputs.
fn head(tmp: &Path, inputs: &[(&str, Vec<u8>)]) -> (PathBuf, Vec<PathBuf>) {
    let wd = tmp.join("jobs/1");
    fs::create_dir_all(&wd).unwrap();
    fs::write(wd.join("tool.sh"), b"echo hi!!\n").unwrap();
    let files = inputs
        .iter()
        .map(|(name, b)| {
            let p = tmp.join("files").join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b).unwrap();
            p
        })
        .collect();
    (wd, files)
}

/// Rewrites `p` with other bytes of the same size and puts its mtime back (the ctime moves).
fn rewrite_keeping_size_and_mtime(p: &Path, b: &[u8]) {
    let mtime = fs::metadata(p).unwrap().modified().unwrap();
    fs::write(p, b).unwrap();
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(mtime).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restaging_unchanged_inputs_reads_no_byte_and_costs_one_head_each() {
    let bucket = bucket("sum-unchanged").await;
    let tmp = tempfile::tempdir().unwrap();
    let small = bytes(100 * 1024, 1);
    let big = bytes(12 * MIB, 2); // multipart at 5 MiB parts
    let (wd, ins) = head(tmp.path(), &[("a.dat", small.clone()), ("b.dat", big)]);
    let inputs: Vec<&Path> = ins.iter().map(PathBuf::as_path).collect();
    let first = stage(&bucket, "1", &wd, &inputs, &[]);
    // Workdir and the single-PUT input: one read each (checksummed while sent). The multipart
    // input is read twice: its checksum is object metadata set before the first part.
    assert_eq!(first.read, 10 + small.len() as u64 + 2 * 12 * MIB as u64);
    let again = stage(&bucket, "2", &wd, &inputs, &[]);
    assert_eq!(again.read, 10, "only the workdir is read again");
    assert_eq!(
        again.head, 3,
        "one HEAD per input, one for earlier attempts of the job"
    );
    assert_eq!(again.put, 2, "one pack and the manifest");
    assert_eq!(
        manifest_crc(&bucket, &again.url, &ins[0]).await,
        crc_of(&small)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_bytes_with_the_same_size_and_mtime_are_read_again() {
    let bucket = bucket("sum-ctime").await;
    let tmp = tempfile::tempdir().unwrap();
    let (wd, ins) = head(tmp.path(), &[("a.dat", bytes(4096, 1))]);
    stage(&bucket, "1", &wd, &[&ins[0]], &[]);
    let other = bytes(4096, 99);
    rewrite_keeping_size_and_mtime(&ins[0], &other);
    let again = stage(&bucket, "2", &wd, &[&ins[0]], &[]);
    assert_eq!(again.read, 10 + 4096);
    assert_eq!(
        manifest_crc(&bucket, &again.url, &ins[0]).await,
        crc_of(&other)
    );
    let key = format!("p/data{}", ins[0].display());
    assert_eq!(
        get(&bucket, &key).await.unwrap(),
        other,
        "S3 holds the new bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_by_rename_is_read_again() {
    let bucket = bucket("sum-rename").await;
    let tmp = tempfile::tempdir().unwrap();
    let (wd, ins) = head(tmp.path(), &[("a.dat", bytes(4096, 1))]);
    stage(&bucket, "1", &wd, &[&ins[0]], &[]);
    let mtime = fs::metadata(&ins[0]).unwrap().modified().unwrap();
    let other = bytes(4096, 7);
    let next = tmp.path().join("files/.a.dat.new");
    fs::write(&next, &other).unwrap();
    fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(&next, &ins[0]).unwrap();
    let again = stage(&bucket, "2", &wd, &[&ins[0]], &[]);
    assert_eq!(again.read, 10 + 4096);
    assert_eq!(
        manifest_crc(&bucket, &again.url, &ins[0]).await,
        crc_of(&other)
    );
}

/// A filesystem mounted by the test (root only, as in CI), unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(fstype: &str, opts: &str, at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", fstype, "-o", opts, fstype, at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting {fstype} needs root (CI runs as root)"
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_xattrs_the_cache_directory_serves_and_without_either_every_byte_is_read() {
    let bucket = bucket("sum-noxattr").await;
    let tmp = tempfile::tempdir().unwrap();
    // ramfs takes no user xattrs.
    let data = tmp.path().join("ramfs");
    let _ramfs = Mount::new("ramfs", "mode=0755", &data);
    let (wd, ins) = head(&data, &[("a.dat", bytes(8192, 3))]);
    let dir = tmp.path().join("sums");
    let with_dir = ["--checksum-cache", dir.to_str().unwrap()];
    assert_eq!(
        stage(&bucket, "1", &wd, &[&ins[0]], &with_dir).read,
        10 + 8192
    );
    assert_eq!(stage(&bucket, "2", &wd, &[&ins[0]], &with_dir).read, 10);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "one entry per inode"
    );
    // No xattrs and no directory: correct, only slower.
    let o = stage_output(&bucket, "3", &wd, &[&ins[0]], &[]);
    assert!(
        stderr(&o).contains("no --checksum-cache DIR"),
        "{}",
        stderr(&o)
    );
    assert_eq!(reads_of(&stderr(&o)), 10 + 8192);
    // A read-only cache directory: the same, with a warning naming it.
    let ro = tmp.path().join("ro");
    let _ro = Mount::new("tmpfs", "ro,mode=0700", &ro);
    let o = stage_output(
        &bucket,
        "4",
        &wd,
        &[&ins[0]],
        &["--checksum-cache", ro.to_str().unwrap()],
    );
    assert!(stderr(&o).contains("cannot write to checksum cache directory"));
    assert_eq!(reads_of(&stderr(&o)), 10 + 8192);
    let o = stage_output(
        &bucket,
        "5",
        &wd,
        &[&ins[0]],
        &["--checksum-cache", ro.to_str().unwrap()],
    );
    assert_eq!(reads_of(&stderr(&o)), 10 + 8192);
    ok(o);
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_stages_of_one_input_at_once_agree_and_the_next_reads_nothing() {
    let bucket = bucket("sum-sixteen").await;
    let tmp = tempfile::tempdir().unwrap();
    let content = bytes(3 * MIB, 5);
    let (wd, ins) = head(tmp.path(), &[("a.dat", content.clone())]);
    let url = format!("s3://{bucket}/p");
    let children: Vec<_> = (0..16)
        .map(|i| {
            let mut cmd = std::process::Command::new(ferry_bin());
            cmd.args(["stage", "--url", &url, "--job-id", &format!("j{i}")])
                .args(["--workdir", wd.to_str().unwrap()])
                .args(["--input", ins[0].to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            for (k, v) in s3_env() {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for c in children {
        let url = ok(c.wait_with_output().unwrap());
        assert_eq!(manifest_crc(&bucket, &url, &ins[0]).await, crc_of(&content));
    }
    assert_eq!(stage(&bucket, "after", &wd, &[&ins[0]], &[]).read, 10);
}

/// Writes a checksum cache entry by hand, as a user with write access to the file could.
fn forge(p: &Path, crc: &str) {
    let f = fs::File::open(p).unwrap();
    let m = f.metadata().unwrap();
    let raw = aws_smithy_types::base64::decode(crc).unwrap();
    let crc = u64::from_be_bytes(raw.try_into().unwrap());
    let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
    let value = format!(
        "1 {} {} {} {} 0 {} {crc:016x}",
        m.dev(),
        m.ino(),
        m.len(),
        ns(m.mtime(), m.mtime_nsec()),
        i64::MAX
    );
    let name = CString::new("user.ferry.crc64nvme").unwrap();
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_cache_entry_never_reaches_the_manifest_when_the_bytes_are_sent() {
    let bucket = bucket("sum-forged").await;
    let tmp = tempfile::tempdir().unwrap();
    let small = bytes(4096, 1);
    let big = bytes(11 * MIB, 2);
    let (wd, ins) = head(
        tmp.path(),
        &[("a.dat", small.clone()), ("b.dat", big.clone())],
    );
    // Entries that lie about the bytes (or bytes that changed after their checksum was taken).
    forge(&ins[0], &crc_of(b"something else"));
    forge(&ins[1], &crc_of(b"something else"));
    let s = stage(&bucket, "1", &wd, &[&ins[0], &ins[1]], &[]);
    assert_eq!(manifest_crc(&bucket, &s.url, &ins[0]).await, crc_of(&small));
    assert_eq!(manifest_crc(&bucket, &s.url, &ins[1]).await, crc_of(&big));
    let root = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &s.url,
        "--root",
        root.to_str().unwrap(),
    ]));
    let placed = |p: &Path| fs::read(root.join(p.strip_prefix("/").unwrap())).unwrap();
    assert_eq!(placed(&ins[0]), small);
    assert_eq!(placed(&ins[1]), big);
    // The lying entries were replaced by true ones: the next stage reads nothing.
    assert_eq!(stage(&bucket, "2", &wd, &[&ins[0], &ins[1]], &[]).read, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_checksum_cache_reads_every_byte_even_past_a_forged_entry_matching_an_older_upload() {
    let bucket = bucket("sum-off").await;
    let tmp = tempfile::tempdir().unwrap();
    let old = bytes(4096, 1);
    let (wd, ins) = head(tmp.path(), &[("a.dat", old.clone())]);
    stage(&bucket, "1", &wd, &[&ins[0]], &[]);
    let new = bytes(4096, 2);
    rewrite_keeping_size_and_mtime(&ins[0], &new);
    // The documented limit of the trust model: whoever can write the file can make the cache
    // vouch for the older upload, and that upload is what the job sees…
    forge(&ins[0], &crc_of(&old));
    let trusted = stage(&bucket, "2", &wd, &[&ins[0]], &[]);
    assert_eq!(trusted.read, 10);
    assert_eq!(
        manifest_crc(&bucket, &trusted.url, &ins[0]).await,
        crc_of(&old)
    );
    // …unless the cache is off.
    let off = stage(&bucket, "3", &wd, &[&ins[0]], &["--no-checksum-cache"]);
    assert_eq!(off.read, 10 + 4096);
    assert_eq!(manifest_crc(&bucket, &off.url, &ins[0]).await, crc_of(&new));
}
