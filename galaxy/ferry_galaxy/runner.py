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

import json
import logging
import os
import re
import subprocess
from typing import Any, Optional, Union

import yaml
from galaxy.jobs.runners import JobState
from galaxy.jobs.runners.kubernetes import KubernetesJobRunner
from galaxy.jobs.runners.util.pykube_util import find_job_object_by_name
from galaxy.util import asbool

log = logging.getLogger(__name__)

__all__ = ("FerryKubernetesJobRunner", "FerryError")

# `ferry --help`, "Exit codes".
EXIT_MISSING = 5  # an object named by the manifest is missing (for `status`: no manifest)
EXIT_JOB_FAILED = 9  # the job ended without an exit code; collect wrote a non-zero .ec

SIDECAR_KINDS = ("native", "shared-pid")

# Galaxy builds the Job spec in this private method (name-mangled); it is the one place that has the
# AsynchronousJobState after the job script is written and whose result is POSTed unchanged.
_SPEC_HOOK = "_KubernetesJobRunner__get_k8s_job_spec"
if not callable(getattr(KubernetesJobRunner, _SPEC_HOOK, None)):
    raise ImportError(
        f"galaxy.jobs.runners.kubernetes.KubernetesJobRunner has no {_SPEC_HOOK}: ferry_galaxy was written "
        "for Galaxy 26.1; check the runner against this Galaxy version"
    )


class FerryError(Exception):
    """A ferry command failed; the message names the command and its error."""


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


# What `ferry inject --env` refuses (src/inject/credentials.rs CREDENTIAL_NAMES).
CREDENTIAL_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                              "AWS_SECURITY_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"})

FERRY_PARAM_SPECS = dict(
    # s3://BUCKET/PREFIX where jobs are staged; one prefix per Galaxy instance (job ids repeat across instances).
    ferry_url=dict(map=str, valid=lambda s: str(s).startswith("s3://"), default=None),
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
    # Passed to `ferry collect --link-outputs-under` when set (outputs become symlinks into an S3 mount).
    ferry_link_outputs_under=dict(map=str, default=None),
    # Reference data staged for every job (ferry stage --index): a list or comma-separated paths.
    ferry_index_paths=dict(map=path_list, default=[]),
    # Stage the tool's directory (scripts next to the tool XML) as reference data.
    ferry_stage_tool_directory=dict(map=asbool, default=True),
    # serviceAccountName of the job pods (Galaxy's runner sets none): the account IRSA / Pod Identity maps
    # to the S3 role, e.g. manifests/serviceaccount-irsa.yaml.
    ferry_service_account=dict(map=str, default=None),
    # A Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for ferry's containers only
    # (inject --credentials-secret), where IRSA / Pod Identity is not used.
    ferry_credentials_secret=dict(map=str, default=None),
)


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


