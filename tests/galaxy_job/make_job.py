#!/usr/bin/env python3
"""Have Galaxy's own code (galaxy-app 26.1.2 from PyPI) write a Kubernetes job, for ferry tests.

    make_job.py --job-dir DIR --job-id ID --tool-command 'SHELL COMMAND' [--galaxy-lib-dir DIR]
                [--shell /bin/sh] [--image IMAGE]

This runs the real ``KubernetesJobRunner.queue_job`` (galaxy/jobs/runners/kubernetes.py), which calls
the real ``prepare_job`` -> ``command_factory.build_command`` (writes DIR/tool_script.sh) ->
``get_job_file`` -> ``job_script`` -> ``write_executable_script`` (writes DIR/galaxy_<ID>.sh), and then
builds the k8s Job object. Only what needs a Galaxy server is stubbed (galaxy_stubs.py): the
database, ``JobWrapper.prepare()`` (the evaluated command line is ``--tool-command``), the tool (fields
from a real ``XmlToolSource``), ``job_io`` (no input/output datasets), and the k8s API:
``kubernetes.Job`` (pykube) is replaced by a recorder, so nothing is sent; the runner's pykube client
is built from a throwaway kubeconfig and never used.

Prints one JSON line: job_dir, job_script, exit_code_file, command, args, working_dir, tool_stdout,
tool_stderr (what Galaxy puts in the container spec and where it reads results) and k8s_job (the
whole Job object the runner would have POSTed).
"""

import argparse
import json
import os
import sys
import tempfile

from galaxy.jobs.runners import kubernetes
from galaxy_stubs import (
    JobWrapper,
    k8s_destination,
    KUBECONFIG,
    make_app,
    new_job,
    Tool,
)


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
    job = new_job(job_id)
    app = make_app(job, outputs_to_working_directory=True)  # as ferry's galaxy.yml sets it
    # A k8s destination as job_conf would define it; shell: /bin/sh because the tool image has no bash.
    destination = k8s_destination(shell=shell)
    wrapper = JobWrapper(job, app, Tool(app, image), destination, job_dir, tool_command,
                         galaxy_lib_dir=galaxy_lib_dir)

    kubernetes.Job = _RecordedJob
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(KUBECONFIG)
        runner = kubernetes.KubernetesJobRunner(app, 1, k8s_config_path=kubeconfig)  # no start(): no threads
        runner.queue_job(wrapper)
    for outcome in wrapper.outcomes:
        raise RuntimeError(f"Galaxy ended the job at submission: {outcome}")
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
