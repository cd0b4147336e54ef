"""The tool container finds no S3 credential, in a real pod, in shared-pid mode (the tool sees
ferry's processes and runs as the same UID): not in its environment, not in any file it can read,
not in /proc of ferry's processes. ferry's containers do get the keys (from a Secret, by
reference): the job's results come back."""

import podlib
import genericjob
from genericjob import TOOL, Layout

# The probe never spells the secret in one piece, so its own command line cannot match it.
SECRET_HEAD, SECRET_TAIL = podlib.SECRET[:4], podlib.SECRET[4:]

PROBE = r"""
set -u
needle="__HEAD__""__TAIL__"
out=$2
mkdir -p "$out"
# 1 once process $1's environment shows $2 (it shows the parent's until the child execs).
in_environ() {
  n=0
  while [ $n -lt 50 ]; do
    grep -q "$2" /proc/$1/environ 2>/dev/null && { echo 1; return; }
    n=$((n + 1)); sleep 0.1
  done
  echo 0
}
# A process of ours with a known environment: reading /proc/<pid>/environ works where allowed.
PROBE_CANARY=canary-$$ sleep 30 &
child=$!
canary=$(in_environ $child PROBE_CANARY=canary-)
# Controls: the searches below do find the secret where it is (a process, a file), then undone.
CONTROL=$needle sleep 30 &
control=$!
control_proc=$(in_environ $control "$needle")
kill $control
printf '%s\n' "$needle" > /tmp/control
control_file=$(find /tmp -type f | while read -r f; do grep -l "$needle" "$f"; done | wc -l)
rm /tmp/control
wait $control 2>/dev/null
# Wait until ferry's sidecar (`/ferry sidecar --mode shared-pid`) runs beside us.
i=0
while [ $i -lt 100 ]; do
  for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in /ferry\ sidecar\ *) break 2 ;; esac
  done
  i=$((i + 1)); sleep 0.1
done
seen=0 environ_readable=0 maps_readable=0 root_readable=0 fd_readable=0 proc_hits=0
for p in /proc/[0-9]*; do
  grep -q "$needle" $p/environ 2>/dev/null && proc_hits=$((proc_hits + 1))
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
    /ferry\ sidecar\ *)
      seen=$((seen + 1))
      cat $p/environ > /dev/null 2>&1 && environ_readable=$((environ_readable + 1))
      cat $p/maps > /dev/null 2>&1 && maps_readable=$((maps_readable + 1))
      ls $p/root/ > /dev/null 2>&1 && root_readable=$((root_readable + 1))
      ls $p/fd/ > /dev/null 2>&1 && fd_readable=$((fd_readable + 1))
      ;;
  esac
done
env_hits=$(env | grep -c "$needle")
aws_vars=$(env | grep -c '^AWS_')
file_hits=$(find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print 2>/dev/null \
  | while read -r f; do grep -l "$needle" "$f" 2>/dev/null; done | wc -l)
kill $child
echo "probe canary=$canary control_proc=$control_proc control_file=$control_file seen=$seen environ_readable=$environ_readable maps_readable=$maps_readable" \
  "root_readable=$root_readable fd_readable=$fd_readable proc_hits=$proc_hits env_hits=$env_hits" \
  "aws_vars=$aws_vars file_hits=$file_hits" | tee "$out/probe.txt"
""".replace("__HEAD__", SECRET_HEAD).replace("__TAIL__", SECRET_TAIL).lstrip("\n")  # podman 4.3 misreads a YAML block starting with an empty line


def probe_result(text):
    line = next(line for line in text.splitlines() if line.startswith("probe "))
    return {k: int(v) for k, v in (w.split("=") for w in line.split()[1:])}


def test_the_tool_container_finds_no_credential_in_env_files_or_ferrys_proc(s3, tmp_path):
    layout = Layout(tmp_path, genericjob.new_id("creds"))
    layout.reads.mkdir(parents=True)
    (layout.reads / "a.fq").write_bytes(b"@r1\nacgt\n+\nIIII\n")
    layout.workdir.mkdir(parents=True)

    r = genericjob.run(s3, layout, script=PROBE, timeout=90)
    assert r.play_rc == 0, r.logs
    assert r.exit_codes[TOOL] == 0, r.logs
    # ferry's containers had the keys: the results came back through S3.
    assert r.collect.returncode == 0, r.collect.stderr
    probe = probe_result((layout.results / "probe.txt").read_text())
    # The probe can see: another process's environment where it is allowed, and ferry's sidecar.
    assert probe["canary"] == 1 and probe["control_proc"] == 1 and probe["control_file"] == 1, probe
    assert probe["seen"] >= 1, probe
    # ...and finds nothing of ferry's.
    assert probe == {**probe, "environ_readable": 0, "maps_readable": 0, "root_readable": 0,
                     "fd_readable": 0, "proc_hits": 0, "env_hits": 0, "aws_vars": 0,
                     "file_hits": 0}, probe

    pod = (layout.base / f"gen-{layout.job_id}.ferry.yaml").read_text()
    assert podlib.SECRET not in pod and podlib.KEY not in pod  # the Job spec names the Secret only
    assert "eks.amazonaws.com/skip-containers: readstats" in pod


