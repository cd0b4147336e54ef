"""ferry_link_outputs_under against a real FUSE mount of the bucket (Debian's s3fs, read-only): collect
makes each output a symlink into the mount, Galaxy reads the output through it, and an object removed
later from S3 is gone from the mount too: after at most a moment in which s3fs 1.90 shows it empty (measured:
one read of b"" right after the delete), the dataset reads as missing; its old bytes never come back."""

import shutil
import subprocess
import time

import pytest
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import podlib
from harness import GalaxyJob, session_bucket


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
    target = mount / f"{job.prefix}/data{job.output}"
    assert job.output.is_symlink() and job.output.readlink() == target
    assert job.wrapper.metadata_saw == {str(job.output): b"ACGT\nTTGA\n"}, "Galaxy's metadata step read it"
    s3.client().delete_object(Bucket=job.bucket, Key=f"{job.prefix}/data{job.output}")
    reads = []
    deadline = time.time() + 30
    while job.output.exists():  # s3fs and the kernel may answer from a cache for a moment
        assert time.time() < deadline, f"the mount still shows a removed object: {reads[-3:]}"
        reads.append(job.output.read_bytes())
        time.sleep(0.2)
    assert b"ACGT\nTTGA\n" not in reads, "the removed output was never read back with its old bytes"
    with pytest.raises(FileNotFoundError):
        job.output.read_bytes()
