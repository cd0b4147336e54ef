"""galaxy-helm as shipped: the chart's volumes stay in the job pod, ferry stages only the job's own files
beside them, and the Job that Galaxy 26.1.2's runner builds is valid Kubernetes and runs in a pod."""

import subprocess

import yaml
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import podlib
from helm import CVMFS, HelmGalaxyJob

KV = podlib.REPO / ".venv/bin/kubernetes-validate"


def manifest_of(job):
    key = job.ajs.ferry_manifest_url.split("/", 3)[3]
    return job.s3.get_json(job.bucket, key)


def keys_under(job, prefix):
    listed = job.s3.client().list_objects_v2(Bucket=job.bucket, Prefix=f"{job.prefix}/{prefix}")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_galaxy_helm_job_keeps_the_charts_mounts_and_stages_only_beside_them(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    created = job.submit(
        "sh {tool_dir}/upper.sh {input} {output}; "
        f"cut -f1 {CVMFS}/managed/location/builds.txt; cat {job.database}/tool-data/marker.txt")

    manifest = manifest_of(job)
    roots = [r["path"] for r in manifest["roots"]]
    assert roots == [str(job.input.parent), str(job.job_dir)], "the dataset's directory and the job's, nothing wider"
    for mount in job.mount_paths():
        assert not any(mount == r or mount.startswith(r + "/") for r in roots), f"{mount} under a root"
    assert manifest["indices"] == [], "the tool directory is on the shed_tools mount: not staged"
    assert keys_under(job, "refs/") == []
    pod = created["spec"]["template"]["spec"]
    tool = pod["containers"][0]
    assert [(m["mountPath"], m.get("subPath"), m.get("readOnly")) for m in tool["volumeMounts"]][:7] == [
        (m["mountPath"], m["subPath"], m["readOnly"])
        for m in job.runner.runner_params["k8s_volume_mounts"]], "the chart's mounts, unchanged and first"

    pod_run = job.run_pod(host_paths=job.host_paths())
    assert pod_run.exit_codes["k8s"] == 0, pod_run.logs
    outcome = job.complete()

    assert (outcome.call, outcome.detected_state, outcome.exit_code) == ("finish", DETECTED_JOB_STATE.OK, 0)
    assert job.output.read_text() == "ACGT\nTTGA\n"
    assert outcome.tool_stdout == "hg38\nfrom the tool-data PVC\n"


def test_the_job_galaxy_builds_for_galaxy_helm_is_valid_kubernetes(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path, runner_params={"ferry_service_account": "ferry"}, ferry_sidecar="native",
                        ferry_disk="10Gi", requests_cpu="1", requests_memory="2Gi", limits_memory="2Gi")
    created = job.submit("true")

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**created, "metadata": {**created["metadata"], "name": "gxy-job"}}))
    for version in ("1.29.0", "1.33.0"):
        p = subprocess.run([KV, "--strict", "-k", version, path], capture_output=True, text=True)
        assert p.returncode == 0, f"not valid for Kubernetes {version}:\n{p.stdout}{p.stderr}"
    pod = created["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["ferry-sidecar", "ferry-init"]
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"galaxy-pvc", "galaxy-refdata-gxy-pvc"}


def test_a_pod_mount_inside_the_job_directory_is_refused_before_anything_is_uploaded(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    # An admin who also mounts something inside the jobs directory, e.g. a scratch PVC at the job's tmp.
    job.runner.runner_params["k8s_volume_mounts"].append(
        {"name": "galaxy-pvc", "subPath": "scratch", "mountPath": f"{job.job_dir}/tmp", "readOnly": False})

    job.queue("true")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail"
    assert f"{job.job_dir} holds staged files and contains {job.job_dir}/tmp" in outcome.message, outcome.message
    assert job.api.created == [] and keys_under(job, "") == [], "nothing uploaded, no Job created"


def test_a_linked_dataset_whose_path_has_spaces_runs_beside_the_charts_mounts(s3, tmp_path):
    job = HelmGalaxyJob(s3, tmp_path)
    linked = tmp_path / "shared data/run 1/reads 1.fastq"  # a library dataset linked from a data directory
    linked.parent.mkdir(parents=True)
    linked.write_text("ggcc\n")
    job.hda.dataset.external_filename = str(linked)
    job.submit(f"tr a-z A-Z < '{linked}' > {{output}}")

    assert [d["path"] for d in manifest_of(job)["inputs"]] == [str(linked)]
    assert str(linked.parent) in [r["path"] for r in manifest_of(job)["roots"]]
    run = job.run_pod(host_paths=job.host_paths())
    assert run.exit_codes["k8s"] == 0, run.logs
    outcome = job.complete()

    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    assert job.output.read_text() == "GGCC\n"


def test_the_helm_values_load_the_runner_and_drop_only_the_data_and_working_claims(tmp_path):
    import importlib
    from types import SimpleNamespace

    import galaxy_stubs
    from ferry_galaxy.runner import FerryKubernetesJobRunner
    from tpv.rules import gateway

    values = yaml.safe_load((podlib.REPO / "galaxy/helm/values-ferry.yaml").read_text())
    runner = dict(values["configs"]["job_conf.yml"]["runners"]["k8s"])
    module, name = runner.pop("load").split(":")
    assert getattr(importlib.import_module(module), name) is FerryKubernetesJobRunner
    dropped = {k for k, v in runner.items() if v is None}
    assert dropped == {"k8s_data_volume_claim", "k8s_working_volume_claim"}, "helm removes a key set to null"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(galaxy_stubs.KUBECONFIG)
    params = {k: v for k, v in runner.items() if v is not None}
    app = galaxy_stubs.make_app(galaxy_stubs.new_job(1))
    loaded = FerryKubernetesJobRunner(app, 1, k8s_config_path=str(kubeconfig), **params)
    assert loaded.runner_params["ferry_binary"] == "/usr/local/bin/ferry"
    # The values' TPV rule, evaluated by TPV's own mapper for a job whose input Galaxy records as 1.5 GiB
    # (a minimal shared database before it; the chart's own k8s destination gives the runner).
    rules = values["jobs"]["rules"]["tpv_rules_local.yml"]
    job = galaxy_stubs.new_job(1)
    reads = galaxy_stubs.input_hda(None, 1, 1, "reads")
    reads.dataset.file_size = 3 << 29
    job.add_input_dataset("input1", reads)
    shared_database = {"global": {"default_inherits": "default"}, "tools": {"default": {"cores": 1, "mem": 4}}}
    mapper = gateway.load_destination_mapper([shared_database, rules])
    destination = mapper.map_to_destination(app, galaxy_stubs.Tool(app, "busybox", tool_id="cat1"), None, job)
    assert destination.id == "k8s" and destination.params["ferry_disk"] == "14Gi"
    assert loaded.ferry_settings(SimpleNamespace(job_destination=destination)).disk == 14 * (1 << 30)
    containerfile = (podlib.REPO / "galaxy/helm/Containerfile").read_text()
    for line in containerfile.splitlines():
        if line.startswith("COPY galaxy/"):
            for source in line.split()[1:-1]:
                assert (podlib.REPO / source).exists(), f"Containerfile copies {source}, which is not in the repo"
