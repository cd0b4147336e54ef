#!/usr/bin/env python3
"""Have Galaxy's own code (galaxy-app 26.1.2 from PyPI) write a Kubernetes job, for ferry tests.

    make_job.py --job-dir DIR --job-id ID --tool-command 'SHELL COMMAND' [--galaxy-lib-dir DIR]
                [--shell /bin/sh] [--image IMAGE]

This runs the real ``KubernetesJobRunner.queue_job`` (galaxy/jobs/runners/kubernetes.py), which calls
the real ``prepare_job`` -> ``command_factory.build_command`` (writes DIR/tool_script.sh) ->
``get_job_file`` -> ``job_script`` -> ``write_executable_script`` (writes DIR/galaxy_<ID>.sh), and then
builds the k8s Job object. Only what needs a Galaxy server is stubbed:

- the database: ``_NoDb`` session; the job is a transient ``galaxy.model.Job``;
- ``JobWrapper.prepare()``: a real one evaluates the tool's Cheetah template; we set the
  evaluated command line (``--tool-command``) and the HOME/TMP variables the evaluator adds;
- the tool: a stand-in whose fields come from a real ``XmlToolSource`` (profile 24.0 XML below),
  parsed the way ``galaxy.tools.Tool.parse`` does;
- ``job_io``: only the script-integrity settings (Galaxy defaults) and no input/output datasets;
- the k8s API: ``kubernetes.Job`` (pykube) is replaced by a recorder, so nothing is sent;
  the runner's pykube client is built from a throwaway kubeconfig and never used.

Prints one JSON line: job_dir, job_script, exit_code_file, command, args, working_dir, tool_stdout,
tool_stderr (what Galaxy puts in the container spec and where it reads results) and k8s_job (the
whole Job object the runner would have POSTed).
"""

import argparse
import json
import os
import sys
import tempfile
from types import SimpleNamespace
from xml.etree.ElementTree import (
    ElementTree,
    fromstring,
)

from galaxy import model
from galaxy.job_metrics import JobMetrics
from galaxy.jobs import MinimalJobWrapper
from galaxy.jobs.job_destination import JobDestination
from galaxy.jobs.runners import kubernetes
from galaxy.tool_util.deps.containers import ContainerFinder
from galaxy.tool_util.deps.dependencies import AppInfo
from galaxy.tool_util.parser import get_tool_source
from galaxy.tools import Tool

TOOL_XML = """<tool id="ferry_test" name="ferry test" version="1.0" profile="24.0">
    <requirements><container type="docker">{image}</container></requirements>
    <command>unused: the evaluated command line comes from --tool-command</command>
</tool>"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


class _NoDb:
    """Stands in for app.model.context (a SQLAlchemy session) for a transient job."""

    def __init__(self, job):
        self.job = job

    def get(self, cls, ident):
        if cls is not model.Job or ident != self.job.id:
            raise LookupError(f"no {cls.__name__} {ident}")
        return self.job

    def add(self, obj):
        pass

    def commit(self):
        pass

    def refresh(self, obj):
        pass


class _Tool:
    """The fields of galaxy.tools.Tool that the k8s runner reads, filled like Tool.parse() does."""

    requires_galaxy_python_environment = Tool.requires_galaxy_python_environment  # the real property
    produces_entry_points = False
    tool_dir = None
    tool_type = "default"
    tool_shed = None

    def __init__(self, app, image):
        self.app = app
        src = get_tool_source(xml_tree=ElementTree(fromstring(TOOL_XML.format(image=image))))
        self.profile = float(src.parse_profile())
        self.id = self.old_id = src.parse_id()
        self.version = src.parse_version()
        self.home_target = src.parse_home_target()  # Tool.parse, tools/__init__.py:1404
        self.tmp_target = src.parse_tmp_target()  # :1405
        self.tmp_directory_vars = src.parse_tmp_directory_vars()  # :1402
        self.docker_env_pass_through = src.parse_docker_env_pass_through()  # :1418
        self.strict_shell = src.parse_strict_shell()  # :1515
        self.requirements, self.containers, *_ = src.parse_requirements()  # :1536

    def build_dependency_shell_commands(self, job_directory=None):
        return []  # no tool dependency resolution: the container provides the tool

    def find_output_def(self, name):
        return None  # no output datasets


class _JobIO:
    """job_io for a job without datasets; integrity settings are Galaxy's defaults (config_schema.yml)."""

    check_job_script_integrity = True
    check_job_script_integrity_count = 35
    check_job_script_integrity_sleep = 0.25
    version_path = None

    def get_output_fnames(self):
        return []

    def get_input_fnames(self):
        return []


