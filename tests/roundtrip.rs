//! The four roles end to end against a real S3 server: stage → (another machine) init → job →
//! sidecar → (back on the head) collect.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;

fn write(p: &Path, bytes: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// A head node's job directory with the awkward cases: nested dirs, 0-byte files, a 20 MiB
/// file, exec bits, a symlink pointing outside, an empty dir, unicode and spaces.
fn make_head(base: &Path) {
    let wd = base.join("jobs/000/42");
    write(&wd.join("galaxy_42.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(wd.join("galaxy_42.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&wd.join("working/empty.txt"), b"");
    write(
        &wd.join("configs/tool conf ü.xml"),
        "<conf>ü</conf>".as_bytes(),
    );
    write(&wd.join("configs/to_be_deleted.txt"), b"bye");
    let big: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&wd.join("working/big.bin"), &big);
    fs::create_dir_all(wd.join("outputs/empty dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", wd.join("outside-link")).unwrap();
    write(&base.join("files/000/dataset_1.dat"), b"ACGT\nacgt\n");
    write(&base.join("files/001/dataset_2.dat"), &big[..1000]);
}

/// What a Galaxy job would do: change, create and delete workdir files, write outputs and the .ec.
fn run_job(base: &Path) {
    let wd = base.join("jobs/000/42");
    let input = fs::read(base.join("files/000/dataset_1.dat")).unwrap();
    write(
        &base.join("files/002/dataset_3.dat"),
        &input.to_ascii_uppercase(),
    );
    write(&wd.join("configs/tool conf ü.xml"), b"<conf>changed</conf>");
    fs::remove_file(wd.join("configs/to_be_deleted.txt")).unwrap();
    write(&wd.join("outputs/tool_stdout"), b"hello\n");
    write(&wd.join("outputs/tool_stderr"), b"");
    write(&wd.join("working/new/result.txt"), b"new file");
    fs::set_permissions(
        wd.join("working/new/result.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    write(&wd.join("galaxy_42.ec"), b"0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_round_trips_through_s3_byte_identical() {
    let bucket = bucket("roundtrip").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("head");
    make_head(&base);
    let b = base.to_str().unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/ferry"),
        "--job-id",
        "42",
        "--workdir",
        &format!("{b}/jobs/000/42"),
        "--input",
        &format!("{b}/files/000/dataset_1.dat"),
        "--input",
        &format!("{b}/files/001/dataset_2.dat"),
        "--output",
        &format!("{b}/files/002/dataset_3.dat"),
    ]));
    assert_eq!(url, format!("s3://{bucket}/ferry/jobs/42/manifest.json"));
    let staged = keys(&bucket).await;
    assert!(
        staged.contains(&format!("ferry/data{b}/files/000/dataset_1.dat")),
        "{staged:?}"
    );
    // Small workdir files travel packed; the 20 MiB one has its own object.
    assert!(
        staged.contains(&"ferry/jobs/42/workdir/working/big.bin".to_string()),
        "{staged:?}"
    );
    assert!(
        staged.contains(&"ferry/jobs/42/packs/00000".to_string()),
        "{staged:?}"
    );
    assert!(
        !staged.iter().any(|k| k.contains("tool conf")),
        "{staged:?}"
    );

    // The pod is another machine: the head's directories are not there.
    let away = tmp.path().join("head.away");
    fs::rename(&base, &away).unwrap();
    ok(ferry(&["init", "--manifest", &url]));
    let mut pod = snapshot(&base);
    pod.retain(|(p, _, _)| p != "files/002"); // the output's directory, ready for the job
    assert_eq!(
        pod,
        snapshot(&away),
        "init recreates the head's tree exactly"
    );
    assert!(base.join("files/002").is_dir());
    assert_eq!(
        fs::read_link(base.join("jobs/000/42/outside-link")).unwrap(),
        Path::new("/etc/passwd")
    );

    let sidecar = std::thread::spawn({
        let url = url.clone();
        move || {
            ferry(&[
                "sidecar",
                "--manifest",
                &url,
                "--quiet-ms",
                "300",
                "--timeout",
                "60",
            ])
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    run_job(&base);
    ok(sidecar.join().unwrap());
    let done: serde_json::Value = serde_json::from_slice(
        &get(&bucket, "ferry/jobs/42/attempts/1/done.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["reason"], "exited");
    assert_eq!(
        done["deleted"],
        serde_json::json!(["configs/to_be_deleted.txt"])
    );
    let pod = snapshot(&base);

    // Back on the head node.
    fs::remove_dir_all(&base).unwrap();
    fs::rename(&away, &base).unwrap();
    write(&base.join("jobs/000/42/head-only.log"), b"never deleted");
    ok(ferry(&["collect", "--manifest", &url]));
    let mut head = snapshot(&base);
    head.retain(|(p, _, _)| p != "jobs/000/42/head-only.log");
    assert_eq!(head, pod, "collect brings back exactly what the pod had");
    assert!(base.join("jobs/000/42/head-only.log").exists());
    assert!(temp_files(&base).is_empty());

    let status = ok(ferry(&["status", "--manifest", &url]));
    assert!(
        status.starts_with("done job=42 attempt=1 exit=0"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restaging_the_same_inputs_moves_no_dataset_bytes() {
    let bucket = bucket("restage").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    write(&base.join("w/job/a.txt"), b"workdir");
    write(&base.join("d/in/x.dat"), &vec![7u8; 100_000]);
    let args = |job: &str| {
        vec![
            "stage".to_string(),
            "--url".into(),
            format!("s3://{bucket}/p"),
            "--job-id".into(),
            job.into(),
            "--workdir".into(),
            base.join("w/job").to_string_lossy().into(),
            "--input".into(),
            base.join("d/in/x.dat").to_string_lossy().into(),
        ]
    };
    let a1 = args("1");
    ok(ferry(&a1.iter().map(String::as_str).collect::<Vec<_>>()));
    let key = format!("p/data{}/d/in/x.dat", base.to_str().unwrap());
    let c = client().await;
    let before = c
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let a2 = args("2");
    let out = ferry(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("datasets: 0 uploaded, 1 already in S3"),
        "{}",
        stderr(&out)
    );
    let after = c
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        before.last_modified(),
        after.last_modified(),
        "the input object was not rewritten"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_input_and_output_round_trip_with_their_trees() {
    let bucket = bucket("dirs").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    write(&base.join("w/job/run.sh"), b"x");
    write(&base.join("d/in/ref/a/1.txt"), b"one");
    write(&base.join("d/in/ref/b/2.txt"), b"two");
    let b = base.to_str().unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "7",
        "--workdir",
        &format!("{b}/w/job"),
        "--input",
        &format!("{b}/d/in/ref"),
        "--output",
        &format!("{b}/d/out/result"),
        "--exit-code-file",
        &format!("{b}/w/job/exit.code"),
    ]));
    let away = tmp.path().join("away");
    fs::rename(&base, &away).unwrap();
    ok(ferry(&["init", "--manifest", &url]));
    assert_eq!(fs::read(base.join("d/in/ref/b/2.txt")).unwrap(), b"two");
    write(&base.join("d/out/result/x/deep.txt"), b"deep");
    write(&base.join("d/out/result/top.txt"), b"top");
    write(&base.join("w/job/exit.code"), b"7\n");
    ok(ferry(&["sidecar", "--manifest", &url, "--quiet-ms", "100"]));
    let pod = snapshot(&base.join("d/out"));
    fs::remove_dir_all(&base).unwrap();
    fs::rename(&away, &base).unwrap();
    ok(ferry(&["collect", "--manifest", &url]));
    assert_eq!(snapshot(&base.join("d/out")), pod);
    assert_eq!(
        fs::read_to_string(base.join("w/job/exit.code")).unwrap(),
        "7\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn collect_can_link_outputs_into_an_s3_mount_instead_of_downloading() {
    let bucket = bucket("link").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    write(&base.join("w/job/run.sh"), b"x");
    let b = base.to_str().unwrap();
    let out = format!("{b}/d/out.dat");
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "3",
        "--workdir",
        &format!("{b}/w/job"),
        "--output",
        &out,
        "--mount-root",
        &format!("{b}/w"),
        "--mount-root",
        &format!("{b}/d"),
    ]));
    let away = tmp.path().join("away");
    fs::rename(&base, &away).unwrap();
    ok(ferry(&["init", "--manifest", &url]));
    write(Path::new(&out), b"result");
    write(&base.join("w/job/galaxy_3.ec"), b"0\n");
    ok(ferry(&["sidecar", "--manifest", &url, "--quiet-ms", "100"]));
    fs::remove_dir_all(&base).unwrap();
    fs::rename(&away, &base).unwrap();
    // What a read-only mount of the bucket (mountpoint-s3, s3fs) shows: every object at MOUNT/<key>.
    let mount = tmp.path().join("mnt");
    let done = get(&bucket, "p/jobs/3/attempts/1/done.json").await.unwrap();
    let done: serde_json::Value = serde_json::from_slice(&done).unwrap();
    let key = done["outputs"][0]["key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("p/outputs/3/1-") && key.ends_with(&out),
        "{key}"
    );
    write(&mount.join(&key), &get(&bucket, &key).await.unwrap());
    ok(ferry(&[
        "collect",
        "--manifest",
        &url,
        "--link-outputs-under",
        mount.to_str().unwrap(),
    ]));
    assert_eq!(fs::read_link(&out).unwrap(), mount.join(&key));
    assert_eq!(fs::read(&out).unwrap(), b"result");

    // A later job reads that output: staged as the output object, not read or sent again.
    let o = ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "4",
        "--workdir",
        &format!("{b}/w/job"),
        "--input",
        &out,
        "--no-checksum-cache",
    ]);
    let log = stderr(&o);
    let url = ok(o);
    assert!(log.contains("staged as that object"), "{log}");
    assert!(
        log.contains("datasets: 0 uploaded, 1 already in S3"),
        "{log}"
    );
    // The workdir's run.sh and .ec (3 bytes); not the 6 bytes of the linked output.
    assert!(log.contains("read 3 bytes from local files"), "{log}");
    let pod = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        pod.to_str().unwrap(),
    ]));
    let placed = pod.join(out.trim_start_matches('/'));
    assert_eq!(fs::read(&placed).unwrap(), b"result");
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_inside_a_staged_directory_reach_the_pod_as_what_they_point_to_inside_it() {
    let bucket = bucket("stage-links-in").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    let refs = base.join("refs");
    write(&refs.join("hg38/seq/hg38.fa"), b">chr1\nACGT\n");
    write(&refs.join("shared/hg38.fa.fai"), b"chr1\t4\n");
    write(&base.join("w/job/run.sh"), b"echo hi\n");
    let index = refs.join("hg38/bwa");
    fs::create_dir_all(&index).unwrap();
    // Data managers link index files to the sequence they index, and directories to versions.
    std::os::unix::fs::symlink("../seq/hg38.fa", index.join("hg38.fa")).unwrap();
    std::os::unix::fs::symlink(refs.join("shared/hg38.fa.fai"), index.join("hg38.fa.fai")).unwrap();
    std::os::unix::fs::symlink("../seq", index.join("current")).unwrap();
    let b = base.to_str().unwrap();
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "4",
        "--workdir",
        &format!("{b}/w/job"),
        "--index",
        &format!("{b}/refs/hg38"),
        "--index",
        &format!("{b}/refs/shared"),
    ]));
    let pod = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        pod.to_str().unwrap(),
    ]));
    let in_pod = pod.join(index.strip_prefix("/").unwrap());
    for (name, bytes) in [
        ("hg38.fa", &b">chr1\nACGT\n"[..]),
        ("hg38.fa.fai", b"chr1\t4\n"),
    ] {
        let meta = fs::symlink_metadata(in_pod.join(name)).unwrap();
        assert!(meta.is_file(), "{name} is the bytes it pointed to");
        assert_eq!(fs::read(in_pod.join(name)).unwrap(), bytes);
    }
    assert_eq!(
        fs::read_link(in_pod.join("current")).unwrap(),
        Path::new("../seq")
    );
    assert_eq!(
        fs::read(in_pod.join("current/hg38.fa")).unwrap(),
        b">chr1\nACGT\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_given_twice_or_inside_another_given_one_is_staged_and_placed_once() {
    let bucket = bucket("stage-overlap").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("h");
    let gtf: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&base.join("refs/star/hg38/Genome"), b"genome\n");
    write(&base.join("refs/star/hg38/genes.gtf"), &gtf);
    write(&base.join("data/in.dat"), b"ACGT\n");
    write(&base.join("w/job/run.sh"), b"echo hi\n");
    let b = base.to_str().unwrap();
    let (star, input) = (format!("{b}/refs/star/hg38"), format!("{b}/data/in.dat"));
    // STAR --genomeDir DIR --sjdbGTFfile DIR/genes.gtf; and one dataset as input, index and input again.
    let url = ok(ferry(&[
        "stage",
        "--url",
        &format!("s3://{bucket}/p"),
        "--job-id",
        "5",
        "--workdir",
        &format!("{b}/w/job"),
        "--index",
        &format!("{star}/genes.gtf"),
        "--index",
        &star,
        "--input",
        &input,
        "--index",
        &input,
        "--input",
        &input,
    ]));
    let m: serde_json::Value =
        serde_json::from_slice(&get(&bucket, "p/jobs/5/manifest.json").await.unwrap()).unwrap();
    let paths = |what: &str| -> Vec<String> {
        m[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        paths("indices"),
        vec![star.clone()],
        "the file inside the directory is part of it"
    );
    assert_eq!(
        paths("inputs"),
        vec![input.clone()],
        "one dataset per path, an input"
    );

    let pod = tmp.path().join("pod");
    ok(ferry(&[
        "init",
        "--manifest",
        &url,
        "--root",
        pod.to_str().unwrap(),
    ]));
    let in_pod = |p: &str| pod.join(p.strip_prefix('/').unwrap());
    assert_eq!(fs::read(in_pod(&format!("{star}/genes.gtf"))).unwrap(), gtf);
    assert_eq!(
        fs::read(in_pod(&format!("{star}/Genome"))).unwrap(),
        b"genome\n"
    );
    assert_eq!(fs::read(in_pod(&input)).unwrap(), b"ACGT\n");
}
