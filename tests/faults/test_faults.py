"""Fault matrix: ferry against a real S3 server (SeaweedFS) behind a fault-injecting proxy.

Throttling, 5xx, bodies that break mid-transfer, SIGKILL and SIGTERM at random points, and an
S3 outage: every role either finishes with byte-identical results or fails with one clear
error line and exit code 4, and never leaves anything partial at a final path, a temporary
file, or an open multipart upload behind. Every test asserts that its faults really happened.
"""

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import podlib
import pytest
from proxy import FaultPlan, Proxy, is_part_upload, is_ranged_get

MiB = 1 << 20
PART = "5MiB"
THROTTLE = 10 * MiB  # bytes/s per connection while a kill or an outage must land mid-transfer
KILL_SEEDS = range(6)
BIG = 20 * MiB  # 4 parts of 5 MiB
KILL_CONCURRENCY = 2


# -- helpers -------------------------------------------------------------------------------------


def env_for(s3, endpoint=None, **extra):
    env = {**os.environ, **s3.env(), **{k: str(v) for k, v in extra.items()}}
    for k in ("FERRY_MANIFEST", "FERRY_ROOT", "FERRY_S3_MAX_ATTEMPTS", "FERRY_PART_SIZE",
              "FERRY_CONCURRENCY"):
        if k not in extra:
            env.pop(k, None)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def run(s3, *args, endpoint=None, timeout=120, **extra):
    return subprocess.run([str(podlib.FERRY), *map(str, args)], env=env_for(s3, endpoint, **extra),
                          capture_output=True, text=True, timeout=timeout)


def ok(p):
    assert p.returncode == 0, f"ferry exited {p.returncode}:\n{p.stderr}"
    return p.stdout.strip()


def start(s3, log, *args, endpoint=None, **extra):
    """A ferry process in the background, its stderr in `log`."""
    return subprocess.Popen([str(podlib.FERRY), *map(str, args)], env=env_for(s3, endpoint, **extra),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def noise(n, seed):
    return random.Random(seed).randbytes(n)


def snapshot(root):
    """(relative path, kind + mode, sha256 or link target) for everything under `root`."""
    out = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, f"dir {mode}", ""))
            else:
                out.append((rel, f"file {mode}", hashlib.sha256(p.read_bytes()).hexdigest()))
    return sorted(out)


def temp_files(*roots):
    return [str(p) for r in roots for p in Path(r).rglob("*.ferry-tmp")]


def under(root, abs_path):
    """Where `--root root` places the absolute path `abs_path`."""
    return Path(str(root) + str(abs_path))


def open_uploads(s3, bucket):
    r = s3.client().list_multipart_uploads(Bucket=bucket)
    return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]


def object_sha(s3, bucket, key):
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def error_lines(stderr):
    return [line for line in stderr.splitlines() if " ERROR " in f" {line} "]


