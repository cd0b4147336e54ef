"""What a job cannot have reaches the user as a reason: an input dataset without a file fails the job
before anything is uploaded, naming the dataset; a failure of ferry's init container reaches Galaxy's job
info and stderr as ferry's one line; disk is sized for the work, not for the inputs."""

from pathlib import Path

from galaxy import model
from galaxy.jobs.runners import JobState
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import galaxy_stubs
from harness import GalaxyJob, drain
from helm import HelmGalaxyJob

MIB = 1 << 20


def uploaded(job):
    listed = job.s3.client().list_objects_v2(Bucket=job.bucket, Prefix=job.prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def manifest_of(job):
    return job.s3.get_json(job.bucket, job.ajs.ferry_manifest_url.split("/", 3)[3])


def test_a_purged_input_fails_the_job_before_anything_is_uploaded_naming_the_dataset(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    job.hda.dataset.purged = True  # Galaxy's get_file_name() now returns ""

    job.queue("cat {input}")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail"
    assert "input dataset 1 ('reads 1.fastq', dataset id 1) has no file (purged, or not in any object store)" \
        in outcome.message, outcome.message
    assert job.api.created == [] and uploaded(job) == []


def test_an_input_whose_file_is_gone_fails_the_job_naming_the_dataset_and_the_path(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    gone = tmp_path / "elsewhere/reads 1.fastq"  # a linked dataset (external_filename) whose file was removed
    job.hda.dataset.external_filename = str(gone)

    job.queue("cat {input}")

    [outcome] = job.wrapper.outcomes
    assert f"input dataset 1 ('reads 1.fastq', dataset id 1) has no file at {gone}: nothing to stage" \
        in outcome.message, outcome.message
    assert job.api.created == [] and uploaded(job) == []


def test_a_deferred_input_is_left_to_galaxys_materialisation_in_the_job_directory(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    deferred = galaxy_stubs.input_hda(job.store, 3, 2, "remote.bed", content=None,
                                      state=model.Dataset.states.DEFERRED)
    job.job_io.datasets.append(deferred)
    assert deferred.get_file_name() == "", "Galaxy has no file for a deferred dataset"

    job.submit("cat {input}")

    assert [d["path"] for d in manifest_of(job)["inputs"]] == [str(job.input)]


def test_a_failing_init_container_reaches_galaxy_as_ferrys_line_in_info_and_stderr(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.submit("cat {input}")
    s3.client().delete_object(Bucket=job.bucket, Key=f"{job.prefix}/data{job.input}")  # e.g. a lifecycle rule

    # The kubelet gives each container a termination-log file; podman does not: mount one, as a hostPath.
    termination_log = tmp_path / "ferry-init.termination-log"
    termination_log.touch()
    termination_log.chmod(0o666)

    def with_termination_log(pod):
        pod["spec"]["volumes"].append(
            {"name": "termlog", "hostPath": {"path": str(termination_log), "type": "File"}})
        init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "ferry-init")
        init["volumeMounts"].append({"name": "termlog", "mountPath": "/dev/termination-log"})

    pod = job.run_pod(init_fails=True, pod_changes=with_termination_log)
    init = next(s for s in pod.pod["status"]["initContainerStatuses"] if s["name"] == "ferry-init")
    assert init["state"]["terminated"]["exitCode"] != 0
    written = termination_log.read_text()
    assert written.startswith("ferry: ") and written.count("\n") == 1, f"one line from ferry: {written!r}"
    assert init["state"]["terminated"]["message"] == written
    outcome = job.complete()

    assert outcome.call == "fail"
    prefix = "ferry could not fetch the job's files from S3 (ferry-init): "
    assert outcome.message.startswith(prefix), outcome.message
    line = outcome.message[len(prefix):]
    assert f"{job.prefix}/data{job.input}" in line and "not found" in line and "\n" not in line, line
    assert outcome.tool_stderr == f"{outcome.message}\n", "the tool never ran: its stderr is ferry's line"
    assert line == written[len("ferry: "):].strip(), "Galaxy shows exactly the line ferry wrote"
    assert not hasattr(job.ajs, "ferry_collect") or job.ajs.ferry_collect is None, "nothing to collect"
    assert job.ajs.runner_state != JobState.runner_states.MEMORY_LIMIT_REACHED


def test_disk_is_sized_for_outputs_larger_than_the_inputs(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, ferry_disk="64Mi")
    created = job.submit("dd if=/dev/zero of={output} bs=1048576 count=40 2>/dev/null; echo wrote")
    roots = manifest_of(job)["roots"]
    staged = sum(r["bytes"] for r in roots)
    assert staged < MIB, "the inputs are small"

    pod = created["spec"]["template"]["spec"]
    limits = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    for root, (name, limit) in zip(roots, sorted(limits.items())):
        assert limit == f"{-(-(root['bytes'] + 64 * MIB) // MIB)}Mi", (root, name, limit)
    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == f"{-(-(staged + 64 * MIB) // MIB)}Mi"

    run = job.run_pod()
    assert run.exit_codes["k8s"] == 0, run.logs
    outcome = job.complete()

    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    assert Path(job.output).stat().st_size == 40 * MIB > staged


def test_a_failing_sidecar_reaches_galaxy_as_ferrys_line_in_the_job_info(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    # The tool leaves an output ferry cannot read (ferry never runs as root): the upload fails.
    job.submit("echo secret > {output}; chmod 000 {output}")

    pod = job.run_pod()
    sidecar = next(s for s in pod.pod["status"]["containerStatuses"] if s["name"].endswith("ferry-sidecar"))
    assert sidecar["state"]["terminated"]["exitCode"] != 0, pod.logs
    outcome = job.complete()

    assert outcome.call == "fail"
    prefix = "ferry could not send the job's results to S3 (ferry-sidecar): "
    assert outcome.message.startswith(prefix), outcome.message
    assert str(job.output) in outcome.message and "\n" not in outcome.message, outcome.message
    assert outcome.tool_stderr == f"{outcome.message}\n"
    assert getattr(job.ajs, "ferry_collect", None) is None, "no done.json will come: collect is not waited for"


def never_started_pod(job, init_waiting):
    """The Pod the kubelet reports for a Job whose ferry-init never started (image pull failing)."""
    created = job.api.created[-1]
    return {
        "metadata": {"name": f"{job.ajs.job_id}-pod", "labels": {"job-name": job.ajs.job_id}},
        "spec": created["spec"]["template"]["spec"],
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [{"name": "ferry-init", "state": {"waiting": init_waiting}}],
            "containerStatuses": [{"name": "k8s", "state": {"waiting": {"reason": "PodInitializing"}}}],
        },
    }


def test_a_job_whose_ferry_init_never_started_fails_at_once_without_holding_up_a_finished_job(s3, tmp_path):
    # One collect thread, and a collect wait longer than drain() allows: a failed job that waited for a
    # done.json no pod will ever write would fail this test, and so would a finished job queued behind it.
    runner_params = {"ferry_transfer_threads": 1, "ferry_collect_wait": 600}
    failed = GalaxyJob(s3, tmp_path / "failed", runner_params=runner_params)
    ok = GalaxyJob(s3, tmp_path / "ok")
    ok.runner, ok.api = failed.runner, failed.api  # one handler
    failed.submit("true")
    ok.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = ok.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs
    pull = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "ferry:absent"'}
    failed.api.job_ended(failed.ajs.job_id, never_started_pod(failed, pull))

    assert failed.runner.check_watched_item(failed.ajs) is None  # Galaxy: failed -> mark_as_failed
    assert failed.runner.check_watched_item(ok.ajs) is None  # Galaxy: succeeded -> mark_as_finished
    drain(failed.runner)

    [outcome] = failed.wrapper.outcomes
    assert outcome.call == "fail", outcome
    assert outcome.message == 'ferry-init never started: ImagePullBackOff: Back-off pulling image "ferry:absent"'
    collect = failed.ajs.ferry_collect
    assert collect.args[-2:] == ["--wait", "0"] and collect.returncode == 9, (collect.args, collect.stderr)
    [ok_outcome] = ok.wrapper.outcomes
    assert (ok_outcome.call, ok_outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    assert ok.output.read_text() == "ACGT\nTTGA\n"


def test_a_job_whose_kubernetes_job_was_deleted_outside_galaxy_fails_without_waiting_and_says_so(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, runner_params={"ferry_collect_wait": 600})
    job.submit("true")
    del job.api.jobs[job.ajs.job_id]  # kubectl delete job, before any pod ran

    outcome = job.complete()

    assert outcome.call == "fail" and outcome.message == "the job's pod is gone (its Kubernetes Job was deleted)"
    assert job.ajs.ferry_collect.args[-2:] == ["--wait", "0"] and job.ajs.ferry_collect.returncode == 9


def test_a_job_unschedulable_past_galaxys_limit_fails_without_waiting_for_its_results(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, runner_params={"ferry_collect_wait": 600, "k8s_unschedulable_walltime_limit": 1})
    job.submit("true")
    name = job.ajs.job_id
    job.api.jobs[name]["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    job.api.jobs[name]["status"] = {"active": 1}
    pod = never_started_pod(job, {})
    pod["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}
    job.api.pods[name] = pod

    outcome = job.complete()

    assert outcome.call == "fail" and outcome.message == "Job was unschedulable longer than specified deadline"
    assert job.ajs.ferry_never_ran == "ferry-init never started: the pod was never scheduled"
    assert job.ajs.ferry_collect.args[-2:] == ["--wait", "0"] and job.ajs.ferry_collect.returncode == 9


def test_never_ran_reads_the_pod_status_and_concludes_nothing_from_an_unreadable_one():
    from ferry_galaxy.runner import POD_UNREADABLE, never_ran

    init = {"name": "ferry-init", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                        "message": 'secret "s3" not found'}}}
    unscheduled = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    ended = {"initContainerStatuses": [{"name": "ferry-init", "state": {"running": {}},
                                        "lastState": {"terminated": {"exitCode": 0}}}]}

    assert never_ran({"initContainerStatuses": [init]}) == \
        'ferry-init never started: CreateContainerConfigError: secret "s3" not found'
    assert never_ran(unscheduled) == "ferry-init never started: Unschedulable"
    assert never_ran(None) == "no pod ran for the job"
    assert never_ran(None, gone=True) == "the job's pod is gone (its Kubernetes Job was deleted)"
    assert never_ran(ended) is None, "ferry-init ended once: its done.json may come"
    assert never_ran(POD_UNREADABLE) is None, "an API error is no evidence that nothing ran"
