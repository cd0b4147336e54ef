"""One Galaxy job through ferry's runner, as a Galaxy job handler would drive it, without a cluster.

``GalaxyJob.submit()`` runs the runner's real ``queue_job`` (Galaxy's job script, then ``ferry stage``
and ``ferry inject`` on the Job spec); the Job it POSTs is captured by ``FakeKubernetesApi``.
``GalaxyJob.run_pod()`` turns that Job into the Pod the Job controller would create and runs it with
``podman kube play`` against the S3 server. ``GalaxyJob.complete()`` gives the Job and Pod status to
the runner's real ``check_watched_item`` (Galaxy's decision: finished or failed, OOM or not), then
runs the work queue like Galaxy's worker threads (``finish_job`` / ``fail_job`` / cleanup).
"""

import queue
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import galaxy_stubs
import kube
import podlib
from ferry_galaxy.runner import FerryKubernetesJobRunner


@dataclass
class PodRun:
    play_rc: int
    exit_codes: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    pod: dict = None  # the Pod with the status the kubelet would report


class RunsPods:
    """The cluster side of a job the runner submitted: its Job's pod run by podman. Needs ``id``, ``base``,
    ``api`` (the FakeKubernetesApi the runner POSTed to) and ``ajs`` (the runner's job state)."""

    def run_pod(self, timeout=60, init_fails=False, host_paths=None, pod_changes=None):
        """The Job's pod, run to its end by podman; always removed. ``host_paths``: {claimName: directory}
        for the Job's persistentVolumeClaim volumes (podman has no PVCs), see ``claims_as_host_paths``."""
        name = f"gxy-{self.id}-{uuid.uuid4().hex[:6]}"
        pod = podlib.for_podman(podlib.pod_from_job(self.api.created[-1], name))
        if host_paths:
            claims_as_host_paths(pod, host_paths)
        if pod_changes:
            pod_changes(pod)
        pod_yaml = self.base / f"{name}.yaml"
        pod_yaml.write_text(yaml.safe_dump(pod))
        p = podlib.Pod(pod_yaml)
        run = PodRun(play_rc=0)
        try:
            run.play_rc = p.start()
            if init_fails:
                assert run.play_rc != 0, "kube play reports a failed init container"
            else:
                assert run.play_rc == 0, p.play.stderr + "".join(p.logs(c) for c in p.init_names)
                run.exit_codes = p.wait(timeout=timeout)
            for c in p.init_names + p.names:
                run.logs[c] = p.logs(c)
            run.pod = kube.pod_status(pod, name)
        finally:
            p.down()
        self.api.job_ended(self.ajs.job_id, run.pod)
        return run


