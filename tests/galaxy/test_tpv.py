"""galaxy/tpv_ferry.yml through TPV 3.3.0's own mapper (tpv.rules' map_tool_to_destination), called by
Galaxy's own JobRunnerMapper for a TPV dispatcher destination, with Galaxy's model objects (the job and its
input dataset, users and roles in Galaxy's database): the destination TPV returns carries the ferry_*
settings the example promises, and ferry's runner builds the job's Kubernetes Job with them."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from galaxy import model
from galaxy.jobs.job_destination import JobDestination
from galaxy.jobs.mapper import JobRunnerMapper
from galaxy.model import mapping
from tpv.rules import gateway

import galaxy_stubs
from ferry_galaxy.runner import FERRY_PARAM_SPECS, PLUGIN_ONLY
from harness import GalaxyJob

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "galaxy/tpv_ferry.yml"
GIB = 1 << 30
MIB = 1 << 20
BWA_MEM = "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17.2"
DATA_MANAGER = "toolshed.g2.bx.psu.edu/repos/iuc/data_manager_fetch_genome_dbkeys_all_fasta/data_manager_fetch/0.0.5"
# Stands in for the shared database (https://gxy.io/tpv/db.yml) that the example is listed after: every tool
# inherits `default`, which gives it cores and mem.
SHARED_DATABASE = {"global": {"default_inherits": "default"}, "tools": {"default": {"cores": 1, "mem": "cores * 4"}}}
READS_BYTES = 5 * GIB // 2  # the job's input as Galaxy's database records it: TPV's input_size is 2.5


@pytest.fixture(scope="module")
def galaxy_db(tmp_path_factory):
    """Galaxy's own database (SQLite in memory): a user without roles and one with the eu-data role."""
    db = mapping.init(str(tmp_path_factory.mktemp("files")), "sqlite:///:memory:", create_tables=True)
    plain = model.User(email="ana@example.org", password="x" * 20)
    eu = model.User(email="eu@example.org", password="x" * 20)
    role = model.Role(name="eu-data", type=model.Role.types.ADMIN)
    db.context.add_all([plain, eu, role, model.UserRoleAssociation(eu, role)])
    db.context.commit()
    yield SimpleNamespace(plain=plain, eu=eu)
    db.context.close()


@pytest.fixture
def tpv_rules(tmp_path):
    shared = tmp_path / "shared_db.yml"
    shared.write_text(yaml.safe_dump(SHARED_DATABASE))
    return [str(shared), str(EXAMPLE)]


def with_recorded_input(job):
    """The job's input dataset as Galaxy records it (a HistoryDatasetAssociation whose Dataset has
    file_size READS_BYTES): what TPV's input_size adds up."""
    reads = galaxy_stubs.input_hda(None, 1, 1, "reads")
    reads.dataset.file_size = READS_BYTES
    job.app.model.context.job.add_input_dataset("input1", reads)
    return job


def tpv_destination(job, user, tpv_rules):
    """The destination Galaxy's job handler gets for this job from a TPV dispatcher, configured as TPV's
    documentation and galaxy-helm do: Galaxy's JobRunnerMapper resolves the dynamic destination by calling
    tpv.rules' map_tool_to_destination with the job, its tool and user, and tpv_config_files."""
    gateway.ACTIVE_DESTINATION_MAPPERS.clear()  # TPV keeps one mapper per dispatcher; each test loads its own
    galaxy_job = job.app.model.context.job
    galaxy_job.user = user
    dispatcher = JobDestination(id="tpv_dispatcher", runner="dynamic", params={
        "type": "python", "function": "map_tool_to_destination", "rules_module": "tpv.rules",
        "tpv_config_files": tpv_rules})
    wrapper = galaxy_stubs.JobWrapper(galaxy_job, job.app, job.tool, None, job.job_dir, "true")
    mapper = JobRunnerMapper(wrapper, url_to_destination=None, job_config=SimpleNamespace(dynamic_params=None))
    return mapper.cache_job_destination(dispatcher)


def staged_roots(job):
    manifest_key = job.ajs.ferry_manifest_url.split("/", 3)[3]
    return job.s3.get_json(job.bucket, manifest_key)["roots"]


def mib(n):
    return f"{-(-n // MIB)}Mi"


def test_the_tpv_example_sets_only_settings_a_destination_may_set():
    conf = yaml.safe_load(EXAMPLE.read_text())
    used = set()
    for section in ("tools", "roles", "destinations"):
        for entry in conf[section].values():
            used |= {k for k in (entry.get("params") or {}) if k.startswith("ferry_")}

    assert {"ferry_disk", "ferry_reference_roots", "ferry_enabled", "ferry_url", "ferry_env"} <= used
    assert used <= set(FERRY_PARAM_SPECS) - set(PLUGIN_ONLY), used - (set(FERRY_PARAM_SPECS) - set(PLUGIN_ONLY))