class _JobWrapper(MinimalJobWrapper):
    """The real MinimalJobWrapper (shell, tmp/home dirs, command line, destination config, ...),
    with the DB- and tool-evaluation parts replaced."""

    def __init__(self, job, app, tool, destination, job_dir, tool_command, galaxy_lib_dir):
        super().__init__(job, app, tool=tool)
        self._destination = destination
        self._job_dir = job_dir
        self._tool_command = tool_command
        self._job_io = _JobIO()
        if galaxy_lib_dir:
            self._MinimalJobWrapper__galaxy_lib_dir = galaxy_lib_dir
        self._setup_working_directory(job=job)  # real: sets working_directory, creates working/, outputs/

    @property
    def job_destination(self):
        return self._destination

    def _create_working_directory(self, job):
        os.makedirs(self._job_dir, exist_ok=True)
        return self._job_dir

    def prepare(self, compute_environment=None):
        # What ToolEvaluator.build() returns for a tool without params or datasets: the evaluated
        # command line, and HOME / TMPDIR settings as in galaxy/tools/evaluation.py:890-896.
        self.command_line = self._tool_command
        if home_dir := self.home_directory():
            self.environment_variables.append(dict(name="HOME", value=f'"{home_dir}"', raw=True))
        if tmp_dir := self.tmp_directory():
            for var in self.tool.tmp_directory_vars:
                self.environment_variables.append(dict(name=var, value=f'"{tmp_dir}"', raw=True))

    def fail(self, message, exception=False, **kwds):
        raise RuntimeError(f"Galaxy failed the job: {message}")

    def finish(self, *args, **kwds):
        raise RuntimeError("Galaxy produced no command line for the job")


class _RecordedJob:
    """Replaces pykube's Job in galaxy.jobs.runners.kubernetes: records instead of POSTing."""

    created = []

    def __init__(self, api, obj):
        self.obj = obj
        self.name = None

    def create(self):
        self.name = self.obj["metadata"]["generateName"] + "recorded"
        _RecordedJob.created.append(self.obj)


def make_job(job_dir, job_id, tool_command, galaxy_lib_dir, shell, image):
    job = model.Job()
    job.id = job_id
    job.state = model.Job.states.QUEUED
    config = SimpleNamespace(
        redact_email_in_job_name=True,
        server_name="main",
        environment_setup_file=None,
        cleanup_job="never",
        outputs_to_working_directory=True,  # as ferry's galaxy.yml sets it
        preserve_python_environment="legacy_only",  # Galaxy's default
    )
    app = SimpleNamespace(
        config=config,
        model=SimpleNamespace(context=_NoDb(job)),
        job_metrics=JobMetrics(None, None),  # Galaxy's default: the "core" plugin
        container_finder=ContainerFinder(AppInfo()),
    )
    # A k8s destination as job_conf would define it; shell: /bin/sh because the tool image has no bash.
    destination = JobDestination(id="k8s", runner="k8s", shell=shell, params={"docker_enabled": True})
    wrapper = _JobWrapper(job, app, _Tool(app, image), destination, job_dir, tool_command, galaxy_lib_dir)

    kubernetes.Job = _RecordedJob
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(KUBECONFIG)
        runner = kubernetes.KubernetesJobRunner(app, 1, k8s_config_path=kubeconfig)  # no start(): no threads
        runner.queue_job(wrapper)
    if len(_RecordedJob.created) != 1 or runner.monitor_queue.empty():
        raise RuntimeError("Galaxy did not submit a Kubernetes job")
    ajs = runner.monitor_queue.get_nowait()
    k8s_job = _RecordedJob.created[0]
    container = k8s_job["spec"]["template"]["spec"]["containers"][0]

    # Galaxy 26.1.2 galaxy/jobs/runners/kubernetes.py:569-572 (KubernetesJobRunner.__get_k8s_containers):
    #   "command": [ajs.job_wrapper.shell],
    #   "args": ["-c", f"{ajs.job_file}; exit $(cat {ajs.exit_code_file})"],
    #   "workingDir": ajs.job_wrapper.working_directory,
    expected = {
        "command": [wrapper.shell],
        "args": ["-c", f"{ajs.job_file}; exit $(cat {ajs.exit_code_file})"],
        "workingDir": wrapper.working_directory,
    }
    for key, value in expected.items():
        if container[key] != value:
            raise RuntimeError(f"container {key} is {container[key]!r}, expected {value!r}")

    outputs = os.path.join(wrapper.working_directory, "outputs")  # runners/__init__.py:651-656
    return {
        "job_dir": wrapper.working_directory,
        "job_script": ajs.job_file,
        "exit_code_file": ajs.exit_code_file,
        "command": container["command"],
        "args": container["args"],
        "working_dir": container["workingDir"],
        "tool_stdout": os.path.join(outputs, "tool_stdout"),
        "tool_stderr": os.path.join(outputs, "tool_stderr"),
        "k8s_job": k8s_job,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-dir", required=True, help="job directory (absolute path is used)")
    parser.add_argument("--job-id", required=True, type=int, help="Galaxy job id")
    parser.add_argument("--tool-command", required=True, help="the tool's evaluated command line")
    parser.add_argument("--galaxy-lib-dir", help="GALAXY_LIB written into the script (default: None)")
    parser.add_argument("--shell", default="/bin/sh", help="destination 'shell' (Galaxy's default is /bin/bash)")
    parser.add_argument("--image", default="busybox", help="tool container image")
    args = parser.parse_args()
    job_dir = os.path.abspath(args.job_dir)
    if os.path.exists(job_dir) and os.listdir(job_dir):
        parser.error(f"--job-dir {job_dir} exists and is not empty")
    result = make_job(job_dir, args.job_id, args.tool_command, args.galaxy_lib_dir, args.shell, args.image)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
