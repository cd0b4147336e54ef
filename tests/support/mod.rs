//! Test harness: a real S3 server (SeaweedFS) on 127.0.0.1, the ferry binary, and plain
//! aws-sdk-s3 calls to check what ferry did.
//!
//! `scripts/test.sh` starts one server for the whole run and exports FERRY_TEST_S3_ENDPOINT;
//! a bare `cargo test` starts one per test binary, killed with the test process (PDEATHSIG).
#![allow(dead_code)]

use aws_sdk_s3::Client;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub const KEY: &str = "testkey";
pub const SECRET: &str = "testsecret";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The endpoint of the shared server, starting one if the harness did not.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(e) = std::env::var("FERRY_TEST_S3_ENDPOINT") {
            return e;
        }
        let state = repo()
            .join("target/test-s3")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&state).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        // The server's parent is this thread, which never ends: PDEATHSIG fires when the process does.
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(repo().join("scripts/s3-server.sh"));
            cmd.arg("run").arg(&st);
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let mut child = cmd
                .spawn()
                .expect("start scripts/s3-server.sh run (run scripts/setup.sh first)");
            tx.send(child.id()).unwrap();
            // Blocks for the server's lifetime, keeping this thread (its parent) alive.
            let _ = child.wait();
        });
        let _pid = rx.recv().unwrap();
        let endpoint_file = state.join("endpoint");
        for _ in 0..400 {
            if let Ok(e) = std::fs::read_to_string(&endpoint_file) {
                let e = e.trim().to_string();
                let port = e.rsplit(':').next().unwrap();
                if std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok() {
                    return e;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        panic!(
            "SeaweedFS did not start; see {}",
            state.join("weed.log").display()
        );
    })
}

/// Environment for the ferry binary against the test server.
pub fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_ENDPOINT_URL", endpoint().into()),
        ("AWS_REGION", "us-east-1".into()),
        ("FERRY_S3_FORCE_PATH_STYLE", "true".into()),
        ("FERRY_S3_MAX_ATTEMPTS", "3".into()),
        ("NO_COLOR", "1".into()),
    ]
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// Runs ferry with the test server's environment.
pub fn ferry(args: &[&str]) -> Output {
    ferry_with(args, &[])
}

pub fn ferry_with(args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args)
        .env_remove("FERRY_MANIFEST")
        .env_remove("FERRY_ROOT");
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ferry")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "ferry failed ({:?}):\n{}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// A plain SDK client for checking what ferry did.
pub async fn client() -> Client {
    let creds = aws_sdk_s3::config::Credentials::new(KEY, SECRET, None, None, "test");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// A fresh bucket per test, created for real.
pub async fn bucket(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let b = format!(
        "t-{}-{}-{}",
        name.replace('_', "-")
            .chars()
            .take(30)
            .collect::<String>()
            .trim_end_matches('-'),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let c = client().await;
    let mut last = None;
    for _ in 0..100 {
        match c.create_bucket().bucket(&b).send().await {
            Ok(_) => return b,
            Err(e) => last = Some(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("cannot create bucket {b}: {last:?}");
}

pub async fn get(bucket: &str, key: &str) -> Option<Vec<u8>> {
    let c = client().await;
    let o = c.get_object().bucket(bucket).key(key).send().await.ok()?;
    Some(o.body.collect().await.unwrap().into_bytes().to_vec())
}

pub async fn put(bucket: &str, key: &str, body: &[u8]) {
    client()
        .await
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap();
}

pub async fn delete(bucket: &str, key: &str) {
    client()
        .await
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
}

pub async fn keys(bucket: &str) -> Vec<String> {
    let out = client()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let mut k: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    k.sort();
    k
}

/// Every file, dir and symlink under `root`: (relative path, kind+mode, length+hash of the content or the target).
pub fn snapshot(root: &Path) -> Vec<(String, String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    fn digest(bytes: &[u8]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        format!("{} bytes #{:016x}", bytes.len(), h.finish())
    }
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push((
                    rel,
                    "link".into(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .to_string(),
                ));
            } else if m.is_dir() {
                out.push((rel, format!("dir {mode:o}"), String::new()));
                walk(root, &p, out);
            } else {
                out.push((
                    rel,
                    format!("file {mode:o}"),
                    digest(&std::fs::read(&p).unwrap()),
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Files whose name marks them as ferry's temporary files.
pub fn temp_files(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.ends_with(".ferry-tmp"))
        .collect()
}
