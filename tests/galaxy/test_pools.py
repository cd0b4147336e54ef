"""Handlers stay responsive: stage and collect run on ferry's own bounded pools, so Galaxy's runner
workers hand a job over and are free at once, at most ferry_transfer_threads stages run at a time, and a
finished job is checked and collected while more jobs than threads wait to be staged."""

import os
import stat
import time

from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

import podlib
from harness import GalaxyJob, drain


def gated_ferry(directory):
    """A ferry binary whose `stage` records that it started and waits for DIR/gate; the rest is ferry."""
    script = directory / "ferry"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = stage ]; then\n'
        f'  touch "{directory}/started.$$"\n'
        f'  while [ ! -e "{directory}/gate" ]; do sleep 0.05; done\n'
        "fi\n"
        f'exec "{podlib.FERRY}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def started(directory):
    return sorted(p.name for p in directory.glob("started.*"))


def wait_until(condition, what, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.05)


def test_more_jobs_than_threads_queue_while_a_finished_job_is_checked_and_collected(s3, tmp_path):
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    (gate_dir / "gate").touch()  # open for the first job
    threads = 2
    first = GalaxyJob(s3, tmp_path / "first",
                      runner_params={"ferry_binary": str(gated_ferry(gate_dir)), "ferry_transfer_threads": threads})
    runner = first.runner
    first.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = first.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs
    for p in gate_dir.glob("started.*"):
        p.unlink()
    (gate_dir / "gate").unlink()  # every stage from now on waits

    waiting = []
    for i in range(threads + 3):
        job = GalaxyJob(s3, tmp_path / f"waiting{i}")
        job.runner, job.api = runner, first.api  # one handler's runner for all jobs
        job.queue("true", wait=False)  # returns at once: Galaxy's worker is free again
        waiting.append(job)
    wait_until(lambda: len(started(gate_dir)) == threads, f"{threads} stages started")

    # Galaxy's monitor checks the first job (ended), its worker finishes it: collect runs on its own pool.
    assert runner.check_watched_item(first.ajs) is None
    method, arg = runner.work_queue.get_nowait()
    method(arg)
    wait_until(lambda: first.wrapper.outcomes, "the first job finished")
    [outcome] = first.wrapper.outcomes
    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK)
    assert first.output.read_text() == "ACGT\nTTGA\n"
    assert len(started(gate_dir)) == threads, "still only as many stages as threads"
    assert len(first.api.created) == 1, "no waiting job was submitted yet"

    (gate_dir / "gate").touch()
    assert runner.wait_for_transfers(timeout=120)
    drain(runner)

    assert len(started(gate_dir)) == threads + 3
    assert len(first.api.created) == 1 + threads + 3, "every waiting job was staged and created"
    assert all(not job.wrapper.outcomes for job in waiting), [job.wrapper.outcomes for job in waiting]
    assert os.path.exists(gate_dir / "gate")


def test_a_job_deleted_while_it_is_staged_gets_no_kubernetes_job(s3, tmp_path):
    from galaxy import model

    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    job = GalaxyJob(s3, tmp_path / "job", runner_params={"ferry_binary": str(gated_ferry(gate_dir))})
    job.queue("true", wait=False)
    wait_until(lambda: started(gate_dir), "the stage started")

    job.wrapper.get_job().state = model.Job.states.DELETED  # the user deletes the job meanwhile
    (gate_dir / "gate").touch()
    assert job.runner.wait_for_transfers(timeout=120)

    assert job.api.created == [], "no pod for a deleted job"
    assert job.wrapper.outcomes == [], "not failed either: it is deleted"


def hanging_ferry(directory, command):
    """A ferry binary whose COMMAND hangs (a child process that never answers, like a stalled S3
    connection) and records its child's pid; every other command is ferry's. Not in the current directory:
    podman kube play would take a directory named ferry there for the image's build context."""
    directory.mkdir()
    script = directory / "ferry"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = {command} ]; then\n'
        "  echo 'retrying: connection to the S3 endpoint timed out' >&2\n"
        "  sleep 600 &\n"
        f'  echo $! > "{directory}/child.pid"\n'
        "  wait\n"
        "fi\n"
        f'exec "{podlib.FERRY}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def assert_killed(directory):
    pid = int((directory / "child.pid").read_text())
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or " Z " in open(f"/proc/{pid}/stat").read(),
               "the hung command's child process was killed", timeout=10)


def test_a_ferry_command_that_hangs_is_killed_after_its_timeout_and_fails_the_job_naming_it(s3, tmp_path):
    ferry = hanging_ferry(tmp_path / "bin", "status")
    job = GalaxyJob(s3, tmp_path / "job", runner_params={"ferry_binary": str(ferry), "ferry_command_timeout": 2})

    job.queue("true")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail" and outcome.message.startswith("Could not stage the job's files to S3:")
    assert "ferry status did not finish within 2 s and was killed" in outcome.message, outcome.message
    assert "ferry_command_timeout" in outcome.message and "connection to the S3 endpoint timed out" in outcome.message
    assert job.api.created == [], "no Kubernetes Job for a job that was never staged"
    assert_killed(tmp_path / "bin")


def test_a_collect_that_hangs_is_killed_after_its_timeout_and_the_job_fails_as_not_returned(s3, tmp_path):
    from galaxy.jobs.runners import JobState

    ferry = hanging_ferry(tmp_path / "bin", "collect")
    job = GalaxyJob(s3, tmp_path / "job", runner_params={"ferry_binary": str(ferry), "ferry_transfer_timeout": 2})
    job.submit("sh {tool_dir}/upper.sh {input} {output}")
    pod = job.run_pod()
    assert pod.exit_codes["k8s"] == 0, pod.logs

    outcome = job.complete()

    assert outcome.call == "fail" and "could not be brought back from S3" in outcome.message, outcome
    assert "ferry collect did not finish within 2 s and was killed" in outcome.message, outcome.message
    assert job.ajs.runner_state == JobState.runner_states.JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER
    assert_killed(tmp_path / "bin")