class FerryKubernetesJobRunner(KubernetesJobRunner):
    """KubernetesJobRunner whose jobs get their files from S3 (ferry) instead of shared volumes."""

    runner_name = "FerryKubernetesRunner"

    def __init__(self, app, nworkers, **kwargs):
        kwargs.setdefault("runner_param_specs", {}).update(FERRY_PARAM_SPECS)
        super().__init__(app, nworkers, **kwargs)
        for required in ("ferry_url", "ferry_image"):
            if not self.runner_params[required]:
                raise Exception(f"{self.runner_name}: runner parameter {required} is required")
        self._head_env = {**os.environ, **self.runner_params["ferry_env"], **self.runner_params["ferry_head_env"]}

    # --- pre-job: stage and inject ------------------------------------------------------------

    def queue_job(self, job_wrapper):
        try:
            super().queue_job(job_wrapper)
        except FerryError as e:
            log.error("(%s) ferry could not prepare the job: %s", job_wrapper.get_id_tag(), e)
            job_wrapper.fail(f"Could not stage the job's files to S3: {e}")

    def _KubernetesJobRunner__get_k8s_job_spec(self, ajs):
        """Galaxy's Job spec, after `ferry stage` of the job, with ferry's containers and volumes injected.

        Called by ``queue_job`` once the job script is written, just before the Job is created.
        """
        spec = super()._KubernetesJobRunner__get_k8s_job_spec(ajs)
        if self.runner_params["ferry_service_account"]:
            spec["template"]["spec"]["serviceAccountName"] = self.runner_params["ferry_service_account"]
        url = self._stage(ajs)
        ajs.ferry_manifest_url = url
        return self._inject(url, spec)

    def _stage(self, ajs) -> str:
        job_wrapper = ajs.job_wrapper
        job_io = job_wrapper.job_io
        ferry_job_id = self._unused_job_id(job_wrapper.get_id_tag())
        args = [
            "stage",
            "--url",
            self.runner_params["ferry_url"],
            "--job-id",
            ferry_job_id,
            "--workdir",
            os.path.abspath(job_wrapper.working_directory),
            "--exit-code-file",
            os.path.abspath(ajs.exit_code_file),
        ]
        # The dataset files, their metadata files and extra-files directories (JobIO.get_input_dataset_fnames).
        for path in _unique(job_io.get_input_fnames()):
            args += ["--input", path]
        for path in _unique(self._output_paths(job_io)):
            args += ["--output", path]
        for path in _unique(self._index_paths(job_wrapper)):
            args += ["--index", path]
        url = self._ferry(args, "stage").stdout.strip().splitlines()[-1]
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

    def _index_paths(self, job_wrapper):
        yield from self.runner_params["ferry_index_paths"]
        tool_dir = getattr(job_wrapper.tool, "tool_dir", None)
        if self.runner_params["ferry_stage_tool_directory"] and tool_dir and os.path.isdir(tool_dir):
            yield os.path.abspath(str(tool_dir))

    def _unused_job_id(self, id_tag: str) -> str:
        """The Galaxy job id, or ``ID-2``, ``ID-3``… when an earlier submission of the job (a resubmission
        after an OOM kill, another Galaxy with the same prefix) already used it: its done.json must not be
        taken for this submission's."""
        for attempt in range(1, 100):
            job_id = id_tag if attempt == 1 else f"{id_tag}-{attempt}"
            url = f"{self.runner_params['ferry_url'].rstrip('/')}/jobs/{job_id}/manifest.json"
            p = self._ferry(["status", "--manifest", url], "status", check=False)
            if p.returncode == EXIT_MISSING:
                return job_id
            if p.returncode != 0:
                raise FerryError(_failure("status", p))
        raise FerryError(f"job {id_tag} was staged 99 times under {self.runner_params['ferry_url']}")

    def _inject(self, url: str, spec: dict[str, Any]) -> dict[str, Any]:
        args = [
            "inject",
            "--manifest",
            url,
            "--image",
            self.runner_params["ferry_image"],
            "--sidecar",
            self.runner_params["ferry_sidecar"],
        ]
        for name, value in self.runner_params["ferry_env"].items():
            # Keys in ferry_env serve the handler only: a pod gets them from ferry_credentials_secret
            # (inject refuses credentials as plain values in the Job spec).
            if name not in CREDENTIAL_NAMES:
                args += ["--env", f"{name}={value}"]
        if self.runner_params["ferry_credentials_secret"]:
            args += ["--credentials-secret", self.runner_params["ferry_credentials_secret"]]
        job = {"apiVersion": "batch/v1", "kind": "Job", "spec": spec}
        out = self._ferry([*args, "-f", "-"], "inject", stdin=json.dumps(job)).stdout
        return yaml.load(out, Loader=_CoreSchemaLoader)["spec"]

    # --- post-job: collect before Galaxy reads the job's files --------------------------------

    def finish_job(self, job_state):
        collected = self._collect(job_state)
        if collected is None or collected.returncode not in (0, EXIT_JOB_FAILED):
            # Without collect, a missing .ec would read as exit code 0: fail instead.
            reason = _failure("collect", collected) if collected else "no ferry manifest is known for the job"
            job_state.fail_message = f"The job's results could not be brought back from S3: {reason}"
            job_state.runner_state = JobState.runner_states.JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER
            self.mark_as_failed(job_state)
            return
        super().finish_job(job_state)

    def fail_job(self, job_state, exception=False, message="Job failed", full_status=None):
        # Best effort: the job fails anyway, but with the tool's stdout/stderr and .ec when the pod left them.
        self._collect(job_state)
        super().fail_job(job_state, exception, message, full_status)

    def _collect(self, job_state) -> Optional[subprocess.CompletedProcess]:
        """Runs `ferry collect` once per job state; None when no pod ran for it (or its manifest is unknown)."""
        if hasattr(job_state, "ferry_collect"):
            return job_state.ferry_collect
        job_state.ferry_collect = None
        url = self._manifest_url(job_state)
        if url is None:
            return None
        args = ["collect", "--manifest", url, "--wait", str(self.runner_params["ferry_collect_wait"])]
        if self.runner_params["ferry_link_outputs_under"]:
            args += ["--link-outputs-under", self.runner_params["ferry_link_outputs_under"]]
        p = self._ferry(args, "collect", check=False)
        id_tag = job_state.job_wrapper.get_id_tag()
        if p.returncode == 0:
            log.info("(%s) ferry collected %s", id_tag, url)
        elif p.returncode == EXIT_JOB_FAILED:
            log.info("(%s) the job ended without an exit code: %s", id_tag, _last_line(p.stderr))
        else:
            log.error("(%s) %s", id_tag, _failure("collect", p))
        job_state.ferry_collect = p
        return p

    def _manifest_url(self, job_state) -> Optional[str]:
        """The manifest of the job's pod: remembered at staging, or read back from the Kubernetes Job (after
        a Galaxy restart). None when no Kubernetes Job was created."""
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
            pod_spec = job["spec"]["template"]["spec"]
            for container in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
                for env in container.get("env") or []:
                    if env.get("name") == "FERRY_MANIFEST":
                        job_state.ferry_manifest_url = env["value"]
                        return env["value"]
        log.error("(%s) Kubernetes Job %s has no ferry manifest", job_state.job_wrapper.get_id_tag(), external_id)
        return None

    # --- the ferry binary -----------------------------------------------------------------------

    def _ferry(self, args, what, stdin=None, check=True) -> subprocess.CompletedProcess:
        cmd = [self.runner_params["ferry_binary"], *map(str, args)]
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=self._head_env)
        except OSError as e:
            raise FerryError(f"cannot run {cmd[0]}: {e}") from e
        for line in p.stderr.splitlines():
            log.debug("ferry %s: %s", what, line)
        if check and p.returncode != 0:
            raise FerryError(_failure(what, p))
        return p


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
