#!/usr/bin/env python3
"""Run a Galaxy-made job script the way Galaxy's k8s runner starts it, in a busybox-only root.

    sudo .venv/bin/python tests/galaxy_job/check_busybox.py [--busybox /bin/busybox]

Needs root (chroot, mknod) and a static busybox (Debian: apt-get install busybox-static).
The chroot stands in for a FROM-scratch image holding only busybox and its applet links; the job
directory is copied into it at the same absolute path, as ferry recreates it in the pod. Exit codes
are read with Galaxy's own read_exit_code_from.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from galaxy.job_execution.output_collect import read_exit_code_from

HERE = os.path.dirname(os.path.abspath(__file__))
CHROOT = shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin")


def busybox_root(root, busybox):
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    os.makedirs(os.path.join(root, "dev"))
    os.makedirs(os.path.join(root, "tmp"))
    subprocess.run(["mknod", "-m", "666", os.path.join(root, "dev", "null"), "c", "1", "3"], check=True)


def run_case(work, busybox, job_id, tool_command):
    """Make the job on the "head node" (work/host), run it in a fresh busybox root, return results."""
    job_dir = os.path.join(work, "host", "jobs", str(job_id))
    made = subprocess.run(
        [sys.executable, os.path.join(HERE, "make_job.py"), "--job-dir", job_dir, "--job-id", str(job_id),
         "--tool-command", tool_command],
        capture_output=True, text=True,
    )
    if made.returncode != 0:
        raise RuntimeError(f"make_job.py failed ({made.returncode}):\n{made.stderr}")
    job = json.loads(made.stdout)
    root = os.path.join(work, f"root{job_id}")
    busybox_root(root, busybox)
    os.makedirs(os.path.join(root, "data", "in"))
    os.makedirs(os.path.join(root, "data", "out"))
    with open(os.path.join(root, "data", "in", "a.txt"), "w") as f:
        f.write("abc def\n")
    shutil.copytree(job_dir, root + job_dir, symlinks=True)
    # Container start: workingDir, then command + args (kubernetes.py:569-572), clean env.
    argv = [CHROOT, root, "/bin/busybox", "sh", "-c", 'cd "$1" && shift && exec "$@"', "start",
            job["working_dir"], *job["command"], *job["args"]]
    pod = subprocess.run(argv, env={"PATH": "/bin"}, capture_output=True, text=True, timeout=60)
    in_root = lambda path: root + path  # noqa: E731
    with open(in_root(job["tool_stdout"])) as f:
        stdout = f.read()
    with open(in_root(job["tool_stderr"])) as f:
        stderr = f.read()
    return {
        "container_exit": pod.returncode,
        "container_stderr": pod.stderr,
        "galaxy_exit_code": read_exit_code_from(in_root(job["exit_code_file"]), str(job_id)),
        "tool_stdout": stdout,
        "tool_stderr": stderr,
        "out_file": in_root("/data/out/b.txt"),
        "job_dir": job["job_dir"],
    }


def check(name, cond, detail):
    print(f"{'ok  ' if cond else 'FAIL'} {name}")
    if not cond:
        print(f"     {detail}")
    return cond


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busybox", default="/bin/busybox", help="a statically linked busybox")
    args = parser.parse_args()
    if os.geteuid() != 0 or not CHROOT:
        sys.exit("check_busybox.py needs root and chroot(8)")
    good = True
    with tempfile.TemporaryDirectory() as work:
        r = run_case(work, args.busybox, 42, "cat /data/in/a.txt | tr a-z A-Z > /data/out/b.txt; echo hello; echo oops >&2")
        with open(r["out_file"]) as f:
            out = f.read()
        good &= check("tool output", out == "ABC DEF\n", repr(out))
        good &= check("tool_stdout", r["tool_stdout"] == "hello\n", repr(r["tool_stdout"]))
        good &= check("tool_stderr", r["tool_stderr"] == "oops\n", repr(r["tool_stderr"]))
        good &= check("exit 0", r["galaxy_exit_code"] == 0 == r["container_exit"], r)

        r = run_case(work, args.busybox, 43, 'echo "$HOME"; exit 3')
        good &= check("exit 3 in .ec and container", r["galaxy_exit_code"] == 3 == r["container_exit"], r)
        home = r["job_dir"] + "/home\n"
        good &= check("tool_stdout on failure, HOME in job dir", r["tool_stdout"] == home, repr(r["tool_stdout"]))
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
