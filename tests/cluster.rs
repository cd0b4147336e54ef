//! What a real cluster does beside the happy path: the kubelet's SIGTERM at every point of a
//! pod's life (native sidecars), init that never completed, retried Jobs and re-created pods,
//! symlinked and unreadable outputs, mode-only changes, removed directories, and many jobs
//! sharing one input at once. Every role runs as the built binary against a real S3 server.

mod support;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Job {
    bucket: String,
    url: String,
    /// The head node's files (real paths: collect runs here without --root).
    head: PathBuf,
    tmp: tempfile::TempDir,
}

fn write(p: &Path, bytes: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// Stages a job: a workdir with nested files, one input, a file output and a directory output.
async fn staged(name: &str) -> Job {
    let bucket = bucket(name).await;
    let tmp = tempfile::tempdir().unwrap();
    let head = tmp.path().join("h");
    let wd = head.join("w/job");
    write(&wd.join("run.sh"), b"echo hi\n");
    write(&wd.join("sub/a.txt"), b"a");
    write(&wd.join("sub/deep/b.txt"), b"b");
    write(&wd.join("keep/x.txt"), b"x");
    write(&head.join("d/in.dat"), &[b'i'; 4096]);
    let h = head.to_str().unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "1",
        "--workdir",
        &format!("{h}/w/job"),
        "--input",
        &format!("{h}/d/in.dat"),
        "--output",
        &format!("{h}/d/out.dat"),
        "--output",
        &format!("{h}/d/outdir"),
    ]));
    Job {
        bucket,
        url,
        head,
        tmp,
    }
}

impl Job {
    /// A pod's view: `--root` of its init and sidecar (a new pod gets a new one).
    fn pod(&self, n: u32) -> PathBuf {
        self.tmp.path().join(format!("pod{n}"))
    }

    /// Where head path `rel` (under the head dir) is inside pod `n`.
    fn in_pod(&self, n: u32, rel: &str) -> PathBuf {
        let abs = self.head.join(rel);
        self.pod(n).join(abs.strip_prefix("/").unwrap())
    }

    fn init(&self, pod: u32) -> std::process::Output {
        ferry(&[
            "init",
            "--manifest",
            &self.url,
            "--root",
            self.pod(pod).to_str().unwrap(),
        ])
    }

    /// Starts a sidecar of pod `n` and returns once it is waiting for the tool.
    fn sidecar(&self, pod: u32, args: &[&str]) -> Sidecar {
        self.sidecar_with(pod, args, &[])
    }

