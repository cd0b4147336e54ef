"""Any batch pod, not only Galaxy: the example Job of manifests/examples/ (busybox, a `command` +
`args` that writes no exit-code file) staged through a real S3 server, run by `podman kube play`
of the YAML that `ferry inject --wrap` produced, and collected. `ferry exec`, copied into the pod
by ferry-init, records the tool's exit code."""

import random
import subprocess

import yaml

import genericjob
import podlib
from genericjob import TOOL, Layout


def reads(layout):
    """An input directory of nested files, one of them binary."""
    files = {
        "lane1/sample_a.fq": b"@r1\nacgtn\n+\nIIIII\n",
        "lane1/sample_b.fq": b"@r2\nttgca\n+\nIIIII\n@r3\ngg\n+\nII\n",
        "lane2/deep/sample_c.fq": b"@r4\ncatcat\n+\nIIIIII\n",
        "index.bin": random.Random(7).randbytes(300_000),
    }
    for rel, data in files.items():
        path = layout.reads / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    layout.workdir.mkdir(parents=True)
    (layout.workdir / "params.txt").write_text("min_len=2\n")
    return files


def expected_results(layout, tmp_path):
    """What the example's own script writes when busybox runs it here, outside any pod."""
    script = genericjob.example_job(layout)["spec"]["template"]["spec"]["containers"][0]["args"][0]
    out, wd = tmp_path / "expected/results", tmp_path / "expected/wd"
    wd.mkdir(parents=True)
    subprocess.run(["/bin/busybox", "sh", "-c", script, "readstats", layout.reads, out], cwd=wd, check=True,
                   capture_output=True)
    return genericjob.tree(out), (wd / "readstats.log").read_text()


def tool_command(result):
    pod = yaml.safe_load((result.layout.base / f"gen-{result.layout.job_id}.ferry.yaml").read_text())
    return next(c for c in pod["spec"]["containers"] if c["name"] == TOOL)["command"]


def test_a_generic_job_writes_an_output_tree_that_comes_back_byte_identical(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("ok"))
    inputs = reads(layout)
    (files, dirs), log = expected_results(layout, tmp_path)
    # The comparison means something: nested directories, every input transformed, binary bytes.
    assert "lane2/deep" in "\n".join(dirs) and len(files) == 2 * len(inputs) + 1
    assert files["upper/lane1/sample_a.fq"] == b"@R1\nACGTN\n+\nIIIII\n"

    r = genericjob.run(s3, layout)
    assert r.play_rc == 0, r.logs
    assert r.exit_codes[TOOL] == 0, r.logs
    assert tool_command(r)[:5] == ["/ferry-bin/ferry", "exec", "--exit-code-file", str(layout.exit_code_file), "--"]
    assert r.collect.returncode == 0, r.collect.stderr
    assert genericjob.tree(layout.results) == (files, dirs)
    assert (layout.workdir / "readstats.log").read_text() == log
    assert "readstats: 4 files" in r.logs[TOOL]
    # The script writes no exit code; ferry exec did.
    assert layout.exit_code_file.read_text() == "0\n"
    assert (r.done["exit_code"], r.done["reason"]) == (0, "exited")
    assert r.done["missing_outputs"] == []


def test_a_failing_generic_job_records_its_exit_code(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("ex7"))
    reads(layout)
    r = genericjob.run(s3, layout, script="echo failing >&2; exit 7")
    assert r.play_rc == 0, r.logs
    assert r.exit_codes[TOOL] == 7, "ferry exec exits with the tool's code"
    assert r.collect.returncode == 0, "a failed tool is data: " + r.collect.stderr
    assert (r.done["exit_code"], r.done["reason"]) == (7, "exited")
    assert layout.exit_code_file.read_text() == "7\n"
    assert r.done["missing_outputs"] == [str(layout.results)]
    assert "failing" in r.logs[TOOL]


def test_a_tool_killed_by_sigkill_is_recorded_as_137(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("kill"))
    reads(layout)
    r = genericjob.run(s3, layout, script="echo started; kill -9 $$; echo not-reached")
    assert r.play_rc == 0, r.logs
    assert "started" in r.logs[TOOL] and "not-reached" not in r.logs[TOOL]
    assert r.exit_codes[TOOL] == 137
    assert (r.done["exit_code"], r.done["reason"]) == (137, "exited")
    assert layout.exit_code_file.read_text() == "137\n"


def test_sigterm_to_the_tool_container_is_forwarded_and_recorded_as_143(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("term"))
    reads(layout)

    def terminate(pod):
        genericjob.wait_for_log(pod, TOOL, "started")
        # To the container's main process, ferry exec, which must pass it on to the shell.
        podlib.podman("kill", "--signal", "TERM", f"{pod.name}-{TOOL}")

    r = genericjob.run(s3, layout, script="echo started; sleep 60; echo not-reached", during=terminate)
    assert r.play_rc == 0, r.logs
    assert r.seconds < 30, "the tool ended on SIGTERM, not after its sleep"
    assert "not-reached" not in r.logs[TOOL]
    assert r.exit_codes[TOOL] == 143
    assert (r.done["exit_code"], r.done["reason"]) == (143, "exited")
    assert layout.exit_code_file.read_text() == "143\n"


def test_wrap_refuses_a_container_without_command_and_names_it(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("nocmd"))
    reads(layout)
    _, url = genericjob.stage(s3, layout)
    job = genericjob.example_job(layout)
    tool = job["spec"]["template"]["spec"]["containers"][0]
    del tool["command"]
    plain = tmp_path / "job.yaml"
    plain.write_text(yaml.safe_dump(job))

    p = genericjob.inject(s3, url, plain, "--wrap")
    assert p.returncode == 11, p.stderr
    assert p.stdout == ""
    assert f"container `{TOOL}` sets no `command`" in p.stderr and "--entrypoint" in p.stderr

    # Given the image's ENTRYPOINT, the same Job is wrapped.
    p = genericjob.inject(s3, url, plain, "--wrap", "--entrypoint", "/bin/sh", "--entrypoint", "-c")
    assert p.returncode == 0, p.stderr
    wrapped = yaml.safe_load(p.stdout)["spec"]["template"]["spec"]["containers"][0]
    assert wrapped["command"] == ["/ferry-bin/ferry", "exec", "--exit-code-file", str(layout.exit_code_file), "--",
                                  "/bin/sh", "-c", *tool["args"]]
    assert "args" not in wrapped
