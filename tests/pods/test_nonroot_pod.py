"""Locked-down clusters: the job runs as a non-root user, ferry runs as that user too, so the tool
can write its workdir and outputs and change staged files, and the sidecar can read them all."""

import os
from pathlib import Path

import galaxyjob
from test_galaxy_pod import read_exit_code


def as_user(pod_uid, tool_uid=None):
    def change(pod):
        spec = pod["spec"]
        spec["securityContext"] = {"runAsUser": pod_uid, "runAsGroup": pod_uid, "fsGroup": pod_uid,
                                   "runAsNonRoot": True}
        if tool_uid is not None:
            spec["containers"][0]["securityContext"] = {"runAsUser": tool_uid, "runAsGroup": tool_uid}
    return change


# Writes into working/ and outputs/, rewrites a staged config file, and reports who it ran as.
TOOL = ("id -u > uid.txt; echo generated > ../outputs/extra.txt; "
        "echo changed-by-tool > {config}; tr a-z A-Z < {src} > {out}; cat {config}")


def job(s3, tmp_path, job_id, change):
    files = tmp_path / "galaxy/files/000"
    files.mkdir(parents=True)
    src, out = files / "dataset_1.dat", files / "dataset_2.dat"
    src.write_text("acgt\n")

    config = tmp_path / "galaxy/jobs/000" / job_id / "configs/tool.conf"
    r = galaxyjob.run(s3, tmp_path, job_id, TOOL.format(config=config, src=src, out=out),
                      inputs=[src], outputs=[out], pod_changes=change,
                      before_stage=lambda job_dir: (job_dir / "configs").mkdir(exist_ok=True) or
                      (job_dir / "configs/tool.conf").write_text("staged\n"))
    return r, out, config


def test_a_job_running_as_uid_10001_writes_its_files_and_they_come_back_owned_by_the_head(s3, tmp_path):
    r, out, config = job(s3, tmp_path, "301", as_user(10001))
    assert r.play_rc == 0, r.logs
    assert r.collect.returncode == 0, r.collect.stderr
    assert read_exit_code(r.job_dir / "galaxy_301.ec") == 0, r.logs
    assert (r.job_dir / "working/uid.txt").read_text() == "10001\n", "the tool ran as 10001"
    assert (r.job_dir / "outputs/extra.txt").read_text() == "generated\n"
    assert config.read_text() == "changed-by-tool\n"
    assert out.read_text() == "ACGT\n"
    for p in [out, config, r.job_dir / "working/uid.txt", r.job_dir / "galaxy_301.ec"]:
        assert Path(p).stat().st_uid == os.getuid(), f"{p} belongs to the head's user"


def test_a_tool_container_with_its_own_user_gets_ferry_running_as_that_user(s3, tmp_path):
    r, out, config = job(s3, tmp_path, "302", as_user(10001, tool_uid=10002))
    assert r.play_rc == 0, r.logs
    assert r.collect.returncode == 0, r.collect.stderr
    assert (r.job_dir / "working/uid.txt").read_text() == "10002\n"
    assert config.read_text() == "changed-by-tool\n"
    assert out.read_text() == "ACGT\n"
