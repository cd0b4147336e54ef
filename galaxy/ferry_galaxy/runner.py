"""Galaxy's Kubernetes runner with the job's files staged through S3 by ferry instead of a shared volume.

Loaded from job_conf.yml as ``load: ferry_galaxy.runner:FerryKubernetesJobRunner``; every ``k8s_*``
parameter of Galaxy's runner still applies, plus the ``ferry_*`` parameters in ``FERRY_PARAM_SPECS``.
Around each job:

1. ``queue_job`` (Galaxy's) writes the job script; then, where it builds the Job spec
   (``__get_k8s_job_spec``), this runner runs ``ferry stage`` (job directory, inputs, outputs) and
   ``ferry inject`` on the spec, so the pod gets ferry's init container, sidecar and emptyDirs.
2. ``finish_job`` and ``fail_job`` run ``ferry collect`` before Galaxy reads any file of the job. A job
   whose results cannot be collected fails with ``JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER``; a pod that
   ended without an exit code gets a non-zero ``.ec`` from collect, so Galaxy sees a failure.
"""

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Optional, Union

import yaml
from galaxy import model
from galaxy.jobs.runners import JobState
from galaxy.jobs.runners.kubernetes import KubernetesJobRunner
from galaxy.jobs.runners.util.pykube_util import find_job_object_by_name, find_pod_object_by_name
from galaxy.util import asbool

log = logging.getLogger(__name__)

__all__ = ("FerryKubernetesJobRunner", "FerryError")

# `ferry --help`, "Exit codes".
EXIT_MISSING = 5  # an object named by the manifest is missing (for `status`: no manifest)
EXIT_JOB_FAILED = 9  # the job ended without an exit code; collect wrote a non-zero .ec

# The pod status when the Kubernetes API could not be read: neither a failure nor a pod that never ran.
POD_UNREADABLE: dict = {}

SIDECAR_KINDS = ("native", "shared-pid")
# ferry inject's container names: the init container, and the sidecar (`ferry-sidecar`, or with a
# z…z- prefix in shared-pid mode so it sorts after the tool container).
INIT_NAME = "ferry-init"
SIDECAR_SUFFIX = "ferry-sidecar"

# Galaxy builds the Job spec in this private method (name-mangled); it is the one place that has the
# AsynchronousJobState after the job script is written and whose result is POSTed unchanged.
_SPEC_HOOK = "_KubernetesJobRunner__get_k8s_job_spec"
# Where Galaxy reads a failed pod (check_watched_item calls it): ferry adds its containers' reason.
_FAILURE_HOOK = "_handle_job_failure"
# Where Galaxy ends a pod unschedulable for too long: nothing ran, collect need not wait.
_UNSCHEDULABLE_HOOK = "_handle_unschedulable_job"
for _hook in (_SPEC_HOOK, _FAILURE_HOOK, _UNSCHEDULABLE_HOOK):
    if not callable(getattr(KubernetesJobRunner, _hook, None)):
        raise ImportError(
            f"galaxy.jobs.runners.kubernetes.KubernetesJobRunner has no {_hook}: ferry_galaxy was written "
            "for Galaxy 26.1; check the runner against this Galaxy version"
        )


class FerryError(Exception):
    """A ferry command failed; the message names the command and its error."""


class JobGone(Exception):
    """The job left the queued state (the user deleted or stopped it) while ferry staged it."""


def env_mapping(value: Union[None, str, dict]) -> dict[str, str]:
    """Environment variables from a job_conf mapping or a YAML/JSON mapping string; booleans as true/false."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: VALUE, got {value!r}")
    out = {}
    for name, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out[str(name)] = "" if v is None else str(v)
    return out


def path_list(value: Union[None, str, list]) -> list[str]:
    """Paths from a YAML list or a comma-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(p).strip() for p in value if str(p).strip()]