def make_head(base, n_small=40, big=0, seed=0):
    """A head node's job: workdir with nested small files (0-byte, exec bit, unicode, symlink,
    empty dir) and optionally one big file; one input dataset. Returns (workdir, input)."""
    rng = random.Random(seed)
    wd = base / "w/job"
    for i in range(n_small):
        write(wd / f"d{i % 7}/sub{i % 3}/f{i}.txt", rng.randbytes(rng.choice([0, 1, 100, 5000, 70000])))
    write(wd / "run tool ü.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(wd / "run tool ü.sh", 0o755)
    (wd / "empty dir").mkdir()
    os.symlink("/etc/hostname", wd / "outside-link")
    if big:
        write(wd / "big.bin", noise(big, seed + 1))
    inp = base / "d/in.dat"
    write(inp, noise(MiB + 17, seed + 2))
    return wd, inp


def stage(s3, bucket, job, wd, *more, endpoint=None, check=True, **extra):
    p = run(s3, "stage", "--url", f"s3://{bucket}/p", "--job-id", job, "--workdir", wd,
            "--part-size", PART, *more, endpoint=endpoint, **extra)
    return ok(p) if check else p


def run_job(pod_wd, pod_out, job, out_size, seed):
    """What the tool does in the pod: change, create and delete workdir files, write the output
    and the exit-code file."""
    write(pod_wd / "d0/sub0/f0.txt", b"changed by the job\n")
    write(pod_wd / "new/result.txt", b"new file\n")
    os.remove(pod_wd / "d1/sub1/f1.txt")
    write(pod_out, noise(out_size, seed + 3))
    write(pod_wd / f"galaxy_{job}.ec", b"0\n")


def kill_then_rerun(s3, proxy, log, seed, args, match, max_n, left_behind):
    """Runs `ferry ARGS` through the throttled proxy, SIGKILLs it once a random number (1..max_n)
    of requests satisfying `match` have arrived plus a random delay, then runs the same command
    again (unthrottled), which must succeed. Returns (the kill landed mid-run, what
    `left_behind()` found right after the kill)."""
    rng = random.Random(seed)
    since = proxy.mark()
    proxy.plan, proxy.rate = None, THROTTLE
    proc = start(s3, log, *args, endpoint=proxy.endpoint)
    try:
        assert proxy.wait_for(match, rng.randint(1, max_n), since, timeout=30), log.read_text()
        time.sleep(rng.uniform(0, 0.25))
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
    left = left_behind()
    proxy.rate = None
    p = run(s3, *args, endpoint=proxy.endpoint)
    assert p.returncode == 0, f"seed {seed}: the re-run exited {p.returncode}:\n{p.stderr}"
    return alive, left


@pytest.fixture
def proxy(s3):
    p = Proxy(s3.endpoint)
    yield p
    p.stop()


# -- faults on requests ----------------------------------------------------------------------


def test_init_completes_through_503_500_and_broken_bodies(s3, proxy, tmp_path):
    bucket = s3.new_bucket("faults-init")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=150, big=40 * MiB, seed=1)
    url = stage(s3, bucket, "1", wd, "--input", inp)
    proxy.plan = FaultPlan(every=3, kinds=["503", "500", "reset_body"], seed=1, max_faults=20)
    root = tmp_path / "pod"
    ok(run(s3, "init", "--manifest", url, "--root", root, "--part-size", PART,
           endpoint=proxy.endpoint))
    assert snapshot(under(root, wd)) == snapshot(wd)
    assert snapshot(under(root, inp.parent)) == snapshot(inp.parent)
    # The 150 small files travel in one pack: few requests, so fewer faults than the plan allows.
    assert proxy.injected >= 5, proxy.faults
    assert all(proxy.faults[k] > 0 for k in ("503", "500", "reset_body")), proxy.faults
    assert temp_files(root) == []


def test_stage_and_sidecar_complete_through_throttling(s3, proxy, tmp_path):
    bucket = s3.new_bucket("faults-up")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=60, big=12 * MiB, seed=2)
    out = head / "out/result.dat"
    plan = FaultPlan(every=2, kinds=["503", "500"], seed=2, max_faults=25, methods=("PUT",))
    proxy.plan = plan
    url = stage(s3, bucket, "2", wd, "--input", inp, "--output", out, endpoint=proxy.endpoint)
    staged_faults = proxy.injected
    assert staged_faults > 0 and proxy.faults["503"] and proxy.faults["500"], proxy.faults

    root = tmp_path / "pod"
    ok(run(s3, "init", "--manifest", url, "--root", root))
    assert snapshot(under(root, wd)) == snapshot(wd)
    run_job(under(root, wd), under(root, out), "2", 20 * MiB, seed=2)

    proxy.plan = FaultPlan(every=2, kinds=["503", "500"], seed=3, max_faults=25, methods=("PUT",))
    ok(run(s3, "sidecar", "--manifest", url, "--root", root, "--quiet-ms", 100, "--timeout", 60,
           "--part-size", PART, endpoint=proxy.endpoint))
    assert proxy.injected > staged_faults, proxy.faults
    assert open_uploads(s3, bucket) == []
    done = s3.get_json(bucket, "p/jobs/2/attempts/1/done.json")
    assert done["exit_code"] == 0 and done["reason"] == "exited", done

    ok(run(s3, "collect", "--manifest", url))  # direct: what the sidecar uploaded, brought home
    assert snapshot(wd) == snapshot(under(root, wd))
    assert snapshot(out.parent) == snapshot(under(root, out.parent))


