"""A real Galaxy job (scripts written by Galaxy 26.1.2's own Kubernetes runner) in a real pod
(`podman kube play` of the YAML `ferry inject` produced), staged through a real S3 server."""

from pathlib import Path

import galaxyjob


def read_exit_code(path):
    """Galaxy's own reader: a missing or garbage .ec reads as 0, which is why ferry never leaves one missing."""
    from galaxy.job_execution.output_collect import read_exit_code_from

    return read_exit_code_from(str(path), "test")


def inputs(base):
    files = Path(base) / "galaxy/files/000"
    files.mkdir(parents=True)
    (files / "dataset_1.dat").write_text("acgt\nttga\n")
    return files / "dataset_1.dat", files / "dataset_2.dat"


def test_a_galaxy_job_succeeds_in_a_pod_and_its_outputs_come_back(s3, tmp_path):
    src, out = inputs(tmp_path)
    r = galaxyjob.run(s3, tmp_path, "201", f"tr a-z A-Z < {src} > {out}; echo converted; echo to-stderr >&2",
                      inputs=[src], outputs=[out])
    assert r.play_rc == 0, r.logs
    assert r.collect.returncode == 0, r.collect.stderr
    assert out.read_text() == "ACGT\nTTGA\n"
    assert (r.job_dir / "outputs/tool_stdout").read_text() == "converted\n"
    assert (r.job_dir / "outputs/tool_stderr").read_text() == "to-stderr\n"
    assert read_exit_code(r.job_dir / "galaxy_201.ec") == 0
    assert (r.done["exit_code"], r.done["reason"]) == (0, "exited")
    sidecar_log = next(v for k, v in r.logs.items() if "sidecar" in k)
    assert "sidecar done: exit code 0, reason exited, attempt 1" in sidecar_log


def test_a_failing_tool_brings_back_its_exit_code_and_stderr(s3, tmp_path):
    src, out = inputs(tmp_path)
    r = galaxyjob.run(s3, tmp_path, "202", "echo failing >&2; exit 3", inputs=[src], outputs=[out])
    assert r.play_rc == 0, r.logs
    assert r.collect.returncode == 0, "a failed tool is data: " + r.collect.stderr
    assert read_exit_code(r.job_dir / "galaxy_202.ec") == 3
    assert (r.job_dir / "outputs/tool_stderr").read_text() == "failing\n"
    assert r.done["exit_code"] == 3
    assert r.done["missing_outputs"] == [str(out)]


def test_a_tool_killed_before_its_exit_code_is_recorded_as_crashed(s3, tmp_path):
    src, out = inputs(tmp_path)
    # Like an OOM kill (cgroup v2 group kill): every process of the tool container dies at once,
    # so nothing writes the .ec. Each container has its own cgroup; the sidecar survives.
    kill_all = "for p in $(cat /proc/self/cgroup >/dev/null; ls /proc | grep -E '^[0-9]+$'); do " \
               "[ \"$(cat /proc/$p/cgroup 2>/dev/null)\" = \"$(cat /proc/self/cgroup)\" ] && kill -9 $p; done"
    r = galaxyjob.run(s3, tmp_path, "203", f"echo started; sleep 1; {kill_all}", inputs=[src], outputs=[out])
    assert r.play_rc == 0, r.logs
    assert (r.done["exit_code"], r.done["reason"]) == (None, "crashed")
    assert r.collect.returncode == 9, r.collect.stderr
    assert "without an exit code" in r.collect.stderr
    ec = (r.job_dir / "galaxy_203.ec").read_text().strip()
    assert ec != "0" and read_exit_code(r.job_dir / "galaxy_203.ec") != 0


def test_a_tool_that_kills_its_own_cgroup_as_its_first_action_never_hangs_the_pod(s3, tmp_path):
    src, out = inputs(tmp_path)
    # An OOM kill at start, or a missing interpreter: the tool's processes are gone before the
    # sidecar first looks, and nothing wrote the .ec. The sidecar must not wait forever.
    kill_all = "for p in $(ls /proc | grep -E '^[0-9]+$'); do " \
               "[ \"$(cat /proc/$p/cgroup 2>/dev/null)\" = \"$(cat /proc/self/cgroup)\" ] && kill -9 $p; done"

    def kill_first(pod):
        tool = pod["spec"]["containers"][0]
        tool["command"], tool["args"] = ["/bin/sh", "-c", kill_all], []

    r = galaxyjob.run(s3, tmp_path, "205", "echo never", inputs=[src], outputs=[out],
                      extra_inject=["--env", "FERRY_START_GRACE=5"], pod_changes=kill_first)
    assert r.play_rc == 0, r.logs
    assert (r.done["exit_code"], r.done["reason"]) == (None, "crashed"), r.logs
    assert r.collect.returncode == 9, r.collect.stderr
    assert read_exit_code(r.job_dir / "galaxy_205.ec") != 0
    assert r.done["deleted"] == [], "nothing staged is lost"


def test_an_input_missing_from_s3_fails_init_fast_and_the_tool_never_starts(s3, tmp_path):
    src, out = inputs(tmp_path)

    def delete_input(bucket):
        s3.client().delete_object(Bucket=bucket, Key=f"ferry/data{src}")

    r = galaxyjob.run(s3, tmp_path, "204", "echo never", inputs=[src], outputs=[out], before_play=delete_input)
    assert r.play_rc != 0, "kube play reports the failed init container"
    init_log = r.logs["ferry-init"]
    error_lines = [line for line in init_log.splitlines() if "ERROR" in line]
    assert len(error_lines) == 1 and f"ferry/data{src}" in error_lines[0] and "not found" in error_lines[0], init_log
    assert not (r.job_dir / "outputs/tool_stdout").exists()
