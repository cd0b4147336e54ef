"""The parts of Galaxy's Kubernetes runner that ferry_galaxy overrides or relies on, pinned to Galaxy
26.1.2's source: when Galaxy changes one, this fails and names it, so the override is re-read against
the new code before anyone trusts it (a changed method is not necessarily broken)."""

import hashlib
import inspect

import pytest
from galaxy.jobs.runners.kubernetes import KubernetesJobRunner
from galaxy.version import VERSION

# method -> (sha256 of its source, first 16 hex digits; why ferry_galaxy cares)
PINNED = {
    "queue_job": ("d43164d2d45bd831", "builds the Job spec (our stage + inject) after writing the job script"),
    "_KubernetesJobRunner__get_k8s_job_spec": ("1825a80074a8b4d9", "overridden: the spec ferry injects into"),
    "_handle_job_failure": ("179207c7d8e317da", "overridden: the manifest is read before it queues the Job's deletion; "
                           "ferry's container failure becomes the message"),
    "_handle_unschedulable_job": ("c32679a4b4466c44", "overridden: the manifest is read before the Job is deleted"),
    "check_watched_item": ("1b7a6ab8fa556f55", "calls _handle_job_failure; decides finish or fail"),
    "fail_job": ("0ed7bda353c3418e", "overridden (runs after collect): reads outputs/tool_stdout, tool_stderr"),
    "finish_job": ("d3e8f08f5e001a05", "overridden (runs after collect): metadata, then Galaxy reads outputs"),
}


def test_galaxy_is_the_version_the_runner_was_written_for():
    assert VERSION == "26.1.2", f"Galaxy {VERSION}: re-check every method in PINNED, then update the pins"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_galaxys_method_is_unchanged(name):
    method = getattr(KubernetesJobRunner, name, None)
    assert method is not None, f"Galaxy's KubernetesJobRunner has no {name} any more"
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
    want, why = PINNED[name]
    assert digest == want, f"Galaxy changed KubernetesJobRunner.{name} ({why}): re-read ferry_galaxy/runner.py " \
                           f"against it, then pin {digest}"