def test_collect_completes_through_faults(s3, proxy, tmp_path):
    bucket = s3.new_bucket("faults-collect")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=60, seed=3)
    out = head / "out/result.dat"
    url = stage(s3, bucket, "3", wd, "--input", inp, "--output", out)
    root = tmp_path / "pod"
    ok(run(s3, "init", "--manifest", url, "--root", root))
    run_job(under(root, wd), under(root, out), "3", 30 * MiB, seed=3)
    ok(run(s3, "sidecar", "--manifest", url, "--root", root, "--quiet-ms", 100, "--timeout", 60,
           "--part-size", PART))

    proxy.plan = FaultPlan(every=2, kinds=["503", "500", "reset_body"], seed=3, max_faults=15,
                           methods=("GET",))
    ok(run(s3, "collect", "--manifest", url, "--part-size", PART, endpoint=proxy.endpoint))
    assert snapshot(wd) == snapshot(under(root, wd))
    assert snapshot(out.parent) == snapshot(under(root, out.parent))
    assert proxy.injected >= 5 and proxy.faults["reset_body"] > 0, proxy.faults
    assert temp_files(head) == []


def test_a_spent_retry_budget_fails_with_a_clear_error(s3, proxy, tmp_path):
    bucket = s3.new_bucket("faults-budget")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=5, big=12 * MiB, seed=4)
    url = stage(s3, bucket, "4", wd, "--input", inp)
    # The manifest GET passes; every later object GET gets 503 SlowDown.
    proxy.plan = FaultPlan(every=1, kinds=["503"], max_faults=None, methods=("GET",), start_after=1)
    root = tmp_path / "pod"
    t = time.monotonic()
    p = run(s3, "init", "--manifest", url, "--root", root, "--part-size", PART,
            endpoint=proxy.endpoint, FERRY_S3_MAX_ATTEMPTS=3)
    took = time.monotonic() - t
    assert p.returncode == 4, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and p.stderr.strip().splitlines()[-1] == errors[0], p.stderr
    assert f"s3://{bucket}/p/" in errors[0] and "SlowDown" in errors[0], errors[0]
    assert proxy.faults["503"] >= 3, proxy.faults
    assert took < 30, took
    empty = hashlib.sha256(b"").hexdigest()  # 0-byte files need no request
    placed = [f for f in snapshot(root) if f[1].startswith("file") and f[2] != empty]
    assert placed == [] and temp_files(root) == [], placed


# -- SIGKILL at random points, then the same command again ------------------------------------


def test_a_stage_killed_at_random_points_finishes_when_run_again(s3, proxy, tmp_path):
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=20, seed=5)
    big_input = head / "d/big.dat"
    write(big_input, noise(BIG, 5))
    landed, left = 0, []
    for seed in KILL_SEEDS:
        bucket = s3.new_bucket("kill-stage")
        args = ["stage", "--url", f"s3://{bucket}/p", "--job-id", "5", "--workdir", wd,
                "--input", inp, "--input", big_input, "--part-size", PART,
                "--concurrency", KILL_CONCURRENCY]
        alive, open_after_kill = kill_then_rerun(
            s3, proxy, tmp_path / f"stage-{seed}.log", seed, args, is_part_upload, 3,
            lambda: open_uploads(s3, bucket))
        landed += alive
        left += open_after_kill
        assert open_uploads(s3, bucket) == [], f"seed {seed}: uploads left open after the re-run"
        url = f"s3://{bucket}/p/jobs/5/manifest.json"
        root = tmp_path / f"check-{seed}"
        ok(run(s3, "init", "--manifest", url, "--root", root))
        assert snapshot(under(root, wd)) == snapshot(wd), f"seed {seed}"
        assert snapshot(under(root, big_input.parent)) == snapshot(big_input.parent), f"seed {seed}"
        assert temp_files(head, root) == []
        shutil.rmtree(root)
    assert landed >= len(KILL_SEEDS) - 1, f"only {landed} kills landed mid-run"
    assert left, "no kill left a multipart upload open: the re-runs cleaned up nothing"