def byte_size(value: Union[str, int]) -> int:
    """Bytes from a size with a unit: ``20Gi``, ``20GiB``, ``20G`` (binary units), ``512Mi``, ``100Ki``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)(?:i?B)?\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size with a unit such as 20Gi or 512Mi")
    power = "KMGT".index(m[2][0]) + 1
    return int(float(m[1]) * 1024**power)


def cache_spec(value: str) -> str:
    """``hostpath:/ABSOLUTE/DIR`` (ferry inject --cache), or the empty string for no cache."""
    value = str(value or "").strip()
    if value and not re.fullmatch(r"hostpath:/[^\s]*", value):
        raise ValueError(f"{value!r} is not hostpath:/ABSOLUTE/DIR")
    return value


# What `ferry inject --env` refuses (src/inject/credentials.rs CREDENTIAL_NAMES).
CREDENTIAL_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                              "AWS_SECURITY_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"})

FERRY_PARAM_SPECS = dict(
    # Each can be set on the runner plugin (job_conf `runners:`) and on a destination or TPV rule
    # (`params:`); the destination's value wins. ferry_transfer_threads is the plugin's only.
    #
    # Stage this destination's jobs through S3 with ferry; false runs them as Galaxy's plain Kubernetes
    # runner would (shared volumes).
    ferry_enabled=dict(map=asbool, default=True),
    # s3://BUCKET/PREFIX where jobs are staged; one prefix per Galaxy instance (job ids repeat across instances).
    ferry_url=dict(map=str, valid=lambda s: str(s).startswith("s3://") and len(str(s)) > 5, default=None),
    # The ferry binary on the Galaxy handler.
    ferry_binary=dict(map=str, default="ferry"),
    # The ferry image for the init container and the sidecar.
    ferry_image=dict(map=str, default=None),
    # native (Kubernetes >= 1.29) or shared-pid (older clusters, podman).
    ferry_sidecar=dict(map=str, valid=lambda s: s in SIDECAR_KINDS, default="native"),
    # Environment for ferry on both sides: the handler's ferry commands and ferry's containers (inject --env).
    ferry_env=dict(map=env_mapping, default={}),
    # Environment for the handler's ferry commands only (added to Galaxy's own environment).
    ferry_head_env=dict(map=env_mapping, default={}),
    # Seconds `ferry collect` waits for the pod's done.json once Kubernetes reports the Job ended.
    ferry_collect_wait=dict(map=int, valid=lambda x: int(x) >= 0, default=60),
    # Seconds a `ferry stage` or `ferry collect` may run (the job's transfers) before it is killed and the
    # job fails naming the command: a stalled S3 endpoint never holds a thread forever.
    ferry_transfer_timeout=dict(map=int, valid=lambda x: int(x) >= 1, default=3600),
    # Seconds any other ferry command (`status`, `inject`) may run before it is killed.
    ferry_command_timeout=dict(map=int, valid=lambda x: int(x) >= 1, default=120),
    # Passed to `ferry collect --link-outputs-under` when set (outputs become symlinks into an S3 mount).
    ferry_link_outputs_under=dict(map=str, valid=lambda s: s is None or str(s).startswith("/"), default=None),
    # Reference data staged for every job of the destination (ferry stage --index): a list or comma-separated paths.
    ferry_index_paths=dict(map=path_list, valid=lambda ps: all(p.startswith("/") for p in ps), default=[]),
    # Directories of reference data (data tables, .loc files point into them): each file the job's command
    # line or config files name under one of them is staged, with its siblings of the same name prefix
    # (hg38.fa -> hg38.fa.amb, hg38.fa.bwt, ...), and nothing else. A directory is staged whole only when a
    # data table lists it (a STAR index); one named otherwise (a user's free text, a root itself) never is.
    ferry_reference_roots=dict(
        map=path_list, valid=lambda ps: all(p.startswith("/") and os.path.normpath(p) != "/" for p in ps), default=[]
    ),
    # Most bytes of reference data (from ferry_reference_roots) one job may stage, with a unit (100Gi): a job
    # whose command line or config files name more fails before anything is uploaded, naming the largest
    # paths. Empty: no limit.
    ferry_reference_max_bytes=dict(map=lambda v: None if v in (None, "") else byte_size(v), default=None),
    # Stage the tool's directory (scripts next to the tool XML) as reference data (unless the pod mounts it).
    ferry_stage_tool_directory=dict(map=asbool, default=True),
    # serviceAccountName of the job pods (Galaxy's runner sets none): the account IRSA / Pod Identity maps
    # to the S3 role, e.g. manifests/serviceaccount-irsa.yaml.
    ferry_service_account=dict(map=str, default=None),
    # Space the job writes besides its staged files (outputs, temporary files), e.g. 20Gi (inject --disk):
    # sizes the emptyDirs and the pod's ephemeral-storage request. Default: staged bytes + 1Gi.
    ferry_disk=dict(map=lambda v: None if v in (None, "") else byte_size(v), default=None),
    # Node-local reference cache, hostpath:/var/cache/ferry (inject --cache); empty: none.
    ferry_cache=dict(map=cache_spec, default=""),
    # Threads that run stage (before the Job is created) and collect (after it ended), apart from Galaxy's
    # runner workers, so slow transfers never hold up the handler's other jobs. Plugin only.
    ferry_transfer_threads=dict(map=int, valid=lambda x: int(x) >= 1, default=4),
    # A Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for ferry's containers only
    # (inject --credentials-secret), where IRSA / Pod Identity is not used.
    ferry_credentials_secret=dict(map=str, default=None),
)

# Settings a destination cannot change: they belong to the runner plugin as a whole.
PLUGIN_ONLY = ("ferry_transfer_threads",)


class _CoreSchemaLoader(yaml.SafeLoader):
    """Reads `ferry inject`'s YAML 1.2 output: only true/false are booleans, no dates, no base-60.

    PyYAML implements YAML 1.1, where an unquoted ``yes``, ``on`` or ``2024-01-01`` (a label value, a
    tool version) is a boolean or a date; YAML 1.2 writers leave those unquoted.
    """


_CoreSchemaLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _CoreSchemaLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_regexp), list(_first))


class Settings(dict):
    """The ferry_* settings of one job: the destination's params over the runner plugin's."""

    def __getattr__(self, name):
        return self[f"ferry_{name}"]


class FerryKubernetesJobRunner(KubernetesJobRunner):
    """KubernetesJobRunner whose jobs get their files from S3 (ferry) instead of shared volumes."""

    runner_name = "FerryKubernetesRunner"

    def __init__(self, app, nworkers, **kwargs):
        kwargs.setdefault("runner_param_specs", {}).update(FERRY_PARAM_SPECS)
        super().__init__(app, nworkers, **kwargs)
        threads = self.runner_params["ferry_transfer_threads"]
        # Two pools: a burst of slow stages never delays the collect (and so the end) of finished jobs.
        self._stage_pool = ThreadPoolExecutor(threads, thread_name_prefix="ferry-stage")
        self._collect_pool = ThreadPoolExecutor(threads, thread_name_prefix="ferry-collect")
        # Failed jobs collect apart too: a burst of them never delays the collect of finished jobs.
        self._fail_pool = ThreadPoolExecutor(threads, thread_name_prefix="ferry-fail")
        self._pending = set()
        self._pending_lock = threading.Lock()

    def shutdown(self):
        super().shutdown()
        self._stage_pool.shutdown(wait=False, cancel_futures=True)
        self._collect_pool.shutdown(wait=False, cancel_futures=True)
        self._fail_pool.shutdown(wait=False, cancel_futures=True)

    # --- settings: the destination's params over the plugin's -------------------------------

    def ferry_settings(self, job_wrapper) -> Settings:
        """Every ferry_* setting for this job; a bad value raises FerryError naming it and the destination."""
        destination = job_wrapper.job_destination
        params = getattr(destination, "params", None) or {}
        out = Settings()
        for name, spec in FERRY_PARAM_SPECS.items():
            if name not in params or name in PLUGIN_ONLY:
                out[name] = self.runner_params[name]
                continue
            raw = params[name]
            try:
                value = spec["map"](raw)
                if "valid" in spec and not spec["valid"](value):
                    raise ValueError("not a valid value")
            except (TypeError, ValueError) as e:
                raise FerryError(f"destination {destination.id!r}: {name} {raw!r}: {e}") from e
            out[name] = value
        if out.enabled:
            for required in ("ferry_url", "ferry_image"):
                if not out[required]:
                    raise FerryError(f"destination {destination.id!r}: {required} is not set (runner or destination)")
        return out

    # --- pre-job: stage and inject, on the stage pool -------------------------------------------

    def queue_job(self, job_wrapper):
        """Galaxy's worker thread hands the job to the stage pool and is free again at once."""
        self._submit(self._stage_pool, self._queue_job, job_wrapper)

    def _queue_job(self, job_wrapper):
        try:
            super().queue_job(job_wrapper)
        except FerryError as e:
            log.error("(%s) ferry could not prepare the job: %s", job_wrapper.get_id_tag(), e)
            job_wrapper.fail(f"Could not stage the job's files to S3: {e}")
        except JobGone as e:
            # As Galaxy's prepare_job does for a job deleted before it ran: no Kubernetes Job, no failure.
            log.info("(%s) %s: no Kubernetes Job created", job_wrapper.get_id_tag(), e)
            if job_wrapper.cleanup_job in ("always", "onsuccess"):
                job_wrapper.cleanup()

    def _KubernetesJobRunner__get_k8s_job_spec(self, ajs):
        """Galaxy's Job spec, after `ferry stage` of the job, with ferry's containers and volumes injected.

        Called by ``queue_job`` once the job script is written, just before the Job is created.
        """
        spec = super()._KubernetesJobRunner__get_k8s_job_spec(ajs)
        settings = self.ferry_settings(ajs.job_wrapper)
        if not settings.enabled:
            log.info("(%s) ferry_enabled is false: Galaxy's own volumes serve the job", ajs.job_wrapper.get_id_tag())
            return spec
        if settings.service_account:
            spec["template"]["spec"]["serviceAccountName"] = settings.service_account
        mounts = pod_mounts(spec)
        if settings.cache:  # inject mounts the node cache too: no root may swallow it
            mounts.append(os.path.normpath(settings.cache.split(":", 1)[1]))
        url = self._stage(ajs, settings, mounts)
        state = ajs.job_wrapper.get_state()
        if state != model.Job.states.QUEUED:  # deleted or stopped while it was staged
            raise JobGone(f"the job became {state} while ferry staged it")
        ajs.ferry_manifest_url = url
        return self._inject(url, spec, settings)

    def _stage(self, ajs, settings: Settings, mounts: list[str]) -> str:
        job_wrapper = ajs.job_wrapper
        job_io = job_wrapper.job_io
        inputs = list(_unique(input_paths(job_io)))  # raises, naming the dataset, before anything is sent
        ferry_job_id = self._unused_job_id(job_wrapper.get_id_tag(), settings)
        args = [
            "stage",
            "--url",
            settings.url,
            "--job-id",
            ferry_job_id,
            "--workdir",
            os.path.abspath(job_wrapper.working_directory),
            "--exit-code-file",
            os.path.abspath(ajs.exit_code_file),
        ]
        for path in inputs:
            args += ["--input", path]
        for path in _unique(self._output_paths(job_io)):
            args += ["--output", path]
        for path in _unique(self._index_paths(job_wrapper, settings, mounts)):
            args += ["--index", path]
        for path in mounts:
            args += ["--pod-mount", path]
        url = self._ferry(args, "stage", settings).stdout.strip().splitlines()[-1]
        log.info("(%s) ferry staged the job as %s", job_wrapper.get_id_tag(), url)
        return url

    @staticmethod
    def _output_paths(job_io):
        """Where the job writes each output: the working-directory path with outputs_to_working_directory,
        else the object-store path (``str(DatasetPath)``), and its extra-files directory."""
        for dataset_path in job_io.get_output_fnames():
            yield str(dataset_path)
            if dataset_path.false_extra_files_path:
                yield dataset_path.false_extra_files_path

    def _index_paths(self, job_wrapper, settings: Settings, mounts: list[str]):
        yield from settings.index_paths
        tool_dir = getattr(job_wrapper.tool, "tool_dir", None)
        if settings.stage_tool_directory and tool_dir and os.path.isdir(tool_dir):
            yield os.path.abspath(str(tool_dir))
        if settings.reference_roots:
            tables = data_table_paths(getattr(self.app, "tool_data_tables", None), settings.reference_roots)
            found = reference_files(job_texts(job_wrapper), settings.reference_roots, tables)
            # What the pod reads from its own mounts (CVMFS, a tool-data claim) is not staged: not counted.
            staged = [p for p in found if not any(p == m or p.startswith(m.rstrip("/") + "/") for m in mounts)]
            check_reference_bytes(staged, settings.reference_max_bytes)
            yield from found

    def _unused_job_id(self, id_tag: str, settings: Settings) -> str:
        """The Galaxy job id, or ``ID-2``, ``ID-3``… when an earlier submission of the job (a resubmission
        after an OOM kill, another Galaxy with the same prefix) already used it: its done.json must not be
        taken for this submission's."""
        for attempt in range(1, 100):
            job_id = id_tag if attempt == 1 else f"{id_tag}-{attempt}"
            url = f"{settings.url.rstrip('/')}/jobs/{job_id}/manifest.json"
            p = self._ferry(["status", "--manifest", url], "status", settings, check=False)
            if p.returncode == EXIT_MISSING:
                return job_id
            if p.returncode != 0:
                raise FerryError(_failure("status", p))
        raise FerryError(f"job {id_tag} was staged 99 times under {settings.url}")

    def _inject(self, url: str, spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
        args = ["inject", "--manifest", url, "--image", settings.image, "--sidecar", settings.sidecar]
        for name, value in settings.env.items():
            # Keys in ferry_env serve the handler only: a pod gets them from ferry_credentials_secret
            # (inject refuses credentials as plain values in the Job spec).
            if name not in CREDENTIAL_NAMES:
                args += ["--env", f"{name}={value}"]
        if settings.credentials_secret:
            args += ["--credentials-secret", settings.credentials_secret]
        if settings.disk is not None:
            args += ["--disk", str(settings.disk)]
        if settings.cache:
            args += ["--cache", settings.cache]
        job = {"apiVersion": "batch/v1", "kind": "Job", "spec": spec}
        out = self._ferry([*args, "-f", "-"], "inject", settings, stdin=json.dumps(job)).stdout
        return yaml.load(out, Loader=_CoreSchemaLoader)["spec"]

    # --- post-job: collect before Galaxy reads the job's files, on the collect pool ------------

    def finish_job(self, job_state):
        self._submit(self._collect_pool, self._finish_job, job_state)

    def _finish_job(self, job_state):
        collected = self._collect(job_state)
        if collected is False:  # not a ferry job (ferry_enabled: false)
            return super().finish_job(job_state)
        if collected is None or collected.returncode not in (0, EXIT_JOB_FAILED):
            # Without collect, a missing .ec would read as exit code 0: fail instead.
            if collected:
                reason = _failure("collect", collected)
            else:
                reason = getattr(job_state, "ferry_collect_problem", "no ferry manifest is known for the job")
            job_state.fail_message = f"The job's results could not be brought back from S3: {reason}"
            job_state.runner_state = JobState.runner_states.JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER
            self.mark_as_failed(job_state)
            return
        super().finish_job(job_state)

    def fail_job(self, job_state, exception=False, message="Job failed", full_status=None):
        self._submit(self._fail_pool, self._fail_job, job_state, exception, message, full_status)

    def _fail_job(self, job_state, exception=False, message="Job failed", full_status=None):
        # Best effort: the job fails anyway, but with the tool's stdout/stderr and .ec when the pod left them.
        if getattr(job_state, "job_id", None) and not hasattr(job_state, "ferry_never_ran"):
            self._check_gone_pod(job_state)
        if not getattr(job_state, "ferry_failure", None):
            self._collect(job_state)
        super().fail_job(job_state, exception, message, full_status)

    def _check_gone_pod(self, job_state):
        """A job failed without Galaxy reading its pod (its Kubernetes Job was deleted outside Galaxy): when
        no ferry container ran, collect does not wait, and the job's info says why unless Galaxy's does."""
        if hasattr(job_state, "ferry_collect"):  # collected already (finish_job found nothing to bring back)
            return
        job_state.ferry_never_ran = never_ran(self._pod_status(job_state), gone=True)
        if not getattr(job_state, "fail_message", None):
            self._note_never_ran(job_state)

    def _handle_unschedulable_job(self, k8s_job, job_state):
        """Galaxy's ending of a pod unschedulable past k8s_unschedulable_walltime_limit: nothing ran, so
        collect does not wait for a done.json."""
        self._remember_manifest_url(job_state, k8s_job.obj)
        job_state.ferry_never_ran = f"{INIT_NAME} never started: the pod was never scheduled"
        return super()._handle_unschedulable_job(k8s_job, job_state)

    def _handle_job_failure(self, k8s_job, job_state):
        """Galaxy's reading of a failed pod, then ferry's own: when ferry's init container or sidecar
        failed, its error line becomes the job's message and, as nothing can be collected, its stderr.

        The manifest is read from the Kubernetes Job first: Galaxy queues the Job's deletion here, before
        the job is finished or failed, and a runner started after a Galaxy restart knows it from nowhere else."""
        self._remember_manifest_url(job_state, k8s_job.obj)
        mark_failed = super()._handle_job_failure(k8s_job, job_state)
        status = self._pod_status(job_state)
        job_state.ferry_never_ran = never_ran(status)
        failure = ferry_container_failure(status)
        if failure is None:
            return self._note_never_ran(job_state) or mark_failed
        container, line = failure
        job_state.ferry_failure = failure
        what = "fetch the job's files from S3" if container == INIT_NAME else "send the job's results to S3"
        job_state.fail_message = f"ferry could not {what} ({container}): {line}"
        log.error("(%s) %s", job_state.job_wrapper.get_id_tag(), job_state.fail_message)
        with open(job_state.error_file, "a") as f:
            f.write(f"{job_state.fail_message}\n")
        stderr = os.path.join(job_state.job_wrapper.working_directory, "outputs", "tool_stderr")
        # Nothing comes back from a pod whose ferry failed (no done.json): the line is the stderr Galaxy shows.
        if os.path.isdir(os.path.dirname(stderr)) and not (os.path.exists(stderr) and os.path.getsize(stderr)):
            with open(stderr, "a") as f:
                f.write(f"{job_state.fail_message}\n")
        return True

    def _note_never_ran(self, job_state) -> bool:
        """When no ferry container ever ran: that is the job's info (and error file). True if so."""
        reason = job_state.ferry_never_ran
        if not reason:
            return False
        job_state.fail_message = reason
        log.error("(%s) %s", job_state.job_wrapper.get_id_tag(), reason)
        with contextlib.suppress(OSError), open(job_state.error_file, "a") as f:
            f.write(f"{reason}\n")
        return True

    def _pod_status(self, job_state) -> Optional[dict]:
        """The status of the job's pod as Kubernetes reports it; None when there is no pod, POD_UNREADABLE
        when the API could not be read (then nothing is concluded from it)."""
        try:
            pods = find_pod_object_by_name(self._pykube_api, job_state.job_id, self.runner_params["k8s_namespace"])
            items = pods.response["items"]
        except Exception:
            log.exception("(%s) could not read the job's pod", job_state.job_wrapper.get_id_tag())
            return POD_UNREADABLE
        return (items[0].get("status") or {}) if items else None

    def _collect(self, job_state):
        """Runs `ferry collect` once per job state: its CompletedProcess; None when no pod ran for it (or its
        manifest is unknown); False when the job is not a ferry job."""
        if hasattr(job_state, "ferry_collect"):
            return job_state.ferry_collect
        job_state.ferry_collect = None
        try:
            settings = self.ferry_settings(job_state.job_wrapper)
        except FerryError as e:
            log.error("(%s) %s", job_state.job_wrapper.get_id_tag(), e)
            return None
        if not settings.enabled:
            job_state.ferry_collect = False
            return False
        url = self._manifest_url(job_state)
        if url is None:
            return None
        # A pod whose ferry-init never ran uploads no done.json: collect writes a non-zero .ec at once.
        wait = 0 if getattr(job_state, "ferry_never_ran", None) else settings.collect_wait
        args = ["collect", "--manifest", url, "--wait", str(wait)]
        if settings.link_outputs_under:
            args += ["--link-outputs-under", settings.link_outputs_under]
        id_tag = job_state.job_wrapper.get_id_tag()
        try:
            p = self._ferry(args, "collect", settings, check=False)
        except FerryError as e:
            log.error("(%s) %s", id_tag, e)
            job_state.ferry_collect_problem = str(e)
            return None
        if p.returncode == 0:
            log.info("(%s) ferry collected %s", id_tag, url)
        elif p.returncode == EXIT_JOB_FAILED:
            log.info("(%s) the job ended without an exit code: %s", id_tag, _last_line(p.stderr))
        else:
            log.error("(%s) %s", id_tag, _failure("collect", p))
        job_state.ferry_collect = p
        return p

    def _manifest_url(self, job_state) -> Optional[str]:
        """The manifest of the job's pod: remembered at staging or before Galaxy deleted the Kubernetes Job,
        else read back from the Kubernetes Job (after a Galaxy restart). None when no Kubernetes Job was created."""
        external_id = getattr(job_state, "job_id", None)
        if not external_id:
            return None
        url = getattr(job_state, "ferry_manifest_url", None)
        if url:
            return url
        try:
            jobs = find_job_object_by_name(self._pykube_api, external_id, self.runner_params["k8s_namespace"])
            items = jobs.response["items"]
        except Exception:
            log.exception("(%s) could not read Kubernetes Job %s", job_state.job_wrapper.get_id_tag(), external_id)
            return None
        for job in items:
            if self._remember_manifest_url(job_state, job):
                return job_state.ferry_manifest_url
        why = "has no ferry manifest" if items else "is gone, and with it the job's ferry manifest"
        log.error("(%s) Kubernetes Job %s %s", job_state.job_wrapper.get_id_tag(), external_id, why)
        return None

    @staticmethod
    def _remember_manifest_url(job_state, k8s_job: dict) -> bool:
        """Keeps on the job state the manifest that `ferry inject` put in the Kubernetes Job's pod spec."""
        if getattr(job_state, "ferry_manifest_url", None):
            return True
        url = manifest_url_of(k8s_job)
        if url is None:
            return False
        job_state.ferry_manifest_url = url
        return True

    # --- the pools ------------------------------------------------------------------------------

    def _submit(self, pool, method, *args):
        """Runs method(*args) on pool as Galaxy's run_next would: in a database session, failing the job
        on an unexpected exception."""
        future = pool.submit(self._run_in_session, method, *args)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future):
        with self._pending_lock:
            self._pending.discard(future)

    def _run_in_session(self, method, arg, *rest):
        session = getattr(getattr(self.app, "model", None), "session", None)
        with session() if callable(session) else contextlib.nullcontext():
            try:
                if callable(session):
                    self._ensure_db_session(arg)
                method(arg, *rest)
            except Exception as e:
                wrapper = getattr(arg, "job_wrapper", arg)
                log.exception("(%s) ferry runner: %s failed", wrapper.get_id_tag(), method.__name__)
                if method.__name__ != "_fail_job":
                    wrapper.fail(f"ferry runner error in {method.__name__.lstrip('_')}: {e}", exception=True)

    def wait_for_transfers(self, timeout: Optional[float] = None) -> bool:
        """Waits until no stage or collect is queued or running; False if some still are after timeout."""
        with self._pending_lock:
            pending = list(self._pending)
        done, not_done = futures_wait(pending, timeout=timeout)
        return not not_done

    # --- the ferry binary -----------------------------------------------------------------------

    def _ferry(self, args, what, settings: Settings, stdin=None, check=True) -> subprocess.CompletedProcess:
        """Runs `ferry ARGS`; FerryError when it cannot start, runs past its timeout, or (check) fails."""
        cmd = [settings.binary, *map(str, args)]
        env = {**os.environ, **settings.env, **settings.head_env}
        timeout = settings.transfer_timeout if what in ("stage", "collect") else settings.command_timeout
        p = _run(cmd, stdin, env, timeout, what)
        for line in p.stderr.splitlines():
            log.debug("ferry %s: %s", what, line)
        if check and p.returncode != 0:
            raise FerryError(_failure(what, p))
        return p


