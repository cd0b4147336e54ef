"""ferry's Galaxy runner (galaxy/ferry_galaxy) driven by Galaxy 26.1.2's own job code: queue_job writes
the job and creates the Job (captured, no cluster), podman runs its pod against a real S3 server, and
Galaxy's monitor decision and finish_job / fail_job conclude the job. What Galaxy concluded is checked
with Galaxy's own readers (read_exit_code_from, the runner's OOM check)."""

import copy
import importlib
from pathlib import Path

import yaml
from galaxy.config import GALAXY_CONFIG_SCHEMA_PATH
from galaxy.config.schema import AppSchema
from galaxy.job_execution.output_collect import read_exit_code_from
from galaxy.jobs.runners import JobState
from galaxy.jobs.runners.kubernetes import KubernetesJobRunner
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import galaxy_stubs
import podlib
from ferry_galaxy.runner import FerryKubernetesJobRunner
from harness import drain, GalaxyJob

REPO = Path(__file__).resolve().parents[2]

# Like an OOM kill on cgroup v2 (group kill): every process of the tool container dies at once, so
# nothing writes the .ec. Each container has its own cgroup; the sidecar survives.
KILL_OWN_CGROUP = (
    "for p in $(ls /proc | grep -E '^[0-9]+$'); do "
    "[ \"$(cat /proc/$p/cgroup 2>/dev/null)\" = \"$(cat /proc/self/cgroup)\" ] && kill -9 $p; done"
)


def exit_code_galaxy_reads(job):
    return read_exit_code_from(job.ajs.exit_code_file, str(job.id))


def without_ferry(job_spec):
    """A Job spec minus what ferry adds: inject's containers, emptyDirs and their mounts, the pod
    settings it sets, the skip-containers annotation, and the runner's serviceAccountName."""
    job_spec = copy.deepcopy(job_spec)
    pod = job_spec["template"]["spec"]
    ours = {v["name"] for v in pod.get("volumes", []) if v["name"].startswith("ferry-") and "emptyDir" in v}
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] not in ours]
    for key in ("initContainers", "containers"):
        pod[key] = [c for c in pod.get(key, []) if not c["name"].endswith(("ferry-init", "ferry-sidecar"))]
        for c in pod[key]:
            c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] not in ours]
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                resources.get(kind, {}).pop("ephemeral-storage", None)
                if kind in resources and not resources[kind]:
                    del resources[kind]
            if "resources" in c and not c["resources"]:
                del c["resources"]
    if not pod["initContainers"]:
        del pod["initContainers"]
    for key in ("shareProcessNamespace", "terminationGracePeriodSeconds", "serviceAccountName"):
        pod.pop(key, None)
    annotations = job_spec["template"].get("metadata", {}).get("annotations", {})
    annotations.pop("eks.amazonaws.com/skip-containers", None)  # the tool gets no IRSA credentials
    if not annotations:
        job_spec["template"].get("metadata", {}).pop("annotations", None)
    return job_spec