@pytest.mark.parametrize("tool_id,disk_gib,reference_roots", [
    ("cat1", int(2.5 * 3) + 10, None),
    (BWA_MEM, int(2.5 * 4) + 20, "/galaxy/server/database/refs"),
], ids=["default-tool", "bwa_mem"])
def test_tpv_sizes_the_disk_from_the_input_size_and_the_runner_gives_the_job_that_disk(
        s3, tmp_path, galaxy_db, tpv_rules, tool_id, disk_gib, reference_roots):
    job = with_recorded_input(GalaxyJob(s3, tmp_path, tool_id=tool_id))

    job.destination = tpv_destination(job, galaxy_db.plain, tpv_rules)

    assert (job.destination.id, job.destination.runner) == ("k8s", "k8s")
    assert job.destination.params["ferry_disk"] == f"{disk_gib}Gi"
    assert job.destination.params.get("ferry_reference_roots") == reference_roots
    assert job.destination.params["requests_memory"] == "4Gi", "the shared database's mem reached the destination"
    created = job.submit("true")
    settings = job.runner.ferry_settings(job.wrapper)
    assert settings.disk == disk_gib * GIB
    assert settings.reference_roots == ([reference_roots] if reference_roots else [])
    assert settings.reference_max_bytes == (20 * GIB if reference_roots else None)
    pod = created["spec"]["template"]["spec"]
    roots = staged_roots(job)
    assert roots, "the job's files were staged"
    tool = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted_at = {m["mountPath"]: volumes[m["name"]] for m in tool["volumeMounts"]}
    for root in roots:
        assert mounted_at[root["path"]]["emptyDir"]["sizeLimit"] == mib(root["bytes"] + disk_gib * GIB), root
    staged = sum(r["bytes"] for r in roots)
    assert tool["resources"]["requests"]["ephemeral-storage"] == mib(staged + disk_gib * GIB)
    assert tool["resources"]["limits"]["ephemeral-storage"] == mib(staged + disk_gib * GIB)
    assert tool["resources"]["requests"]["memory"] == 4 * GIB, "Galaxy's runner read TPV's requests_memory"


def test_tpv_sends_a_data_manager_to_the_shared_destination_where_ferry_stays_out(s3, tmp_path, galaxy_db,
                                                                                   tpv_rules):
    job = with_recorded_input(GalaxyJob(s3, tmp_path, tool_id=DATA_MANAGER))
    job.tool.tool_type = "manage_data"  # galaxy.tools.DataManagerTool

    job.destination = tpv_destination(job, galaxy_db.plain, tpv_rules)

    assert (job.destination.id, job.destination.runner) == ("k8s_shared", "k8s_shared")
    assert job.destination.params["ferry_enabled"] is False
    assert job.runner.ferry_settings(SimpleNamespace(job_destination=job.destination)).enabled is False
    pod = job.submit("true")["spec"]["template"]["spec"]
    assert "initContainers" not in pod and not hasattr(job.ajs, "ferry_manifest_url"), "Galaxy's own Job"


def test_tpv_sends_only_users_with_the_eu_data_role_to_the_eu_bucket(s3, tmp_path, galaxy_db, tpv_rules):
    job = with_recorded_input(GalaxyJob(s3, tmp_path, tool_id="cat1"))

    eu = tpv_destination(job, galaxy_db.eu, tpv_rules)
    plain = tpv_destination(job, galaxy_db.plain, tpv_rules)

    assert [r.name for r in galaxy_db.eu.all_roles()] == ["eu-data"] and galaxy_db.plain.all_roles() == []
    assert (eu.id, plain.id) == ("k8s_eu", "k8s")
    settings = job.runner.ferry_settings(SimpleNamespace(job_destination=eu))
    assert settings.url == "s3://galaxy-ferry-eu/main" and settings.env == {"AWS_REGION": "eu-central-1"}
    assert settings.disk == (int(2.5 * 3) + 10) * GIB, "k8s_eu keeps the tool's disk rule"
    assert eu.params["requests_memory"] == "4Gi", "k8s_eu inherits k8s's params"
    plain_url = job.runner.ferry_settings(SimpleNamespace(job_destination=plain)).url
    assert plain_url == job.runner.runner_params["ferry_url"], "the runner plugin's bucket"
