"""A job held in Galaxy's real model and database, wrapped by Galaxy's own ``JobWrapper`` (real ``JobIO``,
``prepare``, external metadata step and ``finish``), run through ferry's runner: podman runs its pod against
the S3 server, and what Galaxy's users see is read back from Galaxy's model and object store.

The tool (``real_galaxy.TOOL_XML``) writes an html report with an extra-files directory (a sub-directory,
binary bytes), a table, and a ``galaxy.json`` in its working directory. None of these exist on the handler
unless ``ferry collect`` brought them back from S3."""

import json
import os

import pytest
from galaxy import model

from real_galaxy import RealGalaxyJob

REPORT = b'<html><a href="upper.txt">upper</a> <img src="img/plot.png"/></html>\n'
REPORT_FILES = {"upper.txt": b"ACGT\nTTGA\n", "img/plot.png": b"PNG\x01\x00\xff"}
TABLE = b"chr1\t100\t0.5\nchr2\t200\t1.5\n"


@pytest.fixture(autouse=True)
def galaxy_globals():
    """Galaxy's model keeps the object store and datatypes registry in globals: give them back to the other
    tests as they were."""
    store, registry = model.Dataset.object_store, model._datatypes_registry
    yield
    model.Dataset.object_store, model._datatypes_registry = store, registry


def files_under(directory):
    out = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run_through_ferry(job, exit_code=0):
    job.submit()
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == exit_code, pod.logs
    return job.complete()


def assert_galaxy_holds_the_outputs(job):
    """What Galaxy shows the user: both datasets ok, their bytes, sizes, extra files and metadata, in the
    object store (not the job directory)."""
    galaxy_job = job.job
    assert (galaxy_job.state, galaxy_job.exit_code) == (model.Job.states.OK, 0), galaxy_job.info
    report, table = job.report, job.table
    file_path = os.path.realpath(job.app.config.file_path)
    for hda in (report, table):
        assert hda.state == model.Dataset.states.OK, (hda.name, hda.state, hda.info)
        assert os.path.realpath(hda.get_file_name()).startswith(file_path + "/"), hda.get_file_name()

    assert read(report.get_file_name()) == REPORT and report.get_size() == len(REPORT)
    assert os.path.realpath(report.extra_files_path).startswith(file_path + "/"), report.extra_files_path
    assert files_under(report.extra_files_path) == REPORT_FILES
    assert report.metadata.data_lines == 1  # html's metadata, by Galaxy's set_metadata

    assert read(table.get_file_name()) == TABLE and table.get_size() == len(TABLE)
    assert (table.metadata.columns, table.metadata.data_lines) == (3, 2)
    assert table.metadata.column_types == ["str", "int", "float"]
    # From galaxy.json, written by the tool in its working directory in the pod:
    assert (table.name, table.dbkey) == ("counts from the pod", "hg38")
    assert "2 regions" in table.info
    # Job metrics from files the job script wrote in the pod (__instrument_core_*):
    metrics = {m.metric_name: m.metric_value for m in galaxy_job.numeric_metrics}
    assert {"galaxy_slots", "start_epoch", "end_epoch", "runtime_seconds"} <= set(metrics), metrics


def metadata_results(job, output):
    """What the directory strategy's set_metadata wrote for an output (metadata/metadata_results_NAME)."""
    with open(os.path.join(job.wrapper.working_directory, "metadata", f"metadata_results_{output}")) as f:
        return json.load(f)


def test_a_report_with_extra_files_reaches_galaxy_with_the_directory_metadata_strategy(s3, tmp_path):
    job = RealGalaxyJob(s3, tmp_path, metadata_strategy="directory")

    run_through_ferry(job)

    assert_galaxy_holds_the_outputs(job)
    # Galaxy's Kubernetes runner sets metadata on the handler, after collect: not in the pod's job script,
    # and not by finish() itself (retry_metadata_internally off).
    assert "set_metadata" not in read(job.ajs.job_file).decode() and "set_metadata" in read(
        os.path.join(job.wrapper.working_directory, "metadata", "set.py")).decode()
    assert metadata_results(job, "report") == metadata_results(job, "table") == [
        True, "Metadata has been set successfully"]


