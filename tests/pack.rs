//! The workdir's small files travel packed: a handful of requests for thousands of files,
//! verified per file, resumable after kill -9, and version 1 manifests still work.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::*;

/// `n` files of 1–64 KiB in nested directories (deterministic), plus an empty dir and a link.
fn workdir(base: &Path, n: u32) -> PathBuf {
    let wd = base.join("jobs/000/7");
    for i in 0..n {
        let size = 1024 + (i.wrapping_mul(2654435761) % (63 * 1024));
        let p = wd.join(format!("d{:02}/e{}/f{i:05}.txt", i % 10, (i / 10) % 5));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let b: Vec<u8> = (0..size).map(|j| (j ^ i).wrapping_mul(31) as u8).collect();
        fs::write(p, b).unwrap();
    }
    fs::create_dir_all(wd.join("empty")).unwrap();
    std::os::unix::fs::symlink("d00", wd.join("link")).unwrap();
    wd
}

/// Total S3 requests in the last `requests get=… put=… head=… multipart=…` of a log.
fn requests(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("requests get="))
        .unwrap();
    let rest = &line[line.find("requests get=").unwrap() + "requests ".len()..];
    rest.split_whitespace()
        .take(4)
        .map(|kv| {
            kv.split('=')
                .nth(1)
                .unwrap()
                .trim_end_matches(';')
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

fn stage_cmd(bucket: &str, wd: &Path) -> Vec<String> {
    [
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "7",
        "--workdir",
        wd.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(args: &[String]) -> std::process::Child {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Starts `args`, kills it with SIGKILL after `ms`; true if it was still running.
fn kill_after(args: &[String], ms: u64) -> bool {
    let mut c = spawn(args);
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let running = c.try_wait().unwrap().is_none();
    let _ = c.kill();
    let _ = c.wait();
    running
}

fn placed(root: &Path, wd: &Path) -> PathBuf {
    root.join(wd.strip_prefix("/").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_3000_file_workdir_travels_in_at_most_20_requests_each_way() {
    let bucket = bucket("pack-3000").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = workdir(tmp.path(), 3000);
    let args = stage_cmd(&bucket, &wd);
    let o = ferry(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let up = requests(&stderr(&o));
    let url = ok(o);
    assert!(up <= 20, "stage made {up} requests");
    let root = tmp.path().join("pod");
    let o = ferry(&["init", "--manifest", &url, "--root", root.to_str().unwrap()]);
    let down = requests(&stderr(&o));
    ok(o);
    assert!(down <= 20, "init made {down} requests");
    assert_eq!(snapshot(&placed(&root, &wd)), snapshot(&wd));
    // No object per small file: packs, the manifest and init's attempt record.
    let k = keys(&bucket).await;
    assert!(k.len() <= 12, "{k:?}");
    assert!(!k.iter().any(|k| k.contains("/workdir/")), "{k:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_init_killed_during_a_packed_download_finishes_when_run_again() {
    let bucket = bucket("pack-kill-init").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = workdir(tmp.path(), 3000);
    let args = stage_cmd(&bucket, &wd);
    let url = ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let root = tmp.path().join("pod");
    let init: Vec<String> = ["init", "--manifest", &url, "--root", root.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    fs::create_dir_all(&root).unwrap();
    let mut partial = false;
    for ms in [150, 300, 500, 800] {
        kill_after(&init, ms);
        let n = snapshot(&root)
            .iter()
            .filter(|(_, k, _)| k.starts_with("file"))
            .count();
        partial |= n < 3000;
    }
    assert!(
        partial,
        "at least one kill landed before every file was placed"
    );
    let o = ferry(&init.iter().map(String::as_str).collect::<Vec<_>>());
    let log = stderr(&o);
    ok(o);
    assert_eq!(snapshot(&placed(&root, &wd)), snapshot(&wd));
    assert!(temp_files(&root).is_empty(), "{:?}", temp_files(&root));
    assert!(log.contains("init done"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_killed_during_a_packed_upload_finishes_when_run_again() {
    let bucket = bucket("pack-kill-stage").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = workdir(tmp.path(), 3000);
    let args = stage_cmd(&bucket, &wd);
    let manifest = "p/jobs/7/manifest.json";
    let mut interrupted = false;
    for ms in [100, 250, 400] {
        if kill_after(&args, ms) && get(&bucket, manifest).await.is_none() {
            interrupted = true;
        }
    }
    assert!(
        interrupted,
        "at least one kill landed before the manifest was written"
    );
    let url = ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let root = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        root.to_str().unwrap(),
    ]));
    assert_eq!(snapshot(&placed(&root, &wd)), snapshot(&wd));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_pack_is_refused_by_the_files_checksum_and_leaves_nothing_partial() {
    let bucket = bucket("pack-corrupt").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = workdir(tmp.path(), 20);
    let args = stage_cmd(&bucket, &wd);
    let url = ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let key = "p/jobs/7/packs/00000";
    let mut b = get(&bucket, key).await.unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    put(&bucket, key, &b).await;
    let root = tmp.path().join("pod");
    let o = ferry(&["init", "--manifest", &url, "--root", root.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o));
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains(".txt in s3://") && last.contains(key),
        "{last}"
    );
    assert!(temp_files(&root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_1_manifest_with_one_object_per_file_is_still_placed() {
    let bucket = bucket("pack-v1").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = workdir(tmp.path(), 30);
    let args = stage_cmd(&bucket, &wd);
    let url = ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    // What a version 1 stage wrote: every workdir file as its own object, no packs.
    let mkey = "p/jobs/7/manifest.json";
    let mut m: serde_json::Value =
        serde_json::from_slice(&get(&bucket, mkey).await.unwrap()).unwrap();
    m["version"] = 1.into();
    m["workdir"].as_object_mut().unwrap().remove("packs");
    for e in m["workdir"]["entries"].as_array().unwrap() {
        if e["kind"] == "file" {
            let rel = e["path"].as_str().unwrap();
            put(
                &bucket,
                &format!("p/jobs/7/workdir/{rel}"),
                &fs::read(wd.join(rel)).unwrap(),
            )
            .await;
        }
    }
    for k in keys(&bucket).await.iter().filter(|k| k.contains("/packs/")) {
        client()
            .await
            .delete_object()
            .bucket(&bucket)
            .key(k)
            .send()
            .await
            .unwrap();
    }
    put(&bucket, mkey, &serde_json::to_vec(&m).unwrap()).await;
    let root = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        root.to_str().unwrap(),
    ]));
    assert_eq!(snapshot(&placed(&root, &wd)), snapshot(&wd));
}

/// Stages an empty workdir, runs init into `root`, and has "the job" write `n` files there.
async fn job_writes_files(bucket: &str, tmp: &Path, n: u32) -> (String, PathBuf, PathBuf) {
    let wd = tmp.join("head/jobs/000/7");
    fs::create_dir_all(&wd).unwrap();
    let args = stage_cmd(bucket, &wd);
    let url = ok(ferry(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let root = tmp.join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        root.to_str().unwrap(),
    ]));
    let pod_wd = placed(&root, &wd);
    workdir(&tmp.join("gen"), n);
    let made = tmp.join("gen/jobs/000/7");
    for e in walk_files(&made) {
        let to = pod_wd.join(e.strip_prefix(&made).unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&e, &to).unwrap();
    }
    fs::write(pod_wd.join("galaxy_7.ec"), b"0\n").unwrap();
    (url, root, wd)
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(walk_files(&p));
        } else if m.is_file() {
            out.push(p);
        }
    }
    out
}

/// Where the sidecar of job 7's first attempt writes its record.
const DONE_KEY: &str = "p/jobs/7/attempts/1/done.json";

/// Runs the sidecar of job 7 (the tool has ended) and returns its done.json.
async fn sidecar_done(bucket: &str, url: &str, root: &Path) -> serde_json::Value {
    let r = root.to_str().unwrap();
    ok(ferry(&[
        "sidecar",
        "--manifest",
        url,
        "--root",
        r,
        "--quiet-ms",
        "0",
    ]));
    serde_json::from_slice(&get(bucket, DONE_KEY).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_3000_file_workdir_change_comes_back_in_at_most_20_requests_each_way() {
    let bucket = bucket("pack-back").await;
    let tmp = tempfile::tempdir().unwrap();
    let (url, root, wd) = job_writes_files(&bucket, tmp.path(), 3000).await;
    let done = sidecar_done(&bucket, &url, &root).await;
    let up: u64 = ["get", "put", "head", "multipart"]
        .iter()
        .map(|k| done["requests"][k].as_u64().unwrap())
        .sum();
    assert!(up <= 20, "sidecar made {up} requests: {}", done["requests"]);
    assert!(!done["packs"].as_array().unwrap().is_empty());
    let o = ferry(&["collect", "--manifest", &url]);
    let down = requests(&stderr(&o));
    ok(o);
    assert!(down <= 20, "collect made {down} requests");
    assert_eq!(snapshot(&wd), snapshot(&placed(&root, &wd)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_done_json_whose_pack_member_lies_outside_its_pack_is_refused() {
    let bucket = bucket("pack-bad-done").await;
    let tmp = tempfile::tempdir().unwrap();
    let (url, root, wd) = job_writes_files(&bucket, tmp.path(), 10).await;
    let key = DONE_KEY;
    let mut done = sidecar_done(&bucket, &url, &root).await;
    done["packs"][0]["members"][0]["offset"] = (1u64 << 40).into();
    put(&bucket, key, &serde_json::to_vec(&done).unwrap()).await;
    let o = ferry(&["collect", "--manifest", &url]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("outside the pack"), "{}", stderr(&o));
    assert!(!wd.join("d00").exists(), "nothing was placed");
}
