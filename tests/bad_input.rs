//! Bad input gets one clear line, a documented exit code, and nothing partial at a final path.

mod support;

use std::fs;
use std::path::PathBuf;
use support::*;

struct Staged {
    bucket: String,
    url: String,
    base: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Stages a small job (workdir file + one input) and moves the head's files away.
async fn staged(name: &str) -> Staged {
    let bucket = bucket(name).await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    fs::create_dir_all(base.join("w/job")).unwrap();
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("w/job/run.sh"), b"echo hi").unwrap();
    fs::write(base.join("d/in.dat"), vec![b'x'; 4096]).unwrap();
    let b = base.to_str().unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        &format!("{b}/w/job"),
        "--input",
        &format!("{b}/d/in.dat"),
    ]));
    fs::rename(&base, tmp.path().join("away")).unwrap();
    Staged {
        bucket,
        url,
        base,
        _tmp: tmp,
    }
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// The error is one line on stderr (the last), mentioning every `needle`.
fn one_line_error(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("ERROR"), "last line is the error: {err}");
    for n in needles {
        assert!(last.contains(n), "`{n}` missing from: {last}");
    }
}

fn input_key(s: &Staged) -> String {
    format!("p/data{}/d/in.dat", s.base.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refuses_a_malformed_manifest() {
    let s = staged("malformed").await;
    put(
        &s.bucket,
        "p/jobs/1/manifest.json",
        b"{\"version\": 1, \"job_id\": ",
    )
    .await;
    let o = ferry(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 3);
    one_line_error(&o, &[&s.url, "not valid JSON"]);
    assert!(!s.base.exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refuses_a_manifest_of_another_version() {
    let s = staged("version").await;
    let mut m: serde_json::Value =
        serde_json::from_slice(&get(&s.bucket, "p/jobs/1/manifest.json").await.unwrap()).unwrap();
    m["version"] = 3.into();
    put(
        &s.bucket,
        "p/jobs/1/manifest.json",
        m.to_string().as_bytes(),
    )
    .await;
    let o = ferry(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 3);
    one_line_error(&o, &["version 3 is not supported"]);
    assert!(!s.base.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refuses_a_key_that_escapes_its_root() {
    let s = staged("escape").await;
    let mut m: serde_json::Value =
        serde_json::from_slice(&get(&s.bucket, "p/jobs/1/manifest.json").await.unwrap()).unwrap();
    m["workdir"]["entries"][0]["path"] = "../../../escaped.txt".into();
    put(
        &s.bucket,
        "p/jobs/1/manifest.json",
        m.to_string().as_bytes(),
    )
    .await;
    let o = ferry(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 3);
    one_line_error(&o, &["../../../escaped.txt", "could escape its root"]);
    assert!(!s.base.exists());
    assert!(!s.base.parent().unwrap().join("escaped.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_copied_to_another_key_is_refused() {
    let s = staged("copied").await;
    let body = get(&s.bucket, "p/jobs/1/manifest.json").await.unwrap();
    put(&s.bucket, "p/jobs/2/manifest.json", &body).await;
    let o = ferry(&[
        "init",
        "--manifest",
        &format!("s3://{}/p/jobs/2/manifest.json", s.bucket),
    ]);
    assert_eq!(code(&o), 3);
    one_line_error(&o, &["not this URL"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_names_a_missing_object_and_leaves_nothing_partial() {
    let s = staged("missing").await;
    client()
        .await
        .delete_object()
        .bucket(&s.bucket)
        .key(input_key(&s))
        .send()
        .await
        .unwrap();
    let o = ferry(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 5);
    one_line_error(&o, &[&input_key(&s), "not found"]);
    assert!(!s.base.join("d/in.dat").exists());
    assert!(temp_files(&s.base).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_detects_a_corrupted_object_and_leaves_nothing_partial() {
    let s = staged("corrupt").await;
    put(&s.bucket, &input_key(&s), &[b'y'; 4096]).await;
    let o = ferry(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 8);
    one_line_error(&o, &[&input_key(&s), "crc64nvme"]);
    assert!(!s.base.join("d/in.dat").exists());
    assert!(temp_files(&s.base).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_reported_as_such() {
    let s = staged("creds").await;
    let o = ferry_with(
        &["init", "--manifest", &s.url],
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")],
    );
    assert_eq!(code(&o), 6);
    one_line_error(
        &o,
        &[
            "p/jobs/1/manifest.json",
            "credentials or permission refused",
        ],
    );
    assert!(
        !stderr(&o).contains("not-the-secret"),
        "the secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn collect_without_done_json_writes_a_non_zero_exit_code() {
    let s = staged("nodone").await;
    fs::rename(s.base.parent().unwrap().join("away"), &s.base).unwrap();
    let o = ferry(&["collect", "--manifest", &s.url, "--wait", "1"]);
    assert_eq!(code(&o), 9);
    one_line_error(&o, &["no done.json", "wrote exit code 1"]);
    assert_eq!(
        fs::read_to_string(s.base.join("w/job/galaxy_1.ec")).unwrap(),
        "1\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_that_never_writes_its_exit_code_never_looks_successful() {
    let s = staged("noec").await;
    ok(ferry(&["init", "--manifest", &s.url]));
    let o = ferry(&["sidecar", "--manifest", &s.url, "--timeout", "1"]);
    assert!(
        o.status.success(),
        "a failed tool is data, not a sidecar failure: {}",
        stderr(&o)
    );
    let done: serde_json::Value = serde_json::from_slice(
        &get(&s.bucket, "p/jobs/1/attempts/1/done.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(done["reason"], "timeout");
    assert!(done["exit_code"].is_null());
    fs::remove_dir_all(&s.base).unwrap();
    fs::rename(s.base.parent().unwrap().join("away"), &s.base).unwrap();
    let o = ferry(&["collect", "--manifest", &s.url]);
    assert_eq!(code(&o), 9);
    one_line_error(&o, &["without an exit code"]);
    assert_eq!(
        fs::read_to_string(s.base.join("w/job/galaxy_1.ec")).unwrap(),
        "1\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_refuses_an_input_outside_every_mount_root() {
    let bucket = bucket("outside").await;
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("w");
    fs::create_dir_all(&wd).unwrap();
    fs::write(tmp.path().join("in.dat"), b"x").unwrap();
    let o = ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        wd.to_str().unwrap(),
        "--input",
        tmp.path().join("in.dat").to_str().unwrap(),
        "--mount-root",
        wd.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2);
    one_line_error(&o, &["is under no root", "--mount-root"]);
    assert!(keys(&bucket).await.is_empty(), "nothing was uploaded");
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let o = ferry(&[
        "stage",
        "--url",
        "http://not-s3",
        "--job-id",
        "1",
        "--workdir",
        "/tmp",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("not an s3:// URL"), "{}", stderr(&o));
}

/// Peak RSS of a ferry run, from GNU time (installed by scripts/setup.sh).
fn ferry_peak_rss_mib(args: &[&str]) -> (std::process::Output, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.args([
        "-f",
        "%M",
        "-o",
        report.path().to_str().unwrap(),
        ferry_bin(),
    ])
    .args(args);
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let kib: u64 = fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    (out, kib / 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_manifest_is_refused_without_reading_it_all() {
    let s = staged("oversized").await;
    put(&s.bucket, "p/jobs/1/manifest.json", &vec![b' '; 300 << 20]).await;
    let (o, rss) = ferry_peak_rss_mib(&["init", "--manifest", &s.url]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    one_line_error(&o, &["larger than the 256 MiB"]);
    assert!(
        rss < 400,
        "peak RSS {rss} MiB: the body was not streamed against the cap"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_of_50000_files_is_placed_in_bounded_memory() {
    let s = staged("huge").await;
    let mut m: serde_json::Value =
        serde_json::from_slice(&get(&s.bucket, "p/jobs/1/manifest.json").await.unwrap()).unwrap();
    // Empty files need no request, so this measures ferry's own bookkeeping per file.
    let entries: Vec<serde_json::Value> = (0..50_000)
        .map(|i| {
            serde_json::json!({"path": format!("d{}/f{i}.txt", i % 100), "kind": "file", "size": 0, "mode": 420,
                               "crc64nvme": "AAAAAAAAAAA="})
        })
        .collect();
    m["workdir"]["entries"] = entries.into();
    m["workdir"].as_object_mut().unwrap().remove("packs");
    put(
        &s.bucket,
        "p/jobs/1/manifest.json",
        m.to_string().as_bytes(),
    )
    .await;
    let (o, rss) = ferry_peak_rss_mib(&["init", "--manifest", &s.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.base.join("w/job/d99/f49999.txt").exists());
    assert!(rss < 256, "peak RSS {rss} MiB for 50,000 files");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_accepts_and_never_answers_fails_the_request_instead_of_hanging() {
    // Accepts connections, reads the request, never answers (a hung S3-compatible server).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let started = std::time::Instant::now();
    let o = ferry_with(
        &[
            "status",
            "--manifest",
            "s3://hung-bucket/p/jobs/1/manifest.json",
        ],
        &[
            ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
            ("FERRY_S3_ATTEMPT_TIMEOUT", "1"),
            ("FERRY_S3_MAX_ATTEMPTS", "2"),
        ],
    );
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("s3://hung-bucket/p/jobs/1/manifest.json"),
        "{}",
        stderr(&o)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "bounded by the attempt timeout, not by a hang"
    );
}

/// A reference directory given whole to `stage --index`, with a symlink planted in it.
fn reference_dir_with(tmp: &std::path::Path, link: &str, target: &std::path::Path) -> PathBuf {
    let refs = tmp.join("refs/hg38");
    fs::create_dir_all(&refs).unwrap();
    fs::create_dir_all(tmp.join("w/job")).unwrap();
    fs::write(refs.join("hg38.fa"), b">chr1\nACGT\n").unwrap();
    std::os::unix::fs::symlink(target, refs.join(link)).unwrap();
    refs
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_refuses_a_symlink_in_a_staged_directory_that_leads_outside_and_uploads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("home/user/.ssh/id_rsa");
    fs::create_dir_all(secret.parent().unwrap()).unwrap();
    fs::write(&secret, b"PRIVATE KEY").unwrap();
    let outside_dir = tmp.path().join("home/user");
    for (link, target) in [("hg38.fa.amb", &secret), ("more", &outside_dir)] {
        let base = tmp.path().join(link);
        let refs = reference_dir_with(&base, link, target);
        let bucket = bucket("stage-link-out").await;
        let o = ferry(&[
            "stage",
            "--url",
            &format!("s3://{bucket}/p"),
            "--job-id",
            "1",
            "--workdir",
            base.join("w/job").to_str().unwrap(),
            "--index",
            refs.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let link_path = refs.join(link);
        one_line_error(
            &o,
            &[
                link_path.to_str().unwrap(),
                target.to_str().unwrap(),
                "outside everything given to stage",
                "remove the link",
            ],
        );
        assert_eq!(
            keys(&bucket).await,
            Vec::<String>::new(),
            "nothing uploaded"
        );
    }
    // A dangling link would be a broken file in the pod: refused the same way.
    let base = tmp.path().join("dangling");
    let refs = reference_dir_with(&base, "gone.fa", &base.join("nowhere"));
    let bucket = bucket("stage-link-dangling").await;
    let o = ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        base.join("w/job").to_str().unwrap(),
        "--index",
        refs.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    one_line_error(&o, &["gone.fa", "cannot be resolved"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_refuses_a_fifo_given_or_linked_in_a_directory_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("w/job");
    fs::create_dir_all(&wd).unwrap();
    let refs = tmp.path().join("refs");
    fs::create_dir_all(&refs).unwrap();
    let fifo = refs.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("pipe", refs.join("index.fa")).unwrap();
    // Given itself: a usage error. Linked inside a given directory: the link is refused (3).
    for (given, exit, words) in [
        (fifo.clone(), 2, "not a regular file or directory (a FIFO"),
        (refs.clone(), 3, "which is not a regular file"),
    ] {
        let bucket = bucket("stage-fifo").await;
        // No writer ever opens the FIFO: a blocking open would never return.
        let o = ferry(&[
            "stage",
            "--url",
            &format!("s3://{bucket}/p"),
            "--job-id",
            "1",
            "--workdir",
            wd.to_str().unwrap(),
            "--index",
            given.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), exit, "{}", stderr(&o));
        one_line_error(&o, &[words]);
        assert_eq!(
            keys(&bucket).await,
            Vec::<String>::new(),
            "nothing uploaded"
        );
    }
}
