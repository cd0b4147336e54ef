"""Every ferry_* setting per destination (what TPV sets): the destination's value wins over the runner
plugin's, and a bad value fails the job before anything is uploaded. The TPV example in galaxy/ is tested
with TPV's own mapper in test_tpv.py."""

import pytest
from galaxy.jobs.runners.kubernetes import KubernetesJobRunner
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

from harness import GalaxyJob

GIB = 1 << 30


def uploaded(job):
    listed = job.s3.client().list_objects_v2(Bucket=job.bucket, Prefix=job.prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_destination_params_win_over_the_runner_plugins(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, runner_params={"ferry_disk": "1Gi", "ferry_cache": "hostpath:/var/cache/a"},
                    ferry_sidecar="native", ferry_disk="7Gi", ferry_cache="hostpath:/var/cache/ferry",
                    ferry_service_account="tpv-chosen")

    created = job.submit("true")

    pod = created["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["name"] == "ferry-sidecar", "native, as the destination says"
    assert pod["serviceAccountName"] == "tpv-chosen"
    assert {"name": "ferry-cache", "hostPath": {"path": "/var/cache/ferry", "type": "DirectoryOrCreate"}} \
        in pod["volumes"]
    staged = sum(r["bytes"] for r in job.s3.get_json(job.bucket, job.ajs.ferry_manifest_url.split("/", 3)[3])["roots"])
    tool = pod["containers"][0]
    want = -(-(staged + 7 * GIB) // (1 << 20))  # MiB, rounded up
    assert tool["resources"]["requests"]["ephemeral-storage"] == f"{want}Mi"
    assert tool["resources"]["limits"]["ephemeral-storage"] == f"{want}Mi"


def test_a_destination_can_opt_a_tool_out_of_ferry(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, ferry_enabled="false")

    created = job.submit("true")

    galaxys = KubernetesJobRunner._KubernetesJobRunner__get_k8s_job_spec(job.runner, job.ajs)
    assert created["spec"] == galaxys, "Galaxy's own Job, untouched"
    assert uploaded(job) == [] and not hasattr(job.ajs, "ferry_manifest_url")


@pytest.mark.parametrize("param,value,says", [
    ("ferry_sidecar", "sidecar", "ferry_sidecar 'sidecar': not a valid value"),
    ("ferry_disk", "20", "ferry_disk '20': '20' is not a size with a unit such as 20Gi or 512Mi"),
    ("ferry_disk", "lots", "is not a size with a unit"),
    ("ferry_collect_wait", "-1", "ferry_collect_wait '-1': not a valid value"),
    ("ferry_url", "https://bucket", "ferry_url 'https://bucket': not a valid value"),
    ("ferry_cache", "/var/cache/ferry", "is not hostpath:/ABSOLUTE/DIR"),
    ("ferry_env", "[a, b]", "expected a mapping of NAME: VALUE"),
    ("ferry_reference_roots", "refs,/galaxy/refs", "ferry_reference_roots 'refs,/galaxy/refs': not a valid value"),
    ("ferry_reference_roots", "/", "ferry_reference_roots '/': not a valid value"),
    ("ferry_reference_max_bytes", "100", "ferry_reference_max_bytes '100': '100' is not a size with a unit"),
    ("ferry_index_paths", "tool-data/x.loc", "not a valid value"),
    ("ferry_enabled", "maybe", "ferry_enabled 'maybe'"),
])
def test_a_bad_destination_value_fails_the_job_before_anything_is_uploaded_naming_it(s3, tmp_path, param, value,
                                                                                     says):
    job = GalaxyJob(s3, tmp_path, **{param: value})

    job.queue("true")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail" and "destination 'k8s'" in outcome.message and says in outcome.message, \
        outcome.message
    assert job.api.created == [] and uploaded(job) == []


def test_a_destination_without_the_required_settings_fails_the_job_naming_them(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path)
    job.runner.runner_params["ferry_image"] = None  # set nowhere

    job.queue("true")

    [outcome] = job.wrapper.outcomes
    assert "destination 'k8s': ferry_image is not set (runner or destination)" in outcome.message


def test_a_destination_runs_a_job_with_its_own_settings_end_to_end(s3, tmp_path):
    job = GalaxyJob(s3, tmp_path, ferry_disk="2Gi", ferry_collect_wait="15", ferry_stage_tool_directory="true")
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    outcome = job.complete()

    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    assert job.output.read_text() == "ACGT\nTTGA\n"