    fn sidecar_with(&self, pod: u32, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let log = self
            .tmp
            .path()
            .join(format!("sidecar{pod}-{}.log", rand_suffix()));
        let mut cmd = Command::new(ferry_bin());
        cmd.args(["sidecar", "--manifest", &self.url, "--root"])
            .arg(self.pod(pod))
            .args(args)
            .env_remove("FERRY_MANIFEST")
            .env_remove("FERRY_STATE_DIR")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        for (k, v) in s3_env() {
            cmd.env(k, v);
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap();
        let s = Sidecar { child, log };
        s.wait_for_line("waiting for the tool");
        s
    }

    fn collect(&self, wait: &str) -> std::process::Output {
        ferry(&["collect", "--manifest", &self.url, "--wait", wait])
    }

    /// `collect --link-outputs-under MOUNT`: outputs become links into a mount of the bucket.
    fn collect_linked(&self, mount: &Path) -> std::process::Output {
        let mount = mount.to_str().unwrap();
        ferry(&[
            "collect",
            "--manifest",
            &self.url,
            "--wait",
            "10",
            "--link-outputs-under",
            mount,
        ])
    }

    async fn done(&self, attempt: u32) -> Option<Value> {
        let key = format!("p/jobs/1/attempts/{attempt}/done.json");
        get(&self.bucket, &key)
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// Where attempt `n`'s `done.json` says its file output went.
    async fn output_key(&self, attempt: u32) -> String {
        let done = self.done(attempt).await.expect("a done.json");
        done["outputs"][0]["key"].as_str().unwrap().to_string()
    }

    /// `ferry stage` of the same job again (same id, paths and outputs).
    fn stage_again(&self) {
        let h = self.head.to_str().unwrap();
        ok(ferry(&[
            "stage",
            "--url",
            &format!("s3://{}/p", self.bucket),
            "--job-id",
            "1",
            "--workdir",
            &format!("{h}/w/job"),
            "--input",
            &format!("{h}/d/in.dat"),
            "--output",
            &format!("{h}/d/out.dat"),
            "--output",
            &format!("{h}/d/outdir"),
        ]));
    }

    fn ec(&self) -> String {
        fs::read_to_string(self.head.join("w/job/galaxy_1.ec")).unwrap()
    }

    /// The head's files, without the exit-code file collect writes.
    fn head_files(&self) -> Vec<(String, String, String)> {
        let mut s = snapshot(&self.head);
        s.retain(|(p, _, _)| p != "w/job/galaxy_1.ec");
        s
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_line(&self, needle: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(needle) {
            assert!(Instant::now() < end, "no `{needle}` in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the kubelet does to a native sidecar: SIGTERM.
    fn term(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits (at most a minute: a hang is a failure) for the sidecar to exit; asserts success.
    fn finished(mut self) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("the sidecar hangs:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = self.log();
        assert!(status.success(), "sidecar failed ({status}):\n{log}");
        log
    }
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sigterm_before_init_ran_records_init_failed_and_collect_changes_nothing_on_the_head()
 {
    let job = staged("native-before-init").await;
    let before = job.head_files();
    // The kubelet starts the native sidecar first; init then fails (or never runs) and the pod
    // is torn down: the sidecar gets SIGTERM over an empty emptyDir.
    let sidecar = job.sidecar(1, &["--mode", "native"]);
    sidecar.term();
    sidecar.finished();
    let done = job.done(1).await.expect("the sidecar claimed attempt 1");
    assert_eq!(done["reason"], "init-failed");
    assert!(done["exit_code"].is_null());
    assert_eq!(done["deleted"], serde_json::json!([]));
    assert_eq!(done["changed"], serde_json::json!([]));

    let o = job.collect("10");
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("init never completed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        job.head_files(),
        before,
        "no head file was removed or changed"
    );
    assert_eq!(job.ec(), "1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sigterm_after_init_failed_midway_keeps_every_head_file() {
    let job = staged("native-init-failed").await;
    let before = job.head_files();
    let sidecar = job.sidecar(1, &["--mode", "native"]);
    // The input vanished from S3: init claims the attempt, places part of the tree, fails.
    let input_key = format!("p/data{}/d/in.dat", job.head.to_str().unwrap());
    client()
        .await
        .delete_object()
        .bucket(&job.bucket)
        .key(&input_key)
        .send()
        .await
        .unwrap();
    let o = job.init(1);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    sidecar.term();
    sidecar.finished();
    let done = job.done(1).await.unwrap();
    assert_eq!(done["reason"], "init-failed");
    assert_eq!(done["deleted"], serde_json::json!([]));
    let o = job.collect("10");
    assert_eq!(code(&o), 9);
    assert_eq!(job.head_files(), before);
    assert_eq!(job.ec(), "1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sigterm_during_the_tool_records_a_crash_with_the_changes_so_far() {
    let job = staged("native-during").await;
    let sidecar = job.sidecar(1, &["--mode", "native"]);
    ok(job.init(1));
    // The tool writes a log line, then is killed (no exit-code file); the kubelet then stops
    // the sidecar.
    write(&job.in_pod(1, "w/job/tool.log"), b"started\n");
    sidecar.term();
    sidecar.finished();
    let done = job.done(1).await.unwrap();
    assert_eq!(done["reason"], "crashed");
    assert!(done["exit_code"].is_null());
    assert_eq!(
        done["deleted"],
        serde_json::json!([]),
        "nothing staged was lost"
    );
    let o = job.collect("10");
    assert_eq!(code(&o), 9);
    assert_eq!(job.ec(), "1\n");
    assert_eq!(
        fs::read(job.head.join("w/job/tool.log")).unwrap(),
        b"started\n",
        "the log so far comes back for the user"
    );
    assert!(job.head.join("w/job/sub/deep/b.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sigterm_after_the_tool_ended_records_its_exit_code() {
    let job = staged("native-after").await;
    let sidecar = job.sidecar(1, &["--mode", "native"]);
    ok(job.init(1));
    write(&job.in_pod(1, "d/out.dat"), b"result");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"3\n");
    sidecar.term();
    sidecar.finished();
    let done = job.done(1).await.unwrap();
    assert_eq!(done["reason"], "exited");
    assert_eq!(done["exit_code"], 3);
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "a failed tool is data: {}", stderr(&o));
    assert_eq!(job.ec(), "3\n");
    assert_eq!(fs::read(job.head.join("d/out.dat")).unwrap(), b"result");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_pod_wins_over_the_earlier_attempts_done_json() {
    let job = staged("retry").await;
    // Attempt 1: the tool fails with exit code 1 and its done.json is written.
    ok(job.init(1));
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"1\n");
    write(&job.in_pod(1, "d/out.dat"), b"attempt 1");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    assert_eq!(job.done(1).await.unwrap()["exit_code"], 1);

    // The Job controller starts attempt 2 (backoffLimit > 0): a new pod, a new emptyDir.
    let o = job.init(2);
    assert!(stderr(&o).contains("attempt 2"), "{}", stderr(&o));
    // While it runs, collect never reports attempt 1.
    let o = job.collect("2");
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(stderr(&o).contains("no done.json"), "{}", stderr(&o));

    write(&job.in_pod(2, "w/job/galaxy_1.ec"), b"0\n");
    write(&job.in_pod(2, "d/out.dat"), b"attempt 2");
    job.sidecar(2, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(job.ec(), "0\n");
    assert_eq!(fs::read(job.head.join("d/out.dat")).unwrap(), b"attempt 2");
    let status = ok(ferry(&["status", "--manifest", &job.url]));
    assert!(status.contains("attempt=2 exit=0"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_superseded_attempt_uploads_nothing_and_writes_no_done_json() {
    let job = staged("superseded").await;
    ok(job.init(1));
    // The pod looked lost and was re-created: attempt 2 claimed while attempt 1 still runs.
    ok(job.init(2));
    write(&job.in_pod(1, "d/out.dat"), b"stale");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    let log = job.sidecar(1, &["--quiet-ms", "100"]).finished();
    assert!(log.contains("attempt 2 of this job exists"), "{log}");
    assert!(job.done(1).await.is_none());
    let outputs: Vec<String> = keys(&job.bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with("p/outputs/"))
        .collect();
    assert_eq!(outputs, Vec::<String>::new(), "no stale output");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_straggling_attempt_never_changes_the_outputs_a_newer_attempt_delivered() {
    let job = staged("straggler").await;
    let h = job.head.to_str().unwrap().to_string();
    // Attempt 1 runs its tool and its sidecar, which passes its "am I superseded?" check...
    ok(job.init(1));
    write(&job.in_pod(1, "d/out.dat"), b"stale bytes of attempt 1");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    // ...and attempt 2 is claimed, runs and is collected before attempt 1's upload lands.
    ok(job.init(2));
    write(&job.in_pod(2, "d/out.dat"), b"attempt 2");
    write(&job.in_pod(2, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(2, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let delivered = job.output_key(2).await;
    assert!(
        delivered.starts_with("p/outputs/1/2-") && delivered.ends_with(&format!("{h}/d/out.dat"))
    );
    assert_eq!(get(&job.bucket, &delivered).await.unwrap(), b"attempt 2");

    // Attempt 1's sidecar looked for attempt 2 before it was claimed (here: its claim is out
    // of sight while attempt 1 runs) and so sends everything, after collect.
    let claim2 = "p/jobs/1/attempts/2/claim.json";
    let claim = get(&job.bucket, claim2).await.unwrap();
    delete(&job.bucket, claim2).await;
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    put(&job.bucket, claim2, &claim).await;
    let own = job.output_key(1).await;
    assert!(own.starts_with("p/outputs/1/1-"), "{own}");
    assert_eq!(
        get(&job.bucket, &own).await.unwrap(),
        b"stale bytes of attempt 1",
        "the straggler did upload, under its own key"
    );
    assert_eq!(
        get(&job.bucket, &delivered).await.unwrap(),
        b"attempt 2",
        "the bytes collect delivered are untouched"
    );
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(job.head.join("d/out.dat")).unwrap(), b"attempt 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restaged_job_never_changes_an_earlier_collects_outputs_nor_takes_an_old_pods_record() {
    let job = staged("restage-outputs").await;
    ok(job.init(1));
    write(&job.in_pod(1, "d/out.dat"), b"first run");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    ok(job.collect("10"));
    let first = job.output_key(1).await;

    // The same job id staged again: its attempts count from 1 again, in a new pod.
    job.stage_again();
    let o = job.init(3);
    assert!(
        stderr(&o).contains("this pod is attempt 1"),
        "{}",
        stderr(&o)
    );
    // The earlier staging's pod was not gone: its sidecar runs again and records attempt 1.
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a pod of an earlier staging of this job id"),
        "{}",
        stderr(&o)
    );

    write(&job.in_pod(3, "d/out.dat"), b"second run");
    write(&job.in_pod(3, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(3, &["--quiet-ms", "100"]).finished();
    let second = job.output_key(1).await;
    assert_ne!(first, second, "each claim has its own output keys");
    assert_eq!(
        get(&job.bucket, &first).await.unwrap(),
        b"first run",
        "what the earlier collect delivered (or linked) keeps its bytes"
    );
    ok(job.collect("10"));
    assert_eq!(fs::read(job.head.join("d/out.dat")).unwrap(), b"second run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_done_json_with_a_crafted_claim_never_links_outside_the_mount() {
    let job = staged("crafted-claim").await;
    ok(job.init(1));
    write(&job.in_pod(1, "d/out.dat"), b"result");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    // A pod that forges its record: a claim that climbs out of the key, and the output key to match.
    let mut done = job.done(1).await.unwrap();
    let h = job.head.to_str().unwrap();
    let claim = "../../../../../etc";
    done["claim"] = claim.into();
    done["outputs"][0]["key"] = format!("p/outputs/1/1-{claim}{h}/d/out.dat").into();
    let key = "p/jobs/1/attempts/1/done.json";
    put(&job.bucket, key, &serde_json::to_vec(&done).unwrap()).await;
    let mount = job.tmp.path().join("mnt");
    let o = job.collect_linked(&mount);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("is not a claim name"), "{}", stderr(&o));
    assert!(
        fs::symlink_metadata(job.head.join("d/out.dat")).is_err(),
        "no link was made"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restaging_a_job_forgets_its_earlier_attempts() {
    let job = staged("restage").await;
    ok(job.init(1));
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"5\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let h = job.head.to_str().unwrap();
    ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{}/p", job.bucket),
        "--job-id",
        "1",
        "--workdir",
        &format!("{h}/w/job"),
        "--input",
        &format!("{h}/d/in.dat"),
    ]));
    assert!(job.done(1).await.is_none(), "the old record is gone");
    let o = job.collect("1");
    assert_eq!(code(&o), 9, "the new staging has no result yet");
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinked_outputs_come_back_as_the_bytes_they_point_to() {
    let job = staged("symlinked-outputs").await;
    ok(job.init(1));
    // Tools often write elsewhere and link the declared output to it.
    write(&job.in_pod(1, "w/job/working/result.dat"), b"real bytes");
    std::os::unix::fs::symlink(
        job.in_pod(1, "w/job/working/result.dat"),
        job.in_pod(1, "d/out.dat"),
    )
    .unwrap();
    write(&job.in_pod(1, "w/job/working/part.txt"), b"part");
    fs::create_dir_all(job.in_pod(1, "d/outdir")).unwrap();
    std::os::unix::fs::symlink(
        "../../w/job/working/part.txt",
        job.in_pod(1, "d/outdir/p.txt"),
    )
    .unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = job.head.join("d/out.dat");
    assert!(!fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&out).unwrap(), b"real bytes");
    assert_eq!(fs::read(job.head.join("d/outdir/p.txt")).unwrap(), b"part");
    assert_eq!(job.ec(), "0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_cannot_be_read_fails_the_job_and_nothing_outside_the_roots_is_read() {
    let job = staged("unreadable-outputs").await;
    ok(job.init(1));
    // A hostile or broken job: the output links to a secret outside the pod's directories;
    // a file in the output directory dangles.
    let secret = job.tmp.path().join("secret-token");
    write(&secret, b"TOKEN");
    std::os::unix::fs::symlink(&secret, job.in_pod(1, "d/out.dat")).unwrap();
    fs::create_dir_all(job.in_pod(1, "d/outdir")).unwrap();
    std::os::unix::fs::symlink("missing.txt", job.in_pod(1, "d/outdir/x.txt")).unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let done = job.done(1).await.unwrap();
    let failed: Vec<&str> = done["failed_outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{done}");
    let all = keys(&job.bucket).await;
    assert!(
        !all.iter().any(|k| k.contains("/d/out")),
        "nothing uploaded: {all:?}"
    );
    let o = job.collect("10");
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(stderr(&o).contains("could not be read"), "{}", stderr(&o));
    assert_eq!(
        job.ec(),
        "1\n",
        "exit code 0 does not hide an unreadable output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mode_only_change_and_a_removed_directory_come_back_to_the_head() {
    let job = staged("modes").await;
    ok(job.init(1));
    let run = job.in_pod(1, "w/job/run.sh");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o750)).unwrap();
    fs::remove_dir_all(job.in_pod(1, "w/job/sub")).unwrap();
    fs::remove_dir_all(job.in_pod(1, "w/job/keep")).unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let done = job.done(1).await.unwrap();
    let uploaded: Vec<&str> = done["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(uploaded.is_empty(), "a mode change uploads nothing: {done}");
    assert_eq!(done["mode_changes"][0]["path"], "run.sh");
    // Meanwhile the head added a file to keep/: that directory must stay.
    write(&job.head.join("w/job/keep/head-added.txt"), b"mine");
    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mode = fs::metadata(job.head.join("w/job/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    assert!(
        !job.head.join("w/job/sub").exists(),
        "sub/ and its tree are gone"
    );
    assert!(!job.head.join("w/job/keep/x.txt").exists());
    assert!(job.head.join("w/job/keep/head-added.txt").exists());
}

/// One job of many sharing the same multipart-sized input: stage, init, tool, sidecar, collect.
fn one_of_many(bucket: &str, base: &Path, shared: &Path, i: usize) -> Result<(), String> {
    let id = format!("j{i}");
    let head = base.join(&id);
    let wd = head.join("w");
    write(&wd.join("run.sh"), format!("job {i}").as_bytes());
    let out = head.join("out.dat");
    let run = |args: &[&str]| {
        let o = ferry_with(args, &[("FERRY_PART_SIZE", "5MiB")]);
        if o.status.success() {
            Ok(stdout(&o))
        } else {
            Err(format!("job {i}: ferry {}: {}", args[0], stderr(&o)))
        }
    };
    let url = run(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        &id,
        "--workdir",
        wd.to_str().unwrap(),
        "--input",
        shared.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--mount-root",
        head.to_str().unwrap(),
        "--mount-root",
        shared.parent().unwrap().to_str().unwrap(),
    ])?;
    let pod = base.join(format!("pod-{id}"));
    let root = pod.to_str().unwrap();
    run(&["init", "--manifest", &url, "--root", root])?;
    let in_pod = |p: &Path| pod.join(p.strip_prefix("/").unwrap());
    let input = fs::read(in_pod(shared)).map_err(|e| e.to_string())?;
    if input != fs::read(shared).unwrap() {
        return Err(format!("job {i}: the input in the pod differs"));
    }
    // The tool: an output of 6 MiB (multipart too), unique to this job.
    let mut result = input[..6 << 20].to_vec();
    result[0] = i as u8;
    write(&in_pod(&out), &result);
    write(&in_pod(&wd.join(format!("galaxy_{id}.ec"))), b"0\n");
    run(&[
        "sidecar",
        "--manifest",
        &url,
        "--root",
        root,
        "--quiet-ms",
        "100",
    ])?;
    run(&["collect", "--manifest", &url])?;
    if fs::read(&out).map_err(|e| e.to_string())? != result {
        return Err(format!("job {i}: the collected output differs"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_jobs_sharing_a_multipart_input_at_once_never_break_each_other() {
    let bucket = bucket("sixteen").await;
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared/reference.fa");
    let bytes: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    write(&shared, &bytes);
    let base = tmp.path().to_path_buf();
    let jobs: Vec<_> = (0..16)
        .map(|i| {
            let (bucket, base, shared) = (bucket.clone(), base.clone(), shared.clone());
            std::thread::spawn(move || one_of_many(&bucket, &base, &shared, i))
        })
        .collect();
    let failures: Vec<String> = jobs
        .into_iter()
        .filter_map(|j| j.join().unwrap().err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let open = client()
        .await
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        open.uploads().is_empty(),
        "uploads left open: {:?}",
        open.uploads()
    );
    let records: Vec<String> = keys(&bucket)
        .await
        .into_iter()
        .filter(|k| k.contains("/uploads/"))
        .collect();
    assert!(records.is_empty(), "upload records left: {records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_never_aborts_another_jobs_upload_of_the_same_key() {
    let bucket = bucket("foreign-upload").await;
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared/big.dat");
    write(&shared, &vec![7u8; 12 << 20]);
    let wd = tmp.path().join("w");
    fs::create_dir_all(&wd).unwrap();
    // Another job's multipart upload of the same input is in flight.
    let key = format!("p/data{}", shared.to_str().unwrap());
    let c = client().await;
    let theirs = c
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let o = ferry_with(
        &[
            "stage",
            "--url",
            &format!("s3://{bucket}/p"),
            "--job-id",
            "mine",
            "--workdir",
            wd.to_str().unwrap(),
            "--input",
            shared.to_str().unwrap(),
            "--mount-root",
            tmp.path().to_str().unwrap(),
        ],
        &[("FERRY_PART_SIZE", "5MiB")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let open = c
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = open
        .uploads()
        .iter()
        .filter_map(|u| u.upload_id())
        .collect();
    assert_eq!(
        ids,
        [theirs.upload_id().unwrap()],
        "their upload is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exit_code_file_linked_to_a_secret_is_never_read_or_logged() {
    let job = staged("ec-link").await;
    ok(job.init(1));
    // A hostile job links its exit-code file to the sidecar's own environment.
    std::os::unix::fs::symlink("/proc/self/environ", job.in_pod(1, "w/job/galaxy_1.ec")).unwrap();
    let sidecar = job.sidecar_with(1, &["--quiet-ms", "100"], &[("MY_TOKEN", "sekrit-4711")]);
    let log = sidecar.finished();
    assert!(!log.contains("sekrit-4711"), "{log}");
    let done = job.done(1).await.unwrap();
    assert_eq!(
        (done["exit_code"].clone(), done["reason"].clone()),
        (Value::Null, "crashed".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_as_exit_code_file_or_linked_output_never_hang_the_sidecar() {
    let job = staged("fifos").await;
    ok(job.init(1));
    let fifo = |p: PathBuf| nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    fifo(job.in_pod(1, "w/job/galaxy_1.ec"));
    fifo(job.in_pod(1, "w/job/pipe"));
    fs::create_dir_all(job.in_pod(1, "d/outdir")).unwrap();
    std::os::unix::fs::symlink(job.in_pod(1, "w/job/pipe"), job.in_pod(1, "d/outdir/r.txt"))
        .unwrap();
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let done = job.done(1).await.unwrap();
    assert_eq!(done["reason"], "crashed", "{done}");
    assert_eq!(
        done["failed_outputs"][0]["path"],
        format!("{}/d/outdir", job.head.display())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_linked_inside_an_output_directory_fails_the_job_instead_of_coming_back_empty()
{
    let job = staged("linked-dir").await;
    ok(job.init(1));
    write(&job.in_pod(1, "d/scratch/results/a.txt"), b"a");
    fs::create_dir_all(job.in_pod(1, "d/outdir")).unwrap();
    std::os::unix::fs::symlink("../scratch/results", job.in_pod(1, "d/outdir/results")).unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("may link files, not directories"),
        "{}",
        stderr(&o)
    );
    assert!(!job.head.join("d/outdir/results").exists());
    assert_eq!(job.ec(), "1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_setgid_and_sticky_bits_never_come_back_to_the_head() {
    let job = staged("setuid").await;
    ok(job.init(1));
    let chmod = |rel: &str, mode| {
        fs::set_permissions(job.in_pod(1, rel), fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod("w/job/run.sh", 0o6777);
    chmod("w/job/sub", 0o1777);
    write(&job.in_pod(1, "w/job/newbin"), b"#!/bin/sh\n");
    chmod("w/job/newbin", 0o4755);
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    ok(job.collect("10"));
    let mode = |rel: &str| {
        fs::metadata(job.head.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("w/job/run.sh"), 0o777);
    assert_eq!(mode("w/job/sub"), 0o777);
    assert_eq!(mode("w/job/newbin"), 0o755);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collect_that_fails_halfway_leaves_a_failing_exit_code_not_an_old_zero() {
    let job = staged("collect-halfway").await;
    // An earlier run left `0` in the head's exit-code file.
    write(&job.head.join("w/job/galaxy_1.ec"), b"0\n");
    ok(job.init(1));
    // The job replaced a staged directory with a file: collect cannot put it in place.
    fs::remove_dir_all(job.in_pod(1, "w/job/sub")).unwrap();
    write(&job.in_pod(1, "w/job/sub"), b"now a file");
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    let o = job.collect("10");
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(job.ec(), "1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_the_job_made_to_a_head_file_outside_the_roots_is_never_placed_on_the_head() {
    let job = staged("links-out-of-roots").await;
    // A file of the head's own, outside every root (say, a config with a password).
    let secret = job.tmp.path().join("galaxy.yml");
    write(
        &secret,
        b"database_connection: postgresql://galaxy:S3cr3t@db/galaxy\n",
    );
    ok(job.init(1));
    let ln = |target: &Path, rel: &str| std::os::unix::fs::symlink(target, job.in_pod(1, rel));
    // Galaxy reads outputs/tool_stdout with a plain open(): the job links it to the secret's path.
    fs::create_dir_all(job.in_pod(1, "w/job/outputs")).unwrap();
    ln(&secret, "w/job/outputs/tool_stdout").unwrap();
    ln(Path::new("../../../../galaxy.yml"), "w/job/outputs/rel_out").unwrap();
    // Through another link it made: by its words inside the workdir, really two levels above it.
    ln(&job.head.join("w/job"), "w/job/sub/deep/x").unwrap();
    ln(Path::new("x/../../../galaxy.yml"), "w/job/sub/deep/chained").unwrap();
    // Links that stay inside the roots come back as they are.
    ln(&job.head.join("d/in.dat"), "w/job/input_link").unwrap();
    ln(Path::new("sub/a.txt"), "w/job/a_link").unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();

    let o = job.collect("10");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for rel in [
        "w/job/outputs/tool_stdout",
        "w/job/outputs/rel_out",
        "w/job/sub/deep/chained",
    ] {
        let head = job.head.join(rel);
        assert!(fs::symlink_metadata(&head).is_err(), "{rel} was placed");
        assert!(
            stderr(&o).contains(&format!("not placing {}", head.display())),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(fs::read(job.head.join("w/job/a_link")).unwrap(), b"a");
    assert!(job.head.join("w/job/sub/deep/x/run.sh").exists());
    assert_eq!(
        fs::read_link(job.head.join("w/job/input_link")).unwrap(),
        job.head.join("d/in.dat")
    );
    assert!(!stderr(&o).contains("S3cr3t"));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_link_mode_an_empty_output_directory_is_made_on_the_head_and_a_file_of_wrong_size_fails()
{
    let job = staged("link-empty-dir").await;
    ok(job.init(1));
    write(&job.in_pod(1, "d/out.dat"), b"result");
    // Galaxy wrappers often make the extra-files directory and leave it empty.
    fs::create_dir_all(job.in_pod(1, "d/outdir/img")).unwrap();
    write(&job.in_pod(1, "w/job/galaxy_1.ec"), b"0\n");
    job.sidecar(1, &["--quiet-ms", "100"]).finished();
    // The bucket as a mount shows it: the file object, and no directory for an empty prefix.
    let key = job.output_key(1).await;
    let mount = job.tmp.path().join("mnt");
    write(&mount.join(&key), b"result");
    let o = job.collect_linked(&mount);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        fs::read_link(job.head.join("d/out.dat")).unwrap(),
        mount.join(&key)
    );
    let outdir = job.head.join("d/outdir");
    assert!(
        !fs::symlink_metadata(&outdir)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(outdir.join("img").is_dir());
    assert_eq!(job.ec(), "0\n");
    // A mount showing other bytes than the pod recorded is never linked as a success.
    write(&mount.join(&key), b"resul");
    let o = job.collect_linked(&mount);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert_ne!(job.ec(), "0\n");
}