def test_ferry_marks_itself_non_dumpable_whatever_the_container_runtime(tmp_path):
    """The pod above would pass on podman even without ferry's own protection: runc already
    starts a container without privilege escalation non-dumpable. Other runtimes need not, so
    ferry sets it itself; here a same-UID reader outside any container finds ferry's
    /proc/<pid>/environ closed, and a control process's open."""
    import os
    import subprocess
    import time

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as another user")
    uid = 10042
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": podlib.KEY, "AWS_SECRET_ACCESS_KEY": podlib.SECRET,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "FERRY_S3_MAX_ATTEMPTS": "100"}
    as_user = dict(user=uid, group=uid, extra_groups=[], env=env, cwd="/",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # `status` retries a refused connection for minutes: alive while we look.
    ferry = subprocess.Popen([str(podlib.FERRY), "status", "--manifest", "s3://some-bucket/p/jobs/1/manifest.json"],
                             **as_user)
    control = subprocess.Popen(["sleep", "60"], **as_user)
    try:
        def readable(pid):
            p = subprocess.run(["cat", f"/proc/{pid}/environ"], user=uid, group=uid, extra_groups=[],
                               capture_output=True)
            return p.returncode == 0 and podlib.SECRET.encode() in p.stdout

        deadline = time.monotonic() + 10
        while not readable(control.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the control has exec'd with the environment
        assert readable(control.pid)
        assert ferry.poll() is None, "ferry ended before it could be looked at"
        assert not readable(ferry.pid)
        assert os.stat(f"/proc/{ferry.pid}/environ").st_uid == 0
        assert os.stat(f"/proc/{control.pid}/environ").st_uid == uid
    finally:
        for p in (ferry, control):
            p.kill()
            p.wait()


# Run by Debian's python3 (readable by any user). Starts argv[1] stopped at its first instruction (PTRACE_TRACEME: the kernel stops it right after
# execve), prints its pid, and kills it when stdin closes.
LAUNCH_STOPPED = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    if libc.ptrace(0, 0, None, None) != 0:
        os._exit(99)
    os.execve(sys.argv[1], [sys.argv[1], "status", "--manifest", "s3://b/p/jobs/1/manifest.json"], dict(os.environ))
_, status = os.waitpid(pid, 0)
assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == 5, status
print(pid, flush=True)
sys.stdin.read()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""


def test_a_same_uid_tool_cannot_read_the_shared_pid_sidecar_even_before_it_marks_itself_non_dumpable(tmp_path):
    """Between `execve` and ferry's `PR_SET_DUMPABLE 0` (1-6 ms) any process of the same uid and
    gid may open /proc/<pid>/environ and keep reading it. inject gives the shared-pid sidecar the
    tool's uid but a group of its own, and the kernel then refuses the tool even in that window.
    Here ferry is held at its first instruction, with the ids inject gave the sidecar: a reader
    with the sidecar's ids gets the keys (the window is real), a reader with the tool's does not."""
    import os
    import subprocess

    import pytest
    import yaml

    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as other users")
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  restartPolicy: Never\n"
                   "  containers:\n  - name: tool\n    image: t\n    command: [sh, -c, 'true']\n"
                   "    workingDir: /data/jobs/1\n"
                   "    securityContext: {runAsUser: 10043, runAsGroup: 10043}\n")
    manifest = podlib.REPO / "manifests/manifest-example.json"
    out = subprocess.run([str(podlib.FERRY), "inject", "--manifest", str(manifest), "--image", "f",
                          "--sidecar", "shared-pid", "-f", str(pod)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    containers = yaml.safe_load(out.stdout)["spec"]["containers"]
    tool, sidecar = containers[0]["securityContext"], containers[-1]["securityContext"]
    assert containers[-1]["args"][0] == "sidecar"
    uid, tool_gid, sidecar_gid = tool["runAsUser"], tool["runAsGroup"], sidecar["runAsGroup"]
    assert sidecar["runAsUser"] == uid and sidecar_gid != tool_gid

    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": podlib.KEY, "AWS_SECRET_ACCESS_KEY": podlib.SECRET}
    launcher = subprocess.Popen(["/usr/bin/python3", "-c", LAUNCH_STOPPED, str(podlib.FERRY)], user=uid,
                                group=sidecar_gid, extra_groups=[], env=env, cwd="/", stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        pid = int(launcher.stdout.readline())
        assert open(f"/proc/{pid}/comm").read().strip() == "ferry"

        def keys_readable(gid):
            p = subprocess.run(["cat", f"/proc/{pid}/environ"], user=uid, group=gid, extra_groups=[],
                               capture_output=True)
            return p.returncode == 0 and podlib.SECRET.encode() in p.stdout

        assert keys_readable(sidecar_gid), "at its first instruction ferry should still be dumpable"
        assert not keys_readable(tool_gid)
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=10)