def test_an_init_killed_at_random_points_finishes_when_run_again(s3, proxy, tmp_path):
    bucket = s3.new_bucket("kill-init")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=60, big=BIG, seed=6)
    url = stage(s3, bucket, "6", wd, "--input", inp)
    landed, left = 0, []
    for seed in KILL_SEEDS:
        root = tmp_path / f"pod-{seed}"
        args = ["init", "--manifest", url, "--root", root, "--part-size", PART,
                "--concurrency", KILL_CONCURRENCY]
        alive, temps = kill_then_rerun(s3, proxy, tmp_path / f"init-{seed}.log", seed, args,
                                       is_ranged_get, 3, lambda: temp_files(root))
        landed += alive
        left += temps
        assert snapshot(under(root, wd)) == snapshot(wd), f"seed {seed}"
        assert snapshot(under(root, inp.parent)) == snapshot(inp.parent), f"seed {seed}"
        assert temp_files(root) == [], f"seed {seed}"
        shutil.rmtree(root)
    assert landed >= len(KILL_SEEDS) - 1, f"only {landed} kills landed mid-run"
    assert left, "no kill left a temporary file: the re-runs replaced nothing"


def test_a_sidecar_killed_at_random_points_finishes_when_run_again(s3, proxy, tmp_path):
    bucket = s3.new_bucket("kill-sidecar")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=20, seed=7)
    out = head / "out/result.dat"
    landed, left = 0, []
    for seed in KILL_SEEDS:
        job = f"7-{seed}"
        url = stage(s3, bucket, job, wd, "--input", inp, "--output", out)
        root = tmp_path / f"pod-{seed}"
        ok(run(s3, "init", "--manifest", url, "--root", root))
        run_job(under(root, wd), under(root, out), job, BIG, seed)
        args = ["sidecar", "--manifest", url, "--root", root, "--quiet-ms", 100, "--timeout", 60,
                "--part-size", PART, "--concurrency", KILL_CONCURRENCY]
        alive, open_after_kill = kill_then_rerun(
            s3, proxy, tmp_path / f"sidecar-{seed}.log", seed, args, is_part_upload, 3,
            lambda: open_uploads(s3, bucket))
        landed += alive
        left += open_after_kill
        done = s3.get_json(bucket, f"p/jobs/{job}/attempts/1/done.json")
        assert done["exit_code"] == 0, done
        [o] = done["outputs"]
        assert object_sha(s3, bucket, o["key"]) == hashlib.sha256(
            under(root, out).read_bytes()).hexdigest(), f"seed {seed}"
        assert open_uploads(s3, bucket) == [], f"seed {seed}: uploads left open after the re-run"
        assert temp_files(root) == []
        shutil.rmtree(root)
    assert landed >= len(KILL_SEEDS) - 1, f"only {landed} kills landed mid-run"
    assert left, "no kill left a multipart upload open: the re-runs cleaned up nothing"