def test_a_report_with_extra_files_reaches_galaxy_with_the_extended_metadata_strategy(s3, tmp_path):
    job = RealGalaxyJob(s3, tmp_path, metadata_strategy="extended")

    run_through_ferry(job)

    assert_galaxy_holds_the_outputs(job)
    # extended: set_metadata itself exported the outputs (files, extra files, metadata) as a model store
    # that finish() imported.
    populated = os.path.join(job.wrapper.working_directory, "metadata", "outputs_populated")
    datasets = json.loads(read(os.path.join(populated, "datasets_attrs.txt")))
    assert sorted(d["name"] for d in datasets) == ["counts from the pod", "report"]


def test_a_report_written_straight_to_the_object_store_reaches_galaxy_with_its_extra_files(s3, tmp_path):
    # outputs_to_working_directory false: the tool writes the object store's paths, extra files included.
    job = RealGalaxyJob(s3, tmp_path, metadata_strategy="directory", outputs_to_working_directory=False)

    run_through_ferry(job)

    assert_galaxy_holds_the_outputs(job)
    outputs = os.listdir(os.path.join(job.wrapper.working_directory, "outputs"))
    assert sorted(outputs) == ["tool_stderr", "tool_stdout"], "the datasets were written outside the job directory"


def test_a_failing_tool_reaches_galaxys_database_as_an_error_with_its_exit_code_and_stderr(s3, tmp_path):
    job = RealGalaxyJob(s3, tmp_path, command_end=" && echo 'no space left for the plot' >&2 && exit 3")

    run_through_ferry(job, exit_code=3)

    galaxy_job = job.job
    assert (galaxy_job.state, galaxy_job.exit_code) == (model.Job.states.ERROR, 3)
    assert galaxy_job.tool_stderr == "no space left for the plot\n"
    assert job.report.state == job.table.state == model.Dataset.states.ERROR
    # What the tool wrote before failing still reached Galaxy (the user can look at it).
    assert read(job.table.get_file_name()) == TABLE


def test_with_store_by_id_the_extra_files_written_under_the_uuid_name_reach_galaxy(s3, tmp_path):
    # Older instances keep files/000/dataset_ID.dat; in the job directory the tool still writes
    # outputs/dataset_UUID_files (Galaxy's path rewriter), which is where finish() collects them from.
    job = RealGalaxyJob(s3, tmp_path, store_by="id")

    run_through_ferry(job)

    assert_galaxy_holds_the_outputs(job)
    assert os.path.basename(job.report.extra_files_path) == f"dataset_{job.report.dataset.id}_files"
    written = os.path.join(job.wrapper.working_directory, "outputs", f"dataset_{job.report.dataset.uuid}_files")
    assert files_under(written) == REPORT_FILES, "brought back from the pod where the tool wrote them"


@pytest.fixture
def umask_077():
    """Galaxy's handler running with umask 077 (Galaxy applies its process umask to the job directory)."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_with_a_private_umask_a_job_whose_tool_runs_as_a_user_reaches_galaxy(s3, tmp_path, umask_077):
    # The job directory is 0700 on the handler and in the pod; ferry's containers run as the tool's user
    # (k8s_run_as_user_id, as galaxy-helm and job_conf.yml set it), so the sidecar reads what the tool wrote.
    job = RealGalaxyJob(s3, tmp_path, k8s_run_as_user_id="10001", k8s_run_as_group_id="10001")
    assert job.app.config.umask == 0o077

    run_through_ferry(job)

    assert os.stat(job.wrapper.working_directory).st_mode & 0o777 == 0o700
    assert_galaxy_holds_the_outputs(job)


def test_with_a_private_umask_a_tool_running_as_root_fails_naming_the_directory_ferry_cannot_read(
        s3, tmp_path, umask_077):
    # Without k8s_run_as_user_id the tool runs as its image's user (root here) and ferry as 65532: Galaxy's
    # job script copies working/ (0700) to _working/ as root, which ferry's sidecar cannot list.
    job = RealGalaxyJob(s3, tmp_path)

    run_through_ferry(job)

    galaxy_job = job.job
    assert galaxy_job.state == model.Job.states.ERROR
    working = os.path.join(job.wrapper.working_directory, "_working")
    [line] = galaxy_job.tool_stderr.splitlines()  # the tool's own stderr never came back: ferry's line
    assert line.startswith(f"ferry could not send the job's results to S3 (ferry-sidecar): {working}: "
                           "read directory: Permission denied"), line
    assert line.endswith("check the owner and mode (runAsUser/fsGroup)"), line
    assert galaxy_job.info and line.startswith(galaxy_job.info), "Galaxy keeps the first 255 characters as info"
    assert job.report.state == job.table.state == model.Dataset.states.ERROR