class GalaxyJob(RunsPods):
    """A job with one input dataset (file, metadata file, extra-files directory) and one output."""

    def __init__(self, s3, base, outputs_to_working_directory=True, tool_version="1.0", runner_params=None,
                 tool_id="ferry_test", **destination_params):
        base = Path(base)
        self.extra_runner_params = runner_params or {}
        self.base = base
        self.s3 = s3
        self.id = random.randrange(10**6, 10**7)  # podman names volumes after the job id: keep them unique
        self.make_files(base, outputs_to_working_directory)
        job = galaxy_stubs.new_job(self.id)
        self.app = galaxy_stubs.make_app(job, outputs_to_working_directory=outputs_to_working_directory)
        self.tool = galaxy_stubs.Tool(self.app, podlib.TOOL_IMAGE, tool_id=tool_id, version=tool_version,
                                      tool_dir=self.tool_dir)
        self.destination = galaxy_stubs.k8s_destination(**destination_params)
        self.bucket = session_bucket(s3)
        self.prefix = f"galaxy-{self.id}"
        self.kubeconfig = base / "kubeconfig"
        self.kubeconfig.write_text(galaxy_stubs.KUBECONFIG)
        self.api = kube.FakeKubernetesApi()
        self.runner = self.new_runner()
        self.wrapper = None
        self.ajs = None

    def make_files(self, base, outputs_to_working_directory):
        """The job directory, the input dataset's files, the tool directory, the output, and job_io."""
        self.job_dir = base / "galaxy/jobs/000" / str(self.id)
        files = base / "galaxy/files/000"
        files.mkdir(parents=True)
        self.input = files / "dataset_1.dat"
        self.input.write_text("acgt\nttga\n")
        self.input_metadata = base / "galaxy/files/_metadata_files/000/metadata_1.dat"
        self.input_metadata.parent.mkdir(parents=True)
        self.input_metadata.write_text("lines=2\n")
        self.input_extra = files / "dataset_1_files"
        self.input_extra.mkdir()
        (self.input_extra / "index.txt").write_text("extra\n")
        self.tool_dir = base / "galaxy/tools/ferry_test"
        self.tool_dir.mkdir(parents=True)
        (self.tool_dir / "upper.sh").write_text('tr a-z A-Z < "$1" > "$2"\n')
        self.output_dataset = galaxy_stubs.output_dataset_path(
            2, files / "dataset_2.dat", self.job_dir, outputs_to_working_directory)
        # Where the job writes its output and where Galaxy reads it after the job.
        self.output = Path(str(self.output_dataset))

        self.job_io = galaxy_stubs.JobIO(
            inputs=[self.input, self.input_metadata, self.input_extra], outputs=[self.output_dataset])

    def new_runner(self):
        params = dict(
            k8s_config_path=str(self.kubeconfig),
            **self.k8s_params(),
            ferry_url=f"s3://{self.bucket}/{self.prefix}",
            ferry_binary=str(podlib.FERRY),
            ferry_image=podlib.FERRY_IMAGE,
            ferry_sidecar="shared-pid",  # podman has no native sidecars
            ferry_env=self.s3.env(),
            ferry_credentials_secret=podlib.credentials_secret(),
            ferry_collect_wait=20,
        )
        runner = FerryKubernetesJobRunner(self.app, 1, **{**params, **self.extra_runner_params})
        runner.work_queue = queue.Queue()  # what start() creates, without worker threads
        runner._pykube_api.session.mount(galaxy_stubs.KUBE_SERVER, self.api)
        return runner

    def k8s_params(self):
        """Galaxy's own k8s_* runner parameters for this layout (none: Galaxy's defaults)."""
        return {}

    def command(self, template):
        return template.format(input=self.input, metadata=self.input_metadata, extra=self.input_extra,
                               output=self.output, tool_dir=self.tool_dir)

    def queue(self, tool_command, wait=True):
        """Galaxy's handler hands the job to the runner (queue_job); wait: until its stage has run."""
        self.wrapper = galaxy_stubs.JobWrapper(
            self.app.model.context.job, self.app, self.tool, self.destination, self.job_dir,
            self.command(tool_command), job_io=self.job_io)
        self.runner.queue_job(self.wrapper)  # Galaxy's worker thread hands it to the stage pool
        if wait:
            assert self.runner.wait_for_transfers(timeout=120), "stage still running after 120 s"

    def submit(self, tool_command):
        """queue(), which must create a Job; returns the Job as the runner POSTed it."""
        created = len(self.api.created)
        self.queue(tool_command)
        assert not self.wrapper.outcomes, f"Galaxy ended the job at submission: {self.wrapper.outcomes}"
        self.ajs = self.runner.monitor_queue.get_nowait()
        assert len(self.api.created) == created + 1, self.api.created
        return self.api.created[-1]

    def restart_galaxy(self):
        """A new runner, as after a Galaxy restart: it recovers the running job (recover())."""
        self.runner = self.new_runner()
        self.wrapper.get_job().state = "running"
        self.runner.recover(self.wrapper.get_job(), self.wrapper)
        self.ajs = self.runner.monitor_queue.get_nowait()

    def complete(self):
        """Galaxy's monitor sees the Job ended; its worker threads finish or fail the job."""
        assert self.runner.check_watched_item(self.ajs) is None, "Galaxy still watches the job"
        drain(self.runner)
        assert len(self.wrapper.outcomes) == 1, self.wrapper.outcomes
        return self.wrapper.outcomes[0]

    def output_key(self, attempt=1):
        """The S3 key of the output as attempt ``attempt`` of the job's pod uploaded it (its done.json)."""
        jobs = self.ajs.ferry_manifest_url.split("/", 3)[3].rsplit("/", 1)[0]
        done = self.s3.get_json(self.bucket, f"{jobs}/attempts/{attempt}/done.json")
        [output] = [o for o in done["outputs"] if o["path"] == str(self.output)]
        return output["key"]

    def oom_detected(self):
        """Galaxy's own OOM check (reads containerStatuses[0] of the job's pod)."""
        assert self.ajs.job_id in self.api.pods, "no pod to check: it ran and has not been cleaned up yet"
        return self.runner._KubernetesJobRunner__job_failed_due_to_low_memory(self.ajs)


_BUCKETS = {}


def session_bucket(s3):
    """One bucket for all runner tests, a prefix per job: SeaweedFS gives each bucket volumes of its own
    and runs out of them after a few dozen buckets."""
    if s3.endpoint not in _BUCKETS:
        _BUCKETS[s3.endpoint] = s3.new_bucket("gxyrunner")
    return _BUCKETS[s3.endpoint]


def drain(runner):
    """Runs queued runner methods in order, as Galaxy's worker threads do (run_next), and waits for what
    they hand to ferry's stage and collect pools, until nothing is left."""
    while True:
        try:
            method, arg = runner.work_queue.get_nowait()
        except queue.Empty:
            assert runner.wait_for_transfers(timeout=120), "stage / collect still running after 120 s"
            if runner.work_queue.empty():
                return
            continue
        method(arg)


def claims_as_host_paths(pod, host_paths):
    """Each persistentVolumeClaim volume mounted with a subPath becomes a hostPath volume of its own at
    DIR/subPath (podman has no PVCs and no subPath on most volume kinds): the same files at the same
    mountPath, read-only where the Job says so."""
    spec = pod["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v}
    volumes = [v for v in spec.get("volumes", []) if v["name"] not in claims]
    for c in spec.get("initContainers", []) + spec["containers"]:
        for i, m in enumerate(c.get("volumeMounts", [])):
            if m["name"] not in claims:
                continue
            source = Path(host_paths[claims[m["name"]]]) / m.pop("subPath", "")
            name = f"{m['name']}-{i}-{uuid.uuid4().hex[:6]}"
            volumes.append({"name": name, "hostPath": {"path": str(source), "type": "Directory"}})
            m["name"] = name
    spec["volumes"] = volumes