def test_a_collect_killed_at_random_points_finishes_when_run_again(s3, proxy, tmp_path):
    bucket = s3.new_bucket("kill-collect")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=30, seed=8)
    out = head / "out/result.dat"
    url = stage(s3, bucket, "8", wd, "--input", inp, "--output", out)
    pod = tmp_path / "pod"
    ok(run(s3, "init", "--manifest", url, "--root", pod))
    run_job(under(pod, wd), under(pod, out), "8", BIG, seed=8)
    (under(pod, wd) / "d5/sub2/f5.txt").write_bytes(noise(BIG // 2, 9))  # a big workdir change
    ok(run(s3, "sidecar", "--manifest", url, "--root", pod, "--quiet-ms", 100, "--timeout", 60,
           "--part-size", PART))
    landed, left = 0, []
    for seed in KILL_SEEDS:
        root = tmp_path / f"head-{seed}"
        shutil.copytree(head, under(root, head), symlinks=True)
        args = ["collect", "--manifest", url, "--root", root, "--part-size", PART,
                "--concurrency", KILL_CONCURRENCY]
        alive, temps = kill_then_rerun(s3, proxy, tmp_path / f"collect-{seed}.log", seed, args,
                                       is_ranged_get, 5, lambda: temp_files(root))
        landed += alive
        left += temps
        assert snapshot(under(root, head)) == snapshot(under(pod, head)), f"seed {seed}"
        assert temp_files(root) == [], f"seed {seed}"
        shutil.rmtree(root)
    assert landed >= len(KILL_SEEDS) - 1, f"only {landed} kills landed mid-run"
    assert left, "no kill left a temporary file: the re-runs replaced nothing"


# -- SIGTERM (eviction) during the sidecar's upload ------------------------------------------


def _sidecar_uploading(s3, proxy, tmp_path, name):
    bucket = s3.new_bucket(name)
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=10, seed=10)
    out = head / "out/result.dat"
    url = stage(s3, bucket, "10", wd, "--input", inp, "--output", out)
    root = tmp_path / "pod"
    ok(run(s3, "init", "--manifest", url, "--root", root))
    run_job(under(root, wd), under(root, out), "10", 40 * MiB, seed=10)
    args = ["sidecar", "--manifest", url, "--root", root, "--quiet-ms", 100, "--timeout", 60,
            "--part-size", PART, "--concurrency", 4]
    proxy.rate = THROTTLE / 2
    since = proxy.mark()
    proc = start(s3, tmp_path / "sidecar.log", *args, endpoint=proxy.endpoint)
    assert proxy.wait_for(is_part_upload, 2, since), "the sidecar never started uploading"
    time.sleep(0.2)
    assert proc.poll() is None, "the sidecar ended before the signal"
    return bucket, args, proc, root, out


def test_sigterm_during_the_sidecar_upload_writes_no_done_json_and_a_rerun_finishes(
        s3, proxy, tmp_path):
    bucket, args, proc, root, out = _sidecar_uploading(s3, proxy, tmp_path, "term-sidecar")
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    took = time.monotonic() - t
    log = (tmp_path / "sidecar.log").read_text()
    assert code == 130, log
    assert took < 5, f"exit took {took:.1f} s"
    assert "p/jobs/10/attempts/1/done.json" not in [o["Key"] for o in s3.client().list_objects_v2(
        Bucket=bucket, Prefix="p/jobs/10/").get("Contents", [])]
    assert open_uploads(s3, bucket) == [], "the interrupted sidecar aborts its multipart uploads"
    proxy.rate = None
    ok(run(s3, *args, endpoint=proxy.endpoint))
    done = s3.get_json(bucket, "p/jobs/10/attempts/1/done.json")
    assert done["exit_code"] == 0 and done["reason"] == "exited", done
    assert object_sha(s3, bucket, done["outputs"][0]["key"]) == hashlib.sha256(
        under(root, out).read_bytes()).hexdigest()


def test_a_second_sigterm_ends_the_sidecar_at_once_even_while_it_cleans_up(s3, proxy, tmp_path):
    bucket, args, proc, root, out = _sidecar_uploading(s3, proxy, tmp_path, "term2-sidecar")
    # The cleanup after the first SIGTERM (aborting multipart uploads) hangs on a slow S3.
    proxy.plan = FaultPlan(every=1, kinds=["delay"], methods=("DELETE",), max_faults=None, delay=15)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    took = time.monotonic() - t
    log = (tmp_path / "sidecar.log").read_text()
    assert proxy.faults["delay"] > 0, "no slow cleanup after the first SIGTERM: test proves nothing"
    assert code == 130 and took < 2.5, f"exit {code} after {took:.1f} s:\n{log}"
    proxy.plan, proxy.rate = None, None
    ok(run(s3, *args, endpoint=proxy.endpoint))
    assert s3.get_json(bucket, "p/jobs/10/attempts/1/done.json")["exit_code"] == 0
    assert open_uploads(s3, bucket) == []


def test_a_sigterm_during_stage_exits_130_and_leaves_no_multipart_upload_open(s3, proxy, tmp_path):
    bucket = s3.new_bucket("term-stage")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=5, seed=12)
    big_input = head / "d/big.dat"
    write(big_input, noise(BIG, 12))
    proxy.rate = THROTTLE
    since = proxy.mark()
    log = tmp_path / "stage.log"
    proc = start(s3, log, "stage", "--url", f"s3://{bucket}/p", "--job-id", "12", "--workdir", wd,
                 "--input", inp, "--input", big_input, "--part-size", PART, "--concurrency", 2,
                 endpoint=proxy.endpoint)
    assert proxy.wait_for(is_part_upload, 2, since), log.read_text()
    time.sleep(0.2)
    assert proc.poll() is None, "stage ended before the signal"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130, log.read_text()
    assert open_uploads(s3, bucket) == [], "multipart uploads are aborted when stage is interrupted"