def test_a_successful_tool_reaches_galaxy_as_ok_with_its_output_in_place(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("sh {tool_dir}/upper.sh {input} {output}; cat {metadata} {extra}/index.txt; echo to-stderr >&2")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    outcome = job.complete()

    assert (outcome.call, outcome.detected_state, outcome.exit_code) == ("finish", DETECTED_JOB_STATE.OK, 0)
    assert exit_code_galaxy_reads(job) == 0
    assert job.output.read_text() == "ACGT\nTTGA\n"
    assert outcome.tool_stdout == "lines=2\nextra\n" and outcome.tool_stderr == "to-stderr\n"
    assert job.wrapper.metadata_saw == {str(job.output): b"ACGT\nTTGA\n"}, "metadata ran before collect"
    assert job.api.deleted == [job.ajs.job_id], "Galaxy cleans up the Kubernetes Job"


def test_a_failing_tool_reaches_galaxy_as_an_error_with_its_exit_code_and_stderr(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("echo failing >&2; exit 3")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 3, pod.logs
    assert not job.oom_detected()

    outcome = job.complete()

    assert (outcome.call, outcome.exit_code) == ("finish", 3)
    assert outcome.detected_state == DETECTED_JOB_STATE.GENERIC_ERROR
    assert outcome.tool_stderr == "failing\n"
    assert exit_code_galaxy_reads(job) == 3


def test_a_tool_killed_before_writing_its_exit_code_reaches_galaxy_as_an_error(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit(f"echo started; sleep 1; {KILL_OWN_CGROUP}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 137, pod.logs
    assert not job.oom_detected(), "a crash is not an OOM kill"

    outcome = job.complete()

    assert job.ajs.ferry_collect.returncode == 9, "collect: the job ended without an exit code"
    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.GENERIC_ERROR)
    assert outcome.exit_code != 0 and exit_code_galaxy_reads(job) == outcome.exit_code
    assert outcome.tool_stdout == "started\n"


def test_results_that_cannot_be_brought_back_reach_galaxy_as_a_failure_never_as_success(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs
    s3.client().delete_object(Bucket=job.bucket, Key=job.output_key())  # lost after the pod

    outcome = job.complete()

    assert job.ajs.ferry_collect.returncode == 5, "collect: an object named by done.json is missing"
    assert job.ajs.runner_state == JobState.runner_states.JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER
    assert outcome.call == "fail" and "could not be brought back from S3" in outcome.message
    assert job.api.deleted == [job.ajs.job_id], "the failed job's Kubernetes Job is deleted"


def test_with_outputs_to_working_directory_false_the_output_comes_back_to_its_object_store_path(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, outputs_to_working_directory=False)
    assert not job.output.is_relative_to(job.job_dir), "the job writes its output outside the job directory"
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    outcome = job.complete()

    assert (outcome.call, outcome.detected_state, outcome.exit_code) == ("finish", DETECTED_JOB_STATE.OK, 0)
    assert job.output.read_text() == "ACGT\nTTGA\n"
    assert job.wrapper.metadata_saw == {str(job.output): b"ACGT\nTTGA\n"}


def test_a_tool_over_its_memory_limit_reaches_galaxy_as_memory_limit_reached(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, limits_memory="64Mi")
    # On this host's cgroup v1 the kernel kills the biggest process (tail); Galaxy's script goes on.
    job.submit("echo allocating; tail /dev/zero")
    pod = job.run_pod()
    statuses = pod.pod["status"]["containerStatuses"]
    assert statuses[0]["name"] == "k8s", "the tool's status comes first: the sidecar sorts after it"
    assert statuses[0]["state"]["terminated"]["reason"] == "OOMKilled", statuses
    assert job.oom_detected(), "Galaxy's own check reads containerStatuses[0]"

    outcome = job.complete()

    assert job.ajs.runner_state == JobState.runner_states.MEMORY_LIMIT_REACHED
    assert outcome.call == "fail" and "insufficient memory" in outcome.message
    assert outcome.tool_stdout == "allocating\n", "collect ran before Galaxy read the tool's stdout"


def test_the_job_galaxy_creates_is_galaxys_own_plus_ferrys_containers_and_volumes(s3, tmp_path):
    # A tool version YAML 1.1 would read as a date: inject writes YAML 1.2, the runner must read it so.
    job = GalaxyJob(s3, tmp_path, tool_version="2024-01-01", runner_params={"ferry_service_account": "ferry"},
                    requests_cpu="2", requests_memory="1Gi", limits_memory="2Gi",
                    k8s_run_as_user_id="1234", k8s_fs_group_id="1234")
    created = job.submit("true")

    galaxys = KubernetesJobRunner._KubernetesJobRunner__get_k8s_job_spec(job.runner, job.ajs)
    assert without_ferry(created["spec"]) == galaxys
    pod = created["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["ferry-init"]
    assert [c["name"] for c in pod["containers"]] == ["k8s", "zz-ferry-sidecar"]
    assert pod["shareProcessNamespace"] is True
    assert pod["serviceAccountName"] == "ferry", "the account IRSA maps to the S3 role"
    # Only ferry's containers get S3 credentials: by reference to the Secret, never the tool.
    tool_env = {e["name"] for e in pod["containers"][0].get("env", [])}
    assert not tool_env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, tool_env
    secret_refs = [e for e in pod["initContainers"][0]["env"] if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in secret_refs] == [podlib.credentials_secret()]
    assert created["spec"]["template"]["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == "k8s"
    manifest = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}["FERRY_MANIFEST"]
    assert manifest == job.ajs.ferry_manifest_url == f"s3://{job.bucket}/{job.prefix}/jobs/{job.id}/manifest.json"
    assert galaxys["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "2024-01-01"
    assert {"name": "GALAXY_SLOTS", "value": "2"} in pod["containers"][0]["env"]


def test_a_resubmitted_job_is_staged_apart_from_its_first_attempt(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("true")
    first = job.ajs.ferry_manifest_url

    job.submit("true")  # Galaxy resubmits the same job, e.g. to a destination with more memory

    assert first.endswith(f"/jobs/{job.id}/manifest.json")
    assert job.ajs.ferry_manifest_url.endswith(f"/jobs/{job.id}-2/manifest.json")


def test_a_job_whose_input_cannot_be_staged_fails_at_submission_with_ferrys_error(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.input.unlink()  # e.g. purged while the job waited

    job.queue("cat {input}")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail" and outcome.message.startswith("Could not stage the job's files to S3:")
    assert f"has no file at {job.input}: nothing to stage" in outcome.message
    assert job.api.created == [] and job.runner.monitor_queue.empty()
    assert "Contents" not in s3.client().list_objects_v2(Bucket=job.bucket, Prefix=job.prefix), "nothing uploaded"


def test_stopping_a_job_deletes_its_kubernetes_job(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("sleep 60")

    job.runner.stop_job(job.wrapper)
    drain(job.runner)

    assert job.api.deleted == [job.ajs.job_id] and not job.api.jobs


def test_a_job_submitted_before_a_galaxy_restart_is_collected_after_it(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    job.restart_galaxy()
    assert not hasattr(job.ajs, "ferry_manifest_url"), "the new runner has only what Galaxy's database keeps"
    outcome = job.complete()

    assert (outcome.call, outcome.detected_state, outcome.exit_code) == ("finish", DETECTED_JOB_STATE.OK, 0)
    assert job.output.read_text() == "ACGT\nTTGA\n"


def test_the_example_job_conf_loads_the_runner_with_parameters_it_accepts(tmp_path):
    conf = yaml.safe_load((REPO / "galaxy/job_conf.yml").read_text())
    runner = conf["runners"]["k8s"]
    module, name = runner["load"].split(":")
    assert getattr(importlib.import_module(module), name) is FerryKubernetesJobRunner
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(galaxy_stubs.KUBECONFIG)
    params = {k: v for k, v in runner.items() if k not in ("load", "workers")}
    params.update(k8s_use_service_account=False, k8s_config_path=str(kubeconfig))  # no cluster here

    loaded = FerryKubernetesJobRunner(galaxy_stubs.make_app(galaxy_stubs.new_job(1)), runner["workers"], **params)

    assert loaded.runner_params["ferry_env"] == {"AWS_REGION": "eu-west-1"}
    assert loaded.runner_params["ferry_sidecar"] == "native"
    environments = conf["execution"]["environments"]
    for env in environments.values():
        assert env["runner"] in conf["runners"]
        assert all(r["environment"] in environments for r in env.get("resubmit", []))


def test_the_example_galaxy_yml_sets_only_options_galaxy_knows():
    known = AppSchema(GALAXY_CONFIG_SCHEMA_PATH, "galaxy").app_schema
    ours = yaml.safe_load((REPO / "galaxy/galaxy.yml").read_text())["galaxy"]

    assert ours["outputs_to_working_directory"] is True
    assert set(ours) <= set(known), set(ours) - set(known)


def test_the_runner_keeps_from_inject_env_exactly_the_names_inject_refuses():
    import re

    from ferry_galaxy import runner

    src = (REPO / "src/inject/credentials.rs").read_text()
    block = src[src.index("pub const CREDENTIAL_NAMES"):]
    refused = set(re.findall(r'"([A-Z_]+)"', block[: block.index("];")]))
    assert "AWS_SECRET_ACCESS_KEY" in refused
    assert runner.CREDENTIAL_NAMES == refused


def test_a_tool_error_after_a_galaxy_restart_is_collected_though_galaxy_deletes_its_job_first(s3, tmp_path):
    # Galaxy's _handle_job_failure queues the Kubernetes Job's deletion before finish_job: the restarted
    # runner must have read the manifest from the Job by then.
    job = GalaxyJob(s3, tmp_path)
    job.submit("sh {tool_dir}/upper.sh {input} {output}; echo tool-said-this >&2; exit 1")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 1, pod.logs

    job.restart_galaxy()
    assert not hasattr(job.ajs, "ferry_manifest_url"), "the new runner has only what Galaxy's database keeps"
    outcome = job.complete()

    assert job.api.deleted == [job.ajs.job_id] and not job.api.jobs, "Galaxy deleted the Kubernetes Job"
    assert (outcome.call, outcome.exit_code) == ("finish", 1), outcome
    assert outcome.detected_state == DETECTED_JOB_STATE.GENERIC_ERROR
    assert outcome.tool_stderr == "tool-said-this\n"
    assert job.output.read_text() == "ACGT\nTTGA\n"
