"""A generic batch job (not Galaxy): the example Job of manifests/examples/job-readstats.yaml, its
paths moved under the test's directory, run in a real pod through `ferry inject --wrap`."""

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import podlib

EXAMPLE = podlib.REPO / "manifests/examples/job-readstats.yaml"
EXAMPLE_ID = "readstats-1"
TOOL = "readstats"


@dataclass
class Layout:
    """The head node's paths of one job, as the example names them, under `base`."""

    base: Path
    job_id: str

    @property
    def workdir(self):
        return self.base / "batch/jobs" / self.job_id

    @property
    def reads(self):
        return self.base / "batch/data/reads"

    @property
    def results(self):
        return self.base / "batch/results" / self.job_id

    @property
    def exit_code_file(self):
        return self.workdir / "exit.code"

    def stage_args(self, url):
        # The mount roots a cluster derives from /batch/{jobs/<id>,data/reads,results/<id>}; under a
        # temporary directory `stage` would merge them into one, so they are given.
        return ["stage", "--url", url, "--job-id", self.job_id, "--workdir", self.workdir,
                "--input", self.reads, "--output", self.results, "--exit-code-file", self.exit_code_file,
                "--mount-root", self.workdir, "--mount-root", self.base / "batch/data",
                "--mount-root", self.base / "batch/results"]


@dataclass
class Result:
    layout: Layout
    url: str
    bucket: str
    play_rc: int
    seconds: float = 0.0
    exit_codes: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    collect: subprocess.CompletedProcess = None
    done: dict = None


def example_job(layout, script=None):
    """The example Job with its paths under `layout.base` and the local busybox image; `script`
    replaces the tool's shell script (its `args[0]`), the rest of command and args stays."""
    text = EXAMPLE.read_text().replace("/batch/", f"{layout.base}/batch/").replace(EXAMPLE_ID, layout.job_id)
    job = yaml.safe_load(text)
    tool = job["spec"]["template"]["spec"]["containers"][0]
    assert tool["name"] == TOOL and tool["command"] == ["/bin/sh", "-c"], tool
    tool["image"] = podlib.TOOL_IMAGE
    if script is not None:
        tool["args"][0] = script
    return job


def new_id(prefix):
    """A job id no other pod uses (podman shares same-named volumes between pods)."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def stage(s3, layout):
    bucket = s3.new_bucket("gen")
    url = podlib.ferry(s3, *layout.stage_args(f"s3://{bucket}/ferry")).stdout.strip()
    return bucket, url


def inject(s3, url, pod_path, *extra):
    return podlib.ferry(s3, "inject", "--manifest", url, "--image", podlib.FERRY_IMAGE, "--sidecar", "shared-pid",
                        *podlib.s3_env_for_pod(s3), *extra, "-f", pod_path, check=False)


def run(s3, layout, script=None, during=None, timeout=25):
    """Stage → inject --wrap → podman kube play → (`during(pod)`) → wait → collect."""
    bucket, url = stage(s3, layout)
    name = f"gen-{layout.job_id}"
    pod = podlib.for_podman(podlib.pod_from_job(example_job(layout, script), name))
    plain = layout.base / f"{name}.yaml"
    plain.write_text(yaml.safe_dump(pod))
    injected = inject(s3, url, plain, "--wrap")
    assert injected.returncode == 0, injected.stderr
    pod_yaml = layout.base / f"{name}.ferry.yaml"
    pod_yaml.write_text(injected.stdout)

    p = podlib.Pod(pod_yaml)
    result = Result(layout=layout, url=url, bucket=bucket, play_rc=0)
    started = time.monotonic()
    try:
        result.play_rc = p.start()
        if result.play_rc == 0:
            if during:
                during(p)
            result.exit_codes = p.wait(timeout=timeout)
        result.seconds = time.monotonic() - started
        for c in p.init_names + p.names:
            result.logs[c] = p.logs(c)
    finally:
        p.down()
    if result.play_rc == 0:
        result.collect = podlib.ferry(s3, "collect", "--manifest", url, "--wait", "20", check=False)
        result.done = s3.get_json(bucket, f"ferry/jobs/{layout.job_id}/attempts/1/done.json")
    return result


def wait_for_log(pod, container, text, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in pod.logs(container):
            return
        time.sleep(0.1)
    raise AssertionError(f"{container} never logged {text!r}: {pod.logs(container)}")


def tree(root):
    """{relative path: bytes} of every file under `root`, and the sorted list of its directories."""
    root = Path(root)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    dirs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    return files, dirs