def test_a_sigterm_during_init_exits_130_and_leaves_no_temporary_file(s3, proxy, tmp_path):
    bucket = s3.new_bucket("term-init")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=30, big=BIG, seed=13)
    url = stage(s3, bucket, "13", wd, "--input", inp)
    root = tmp_path / "pod"
    proxy.rate = THROTTLE
    since = proxy.mark()
    log = tmp_path / "init.log"
    proc = start(s3, log, "init", "--manifest", url, "--root", root, "--part-size", PART,
                 "--concurrency", 2, endpoint=proxy.endpoint)
    assert proxy.wait_for(is_ranged_get, 2, since), log.read_text()
    time.sleep(0.2)
    assert temp_files(root), "a download is under way"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130, log.read_text()
    assert temp_files(root) == []
    assert not (under(root, wd) / "big.bin").exists()


# -- the S3 server goes away during a transfer ------------------------------------------------


def _init_during_outage(s3, proxy, tmp_path, name, outage_s, **extra):
    bucket = s3.new_bucket(name)
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=40, big=40 * MiB, seed=11)
    url = stage(s3, bucket, "11", wd, "--input", inp)
    root = tmp_path / "pod"
    proxy.rate = THROTTLE
    t = time.monotonic()
    since = proxy.mark()
    proc = start(s3, tmp_path / "init.log", "init", "--manifest", url, "--root", root,
                 "--part-size", PART, "--concurrency", 4, endpoint=proxy.endpoint, **extra)
    assert proxy.wait_for(is_ranged_get, 3, since)
    assert proc.poll() is None, "init ended before the outage"
    proxy.outage()
    try:
        code = proc.wait(outage_s)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        proxy.resume()
        proxy.rate = None
    if code is None:
        code = proc.wait(90)
    return code, time.monotonic() - t, (tmp_path / "init.log").read_text(), root, wd, inp, bucket


