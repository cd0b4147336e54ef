//! Re-runs finish what a killed run left, a full disk is reported, secrets stay out of logs.

mod support;

use std::fs;
use std::path::Path;
use support::*;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

async fn open_uploads(bucket: &str) -> Vec<String> {
    let out = client()
        .await
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    out.uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_aborts_the_multipart_upload_a_killed_run_left_open() {
    let bucket = bucket("stale-mpu").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("w");
    fs::create_dir_all(&wd).unwrap();
    fs::write(wd.join("big.bin"), vec![5u8; 100 << 20]).unwrap();
    let args = [
        "--part-size",
        "5MiB",
        "--concurrency",
        "1",
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        wd.to_str().unwrap(),
    ];
    // SIGKILL as soon as the upload is under way (its record exists): nothing can abort it.
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args(args).stderr(std::process::Stdio::null());
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let key = "p/jobs/1/workdir/big.bin";
    let recorded = || async {
        keys(&bucket)
            .await
            .iter()
            .any(|k| k.starts_with("p/jobs/1/uploads/"))
    };
    while !recorded().await {
        assert!(
            child.try_wait().unwrap().is_none(),
            "stage ended before it could be killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(open_uploads(&bucket).await, vec![key.to_string()]);
    ok(ferry(&args));
    assert!(open_uploads(&bucket).await.is_empty());
    assert_eq!(get(&bucket, key).await.unwrap().len(), 100 << 20);
    let records: Vec<String> = keys(&bucket)
        .await
        .into_iter()
        .filter(|k| k.contains("/uploads/"))
        .collect();
    assert!(records.is_empty(), "{records:?}");
}

/// A 1 MiB tmpfs mounted by the test (root only, as in CI), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=1m",
                "tmpfs",
                at.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_reported_with_the_path_and_leaves_nothing_partial() {
    let bucket = bucket("diskfull").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("head/w");
    fs::create_dir_all(&wd).unwrap();
    fs::write(wd.join("small.txt"), b"fits").unwrap();
    fs::write(wd.join("big.bin"), vec![1u8; 3 << 20]).unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        wd.to_str().unwrap(),
    ]));
    let root = tmp.path().join("pod");
    let _disk = Tmpfs::mount(&root);
    let o = ferry(&["init", "--manifest", &url, "--root", root.to_str().unwrap()]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("big.bin") && last.contains("No space left on device"),
        "{last}"
    );
    assert!(
        last.contains("sizeLimit"),
        "the message says what to fix: {last}"
    );
    let placed = root.join(wd.strip_prefix("/").unwrap());
    assert!(
        !placed.join("big.bin").exists(),
        "nothing partial at the final path"
    );
    assert!(temp_files(&root).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_key_never_appears_in_any_log_line() {
    let bucket = bucket("secrets").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    fs::create_dir_all(base.join("w")).unwrap();
    fs::write(base.join("w/a.txt"), b"a").unwrap();
    let trace = [("FERRY_LOG", "trace")];
    let mut logs = String::new();
    let o = ferry_with(
        &[
            "stage",
            "--url",
            &format!("s3://{bucket}/p"),
            "--job-id",
            "1",
            "--workdir",
            base.join("w").to_str().unwrap(),
        ],
        &trace,
    );
    logs += &stderr(&o);
    let url = ok(o);
    let away = tmp.path().join("away");
    fs::rename(&base, &away).unwrap();
    for args in [
        vec!["init", "--manifest", &url],
        vec!["sidecar", "--manifest", &url, "--timeout", "1"],
    ] {
        let o = ferry_with(&args, &trace);
        logs += &stderr(&o);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(logs.lines().count() > 50, "trace logging was on");
    assert!(
        !logs.contains(SECRET),
        "the secret access key leaked into the logs"
    );
}
