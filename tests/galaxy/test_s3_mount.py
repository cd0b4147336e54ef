"""ferry_link_outputs_under against a real FUSE mount of the bucket (Debian's s3fs, read-only): collect
makes each output a symlink into the mount, Galaxy reads the output through it, and an object removed
later from S3 is gone from the mount too: after at most a moment in which s3fs 1.90 shows it empty (measured:
one read of b"" right after the delete), the dataset reads as missing; its old bytes never come back.
Each attempt of a job uploads its outputs under its own keys, so an older attempt still uploading after
collect linked a newer one's output never changes the bytes behind the link."""

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import podlib
from harness import GalaxyJob, session_bucket

sys.path.insert(0, str(podlib.REPO / "tests/faults"))
from proxy import Proxy  # noqa: E402


@pytest.fixture
def mount(s3, tmp_path):
    """The runner tests' bucket, mounted read-only with s3fs; unmounted after the test."""
    if shutil.which("s3fs") is None:
        pytest.fail("s3fs is not installed (scripts/setup.sh installs it)")
    bucket = session_bucket(s3)
    passwd = tmp_path / "s3fs-passwd"
    passwd.write_text(f"{podlib.KEY}:{podlib.SECRET}\n")
    passwd.chmod(0o600)
    mnt = tmp_path / "s3-mount"
    mnt.mkdir()
    # max_stat_cache_size=0: every lookup asks S3, so an object uploaded (or removed) a moment ago shows.
    subprocess.run(["s3fs", bucket, str(mnt), "-o", f"ro,passwd_file={passwd},url={s3.endpoint},"
                    "use_path_request_style,max_stat_cache_size=0"], check=True, capture_output=True, text=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)


def test_outputs_come_back_as_symlinks_into_an_s3fs_mount_and_galaxy_reads_them(s3, tmp_path, mount):
    job = GalaxyJob(s3, tmp_path / "job", runner_params={"ferry_link_outputs_under": str(mount)})
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    outcome = job.complete()

    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    target = mount / job.output_key()
    assert job.output.is_symlink() and job.output.readlink() == target
    assert job.wrapper.metadata_saw == {str(job.output): b"ACGT\nTTGA\n"}, "Galaxy's metadata step read it"
    # A next job reads the output: staged as the same object, nothing read through the mount or sent again.
    workdir = tmp_path / "next-job"
    workdir.mkdir()
    p = podlib.ferry(s3, "stage", "--url", f"s3://{job.bucket}/{job.prefix}", "--job-id", "next", "--workdir",
                     workdir, "--input", job.output, "--no-checksum-cache")
    [staged] = s3.get_json(job.bucket, f"{job.prefix}/jobs/next/manifest.json")["inputs"]
    assert staged["key"] == job.output_key() and "staged as that object" in p.stderr, p.stderr
    assert "read 0 bytes from local files" in p.stderr, p.stderr
    s3.client().delete_object(Bucket=job.bucket, Key=job.output_key())
    reads = []
    deadline = time.time() + 30
    while job.output.exists():  # s3fs and the kernel may answer from a cache for a moment
        assert time.time() < deadline, f"the mount still shows a removed object: {reads[-3:]}"
        reads.append(job.output.read_bytes())
        time.sleep(0.2)
    assert b"ACGT\nTTGA\n" not in reads, "the removed output was never read back with its old bytes"
    with pytest.raises(FileNotFoundError):
        job.output.read_bytes()


class HoldOutputUploads:
    """A proxy plan that holds every PUT of an output object until released (the request is forwarded
    then, unchanged): a sidecar caught between its "am I superseded?" check and its upload."""

    def __init__(self):
        self.arrived = threading.Event()
        self.release = threading.Event()

    def pick(self, method, path):
        if method == "PUT" and "/outputs/" in path:
            self.arrived.set()
            assert self.release.wait(120), "never released"
        return None


def test_a_straggling_older_attempt_never_changes_the_bytes_behind_a_linked_output(s3, tmp_path, mount):
    bucket, prefix = session_bucket(s3), f"straggler-{uuid.uuid4().hex[:8]}"
    head = tmp_path / "head"
    workdir, out = head / "jobs/7", head / "files/dataset_9.dat"
    workdir.mkdir(parents=True)
    out.parent.mkdir()
    (workdir / "tool.sh").write_text("echo run\n")
    url = podlib.ferry(s3, "stage", "--url", f"s3://{bucket}/{prefix}", "--job-id", "7", "--workdir", workdir,
                       "--output", out).stdout.strip()

    def pod(n, output, endpoint=None):
        """Attempt n: ferry init in its own root and state directory, the tool's output and exit code, and
        the sidecar's command and environment."""
        root, state = tmp_path / f"pod{n}", tmp_path / f"state{n}"
        env = {**os.environ, **s3.env(), "FERRY_STATE_DIR": str(state)}
        subprocess.run([podlib.FERRY, "init", "--manifest", url, "--root", root], env=env, check=True,
                       capture_output=True)
        (root / str(out).lstrip("/")).write_bytes(output)
        (root / str(workdir).lstrip("/") / "galaxy_7.ec").write_text("0\n")
        env["AWS_ENDPOINT_URL"] = endpoint or s3.endpoint
        return [podlib.FERRY, "sidecar", "--manifest", url, "--root", root, "--quiet-ms", "100"], env

    def output_key(attempt):
        done = s3.get_json(bucket, f"{prefix}/jobs/7/attempts/{attempt}/done.json")
        return done["outputs"][0]["key"]

    plan = HoldOutputUploads()
    with Proxy(s3.endpoint, plan=plan) as proxy:
        cmd, env = pod(1, b"attempt 1: never verified\n", proxy.endpoint)
        straggler = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert plan.arrived.wait(60), "attempt 1's sidecar never started its output upload"
            cmd, env = pod(2, b"attempt 2: verified\n")  # the Job controller's retry
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            podlib.ferry(s3, "collect", "--manifest", url, "--wait", "30", "--link-outputs-under", mount)
            linked = mount / output_key(2)
            assert out.readlink() == linked and out.read_bytes() == b"attempt 2: verified\n"
        finally:
            plan.release.set()
            _, log = straggler.communicate(timeout=60)
    assert straggler.returncode == 0, log

    assert output_key(1).startswith(f"{prefix}/outputs/7/1-") and output_key(2).startswith(f"{prefix}/outputs/7/2-")
    own = s3.client().get_object(Bucket=bucket, Key=output_key(1))["Body"].read()
    assert own == b"attempt 1: never verified\n", "the straggler did upload, after collect, under its own key"
    assert out.read_bytes() == b"attempt 2: verified\n", "the linked output still reads the verified bytes"
    status = podlib.ferry(s3, "status", "--manifest", url).stdout
    assert "attempt=2 exit=0" in status, status