def _run(cmd: list[str], stdin: Optional[str], env: dict, timeout: int, what: str) -> subprocess.CompletedProcess:
    """cmd in a process group of its own, killed whole when it runs past timeout seconds."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, start_new_session=True)
    except OSError as e:
        raise FerryError(f"cannot run {cmd[0]}: {e}") from e
    with proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            last = _last_line(err)
            raise FerryError(
                f"ferry {what} did not finish within {timeout} s and was killed (is the S3 endpoint reachable? "
                f"ferry_{'transfer' if what in ('stage', 'collect') else 'command'}_timeout)"
                + (f"; its last line: {last}" if last else "")
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ferry_container_failure(status: Optional[dict]) -> Optional[tuple[str, str]]:
    """(container, ferry's error line) of a ferry container that ended with an error, from the pod
    status Galaxy reads (``terminated.message``: ferry's /dev/termination-log, else its log's end)."""
    for c in _container_statuses(status):
        name = c.get("name", "")
        if not (name == INIT_NAME or name.endswith(SIDECAR_SUFFIX)):
            continue
        terminated = _terminated(c)
        if terminated and terminated.get("exitCode"):
            line = _error_line(terminated.get("message") or "")
            code = terminated["exitCode"]
            return (INIT_NAME if name == INIT_NAME else "ferry-sidecar",
                    line or f"exited {code} ({terminated.get('reason') or 'no message'})")
    return None


def never_ran(status: Optional[dict], gone: bool = False) -> Optional[str]:
    """Why no ferry container ever ran in the pod (its init container never ended: so no done.json can
    come), or None when ferry-init ended. ``gone``: the Kubernetes Job was deleted, not failed."""
    if status is POD_UNREADABLE:
        return None
    if status is None:
        return "the job's pod is gone (its Kubernetes Job was deleted)" if gone else "no pod ran for the job"
    init = [c for c in status.get("initContainerStatuses") or [] if c.get("name") == INIT_NAME]
    if init and _terminated(init[0]):
        return None
    waiting = ((init[0].get("state") or {}).get("waiting") or {}) if init else {}
    why = ": ".join(x for x in (waiting.get("reason"), waiting.get("message")) if x)
    if not why:
        unscheduled = [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"
                       and c.get("status") == "False"]
        why = (unscheduled[0].get("reason") if unscheduled else None) or f"pod {status.get('phase') or 'Unknown'}"
    return f"{INIT_NAME} never started: {why}"


def _container_statuses(status: Optional[dict]) -> list[dict]:
    status = status or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


def _terminated(container_status: dict) -> Optional[dict]:
    return (container_status.get("state") or {}).get("terminated") or (container_status.get("lastState") or {}).get(
        "terminated")


def manifest_url_of(k8s_job: dict) -> Optional[str]:
    """FERRY_MANIFEST of a Kubernetes Job's ferry containers (set by `ferry inject`), or None."""
    pod_spec = ((k8s_job.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or []):
        for env in container.get("env") or []:
            if env.get("name") == "FERRY_MANIFEST" and env.get("value"):
                return env["value"]
    return None


def pod_mounts(spec: dict[str, Any]) -> list[str]:
    """Every mountPath of the pod's containers (Galaxy's k8s_persistent_volume_claims, CVMFS...): ferry
    stages nothing under them and never mounts an emptyDir over them."""
    pod = spec["template"]["spec"]
    paths = []
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for m in c.get("volumeMounts") or []:
            path = os.path.normpath(m.get("mountPath") or "")
            if path.startswith("/") and path not in paths:
                paths.append(path)
    return paths


def input_paths(job_io):
    """The files of the job's input datasets (file, metadata files, extra-files directory), checked: a
    dataset whose file name is empty (purged) or missing fails the job before anything is sent, naming
    the dataset. A deferred dataset is skipped: Galaxy materialises it into the job's working directory,
    which is staged."""
    datasets = getattr(job_io, "get_input_datasets", None)
    if datasets is None:  # a job_io without datasets: its file names only
        for path in job_io.get_input_fnames():
            yield _existing(path, "an input")
        return
    for ds in datasets():
        dataset = getattr(ds, "dataset", None)
        if dataset is not None and dataset.state == model.Dataset.states.DEFERRED:
            continue
        hid, name, dataset_id = getattr(ds, "hid", "?"), getattr(ds, "name", None), getattr(dataset, "id", "?")
        what = f"input dataset {hid} ({name!r}, dataset id {dataset_id})"
        for path in job_io.get_input_dataset_fnames(ds):
            yield _existing(path, what)


def _existing(path, what: str) -> str:
    path = str(path or "")
    if not path:
        raise FerryError(f"{what} has no file (purged, or not in any object store): nothing to stage")
    if not os.path.exists(path):
        raise FerryError(f"{what} has no file at {path}: nothing to stage")
    return os.path.abspath(path)


def job_texts(job_wrapper):
    """The text a job reads paths from: its evaluated command line and its config files."""
    yield getattr(job_wrapper, "command_line", None) or ""
    configs = os.path.join(job_wrapper.working_directory, "configs")
    names = list(getattr(job_wrapper, "extra_filenames", None) or [])
    if os.path.isdir(configs):
        names += [os.path.join(configs, n) for n in sorted(os.listdir(configs))]
    for name in dict.fromkeys(names):
        try:
            with open(name, errors="replace") as f:
                yield f.read(1 << 20)
        except OSError:
            continue


def data_table_paths(tables, roots) -> frozenset:
    """Every absolute path under ``roots`` that one of Galaxy's data tables (``app.tool_data_tables``, read
    from the .loc files) lists: the directories ferry may stage whole."""
    roots = [os.path.normpath(r) for r in roots]
    found = set()
    for table in (getattr(tables, "data_tables", None) or {}).values():
        get_fields = getattr(table, "get_fields", None)
        for row in get_fields() if callable(get_fields) else []:
            for value in row:
                path = os.path.normpath(str(value).strip()) if str(value).strip().startswith("/") else None
                if path and any(path == r or path.startswith(r + "/") for r in roots):
                    found.add(path)
    return frozenset(found)


def reference_files(texts, roots, table_paths=frozenset()):
    """The files under ``roots`` that ``texts`` name: each named file and the files beside it whose name
    starts with its name and a dot (a bwa index ``hg38.fa`` -> ``hg38.fa.amb``, ``hg38.fa.bwt``...), and
    a named directory only when a data table lists it (``table_paths``). Nothing else of the directory,
    no directory a user's free text names (a root itself, a genome's folder: terabytes for every job),
    and nothing a symlink leads out of the roots to."""
    roots = [os.path.normpath(r) for r in roots]
    real_roots = [os.path.realpath(r) for r in roots]
    found, skipped = [], set()
    for text in texts:
        for root in roots:
            r = re.escape(root)
            # Quoted (a path with spaces), then bare up to the shell's or JSON's punctuation.
            quoted = re.finditer(rf"'({r}/[^'\n]+)'|\"({r}/[^\"\n]+)\"", text)
            bare = re.finditer(rf"()({r}/[^\s'\"`;|&<>(){{}}$,=]+)", text)
            for m in (*quoted, *bare):
                named = os.path.normpath(m.group(1) or m.group(2))
                if named != root and not named.startswith(root + "/"):
                    continue  # `..` left the root
                if named == root or (os.path.isdir(named) and named not in table_paths):
                    _skip_directory(named, skipped)
                    continue
                found.extend(p for p in _with_siblings(named) if _inside(p, real_roots))
    return _outermost(dict.fromkeys(found))


def _outermost(paths):
    """``paths`` without those inside another of them (a data table's directory and a file in it that the
    command also names: STAR's --genomeDir DIR --sjdbGTFfile DIR/genes.gtf): the directory brings the file,
    and its bytes count once."""
    given = set(paths)
    return [p for p in paths if not any(p[:i] in given for i in range(1, len(p)) if p[i] == "/")]


def _skip_directory(path: str, skipped: set):
    if path not in skipped:
        skipped.add(path)
        log.warning("not staging %s as reference data: a directory named by the job's command line or config "
                    "files that no data table (.loc file) lists; ferry stages a reference directory only from "
                    "a data table, otherwise only the files named in it", path)


def check_reference_bytes(paths: list[str], limit: Optional[int]):
    """FerryError, naming the largest paths and the setting, when ``paths`` hold more than ``limit`` bytes."""
    if limit is None:
        return
    sizes = {p: _bytes_of(p) for p in paths}
    total = sum(sizes.values())
    if total <= limit:
        return
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    raise FerryError(
        f"the job names {_human(total)} of reference data under ferry_reference_roots, more than "
        f"ferry_reference_max_bytes ({_human(limit)}): "
        + ", ".join(f"{p} ({_human(n)})" for p, n in largest)
        + (f" and {len(paths) - len(largest)} more" if len(paths) > len(largest) else "")
        + "; nothing was uploaded. Name fewer or smaller reference files, or raise ferry_reference_max_bytes"
    )


def _bytes_of(path: str) -> int:
    """Bytes of a file, or of the files in a directory (links not followed)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    total = 0
    for parent, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _inside(path: str, real_roots: list[str]) -> bool:
    """Whether path, its symlinks resolved, is in one of the (resolved) roots."""
    real = os.path.realpath(path)
    if any(real == r or real.startswith(r.rstrip("/") + "/") for r in real_roots):
        return True
    log.warning("not staging %s as reference data: it leads to %s, outside every ferry_reference_roots", path, real)
    return False


def _with_siblings(path):
    if os.path.exists(path):
        yield path
    parent, name = os.path.split(path)
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    for entry in entries:
        if entry.startswith(name + ".") and os.path.isfile(os.path.join(parent, entry)):
            yield os.path.join(parent, entry)


def _error_line(message: str) -> str:
    """ferry's one error line from a termination message: the line itself, or the last ERROR line of a
    log tail (FallbackToLogsOnError), without timestamp and level."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\bERROR\b", line)] or lines[-1:]
    if not errors:
        return ""
    line = re.sub(r"^\S*\d{4}-\d\d-\d\dT\S+\s+ERROR\s+", "", errors[-1])
    return re.sub(r"^ferry:\s*", "", line)


def _unique(paths):
    seen = set()
    for p in paths:
        p = os.path.abspath(str(p))
        if p not in seen:
            seen.add(p)
            yield p


def _last_line(text: str) -> str:
    """ferry's last log line, without its timestamp and level."""
    lines = [line for line in text.splitlines() if line.strip()]
    return re.sub(r"^\d{4}-\d\d-\d\dT\S+\s+[A-Z]+\s+", "", lines[-1]) if lines else ""


def _failure(what: str, p: subprocess.CompletedProcess) -> str:
    return f"ferry {what} exited {p.returncode}: {_last_line(p.stderr) or '(no message)'}"