@pytest.fixture
def own_s3():
    """A SeaweedFS server of this test alone, which it may restart."""
    state = podlib.REPO / "target/test-s3" / f"py-faults-restart-{os.getpid()}"
    script = podlib.REPO / "scripts/s3-server.sh"
    out = subprocess.run([script, "start", state], check=True, capture_output=True, text=True)
    server = podlib.S3.__new__(podlib.S3)
    server.state, server.endpoint = state, out.stdout.strip()

    def restart():
        r = subprocess.run([script, "restart", state], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0 and r.stdout.strip() == server.endpoint, r.stderr

    server.restart = restart
    yield server
    try:  # a throwaway server: no need to wait for its graceful exit
        os.kill(int((state / "pid").read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    server.stop()
    shutil.rmtree(state, ignore_errors=True)


def test_init_and_sidecar_ride_out_an_s3_server_restart(own_s3, tmp_path):
    """scripts/s3-server.sh restart (SIGTERM, same data, same ports: ~6 s without S3) while one
    job's init downloads and another job's sidecar uploads, both through the throttled proxy."""
    s3 = own_s3
    bucket = s3.new_bucket("restart")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=40, big=BIG, seed=11)
    out = head / "out/result.dat"
    url_a = stage(s3, bucket, "a", wd, "--input", inp, "--output", out)
    url_b = stage(s3, bucket, "b", wd, "--input", inp, "--output", out)
    root_a, root_b = tmp_path / "pod-a", tmp_path / "pod-b"
    ok(run(s3, "init", "--manifest", url_b, "--root", root_b))
    run_job(under(root_b, wd), under(root_b, out), "b", BIG, seed=11)
    roles = {
        "init": (["init", "--manifest", url_a, "--root", root_a], is_ranged_get),
        "sidecar": (["sidecar", "--manifest", url_b, "--root", root_b, "--quiet-ms", 100,
                     "--timeout", 120], is_part_upload),
    }
    with Proxy(s3.endpoint, rate=2 * MiB) as proxy:
        since = proxy.mark()
        procs = {role: start(s3, tmp_path / f"{role}.log", *args, "--part-size", PART,
                             "--concurrency", 2, endpoint=proxy.endpoint)
                 for role, (args, _) in roles.items()}
        try:
            for role, (_, match) in roles.items():
                assert proxy.wait_for(match, 2, since), (tmp_path / f"{role}.log").read_text()
                assert procs[role].poll() is None, f"{role} ended before the restart"
            s3.restart()
            codes = {role: p.wait(120) for role, p in procs.items()}
        finally:
            for p in procs.values():
                p.kill()
        logs = {role: (tmp_path / f"{role}.log").read_text() for role in roles}
        assert codes == {"init": 0, "sidecar": 0}, logs
        assert proxy.upstream_failures > 0, "the restart was never seen"
    assert snapshot(under(root_a, wd)) == snapshot(wd)
    assert snapshot(under(root_a, inp.parent)) == snapshot(inp.parent)
    done = s3.get_json(bucket, "p/jobs/b/attempts/1/done.json")
    assert done["exit_code"] == 0, done
    assert object_sha(s3, bucket, done["outputs"][0]["key"]) == hashlib.sha256(
        under(root_b, out).read_bytes()).hexdigest()
    assert open_uploads(s3, bucket) == []
    assert temp_files(root_a, root_b) == []


def test_a_short_outage_is_ridden_out_at_full_concurrency(s3, proxy, tmp_path):
    """3 s without S3 while 16 requests are in flight: every request has attempts left
    (FERRY_S3_MAX_ATTEMPTS default 8, backoff 1-20 s), so init must finish."""
    bucket = s3.new_bucket("outage-wide")
    head = tmp_path / "head"
    wd, inp = make_head(head, n_small=300, seed=14)
    # The workdir's small files travel in one pack; an index directory's files (datasets are
    # never packed) keep 16 GETs in flight.
    refs = head / "refs"
    rng = random.Random(14)
    for i in range(300):
        write(refs / f"r{i}.dat", rng.randbytes(5000))
    url = stage(s3, bucket, "14", wd, "--input", inp, "--index", refs)
    root = tmp_path / "pod"
    proxy.rate = MiB
    since = proxy.mark()
    log = tmp_path / "init.log"
    proc = start(s3, log, "init", "--manifest", url, "--root", root, endpoint=proxy.endpoint)
    try:
        assert proxy.wait_for(lambda e: e.method == "GET", 20, since), log.read_text()
        assert proc.poll() is None, "init ended before the outage"
        proxy.outage()
        time.sleep(3)
        proxy.resume()
        proxy.rate = None
        code = proc.wait(90)
    finally:
        proc.kill()
    assert code == 0, log.read_text()[-3000:]
    assert snapshot(under(root, wd)) == snapshot(wd)
    assert snapshot(under(root, refs)) == snapshot(refs)
    assert temp_files(root) == []


def test_a_long_s3_outage_fails_with_a_clear_error_once_the_budget_is_spent(s3, proxy, tmp_path):
    code, took, log, root, wd, inp, bucket = _init_during_outage(
        s3, proxy, tmp_path, "outage-long", 60, FERRY_S3_MAX_ATTEMPTS=3)
    assert code == 4, log
    assert took < 60, f"took {took:.0f} s"
    errors = error_lines(log)
    assert len(errors) == 1 and log.strip().splitlines()[-1] == errors[0], log
    assert f"s3://{bucket}/p/" in errors[0], errors[0]
    assert temp_files(root) == []
    assert not (under(root, wd) / "big.bin").exists()
