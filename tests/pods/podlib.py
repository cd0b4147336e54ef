"""Shared by the pod tests, the Galaxy tests and the demo: a real S3 server, the ferry binary,
and `podman kube play` of the YAML that `ferry inject` produces ."""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FERRY = REPO / "target/x86_64-unknown-linux-gnu/release/ferry"
FERRY_IMAGE = os.environ.get("FERRY_IMAGE", "localhost/ferry:dev")
TOOL_IMAGE = "localhost/ferry-tool:dev"
# Another S3 server's keys and region (scripts/compat.sh runs the suites against Garage).
KEY = os.environ.get("FERRY_TEST_S3_KEY", "testkey")
SECRET = os.environ.get("FERRY_TEST_S3_SECRET", "testsecret")
REGION = os.environ.get("FERRY_TEST_S3_REGION", "us-east-1")


class S3:
    """A SeaweedFS server on 127.0.0.1: the harness's (FERRY_TEST_S3_ENDPOINT) or our own."""

    def __init__(self, state_dir=None):
        self.state = None
        self.endpoint = os.environ.get("FERRY_TEST_S3_ENDPOINT")
        if not self.endpoint:
            self.state = Path(state_dir or REPO / "target/test-s3" / f"py-{os.getpid()}-{uuid.uuid4().hex[:6]}")
            out = subprocess.run([REPO / "scripts/s3-server.sh", "start", self.state],
                                 check=True, capture_output=True, text=True)
            self.endpoint = out.stdout.strip()

    def stop(self):
        if self.state:
            subprocess.run([REPO / "scripts/s3-server.sh", "stop", self.state], check=False)

    def env(self):
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "FERRY_S3_FORCE_PATH_STYLE": "true",
            "NO_COLOR": "1",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name=REGION,
                            config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self, name):
        bucket = f"{name}-{uuid.uuid4().hex[:10]}".lower()
        c = self.client()
        for _ in range(50):
            try:
                c.create_bucket(Bucket=bucket)
                return bucket
            except Exception:  # the server may still be settling
                time.sleep(0.2)
        c.create_bucket(Bucket=bucket)
        return bucket

    def get_json(self, bucket, key):
        return json.loads(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())


_shared = None


def shared_s3():
    """One server for every suite of a pytest run, stopped when the run ends."""
    global _shared
    if _shared is None:
        import atexit

        _shared = S3()
        atexit.register(_shared.stop)
    return _shared


def ferry(s3, *args, check=True, stdin=None):
    """Runs the ferry binary with the server's environment; returns CompletedProcess."""
    env = {**os.environ, **s3.env()}
    env.pop("FERRY_MANIFEST", None)
    p = subprocess.run([str(FERRY), *map(str, args)], env=env, input=stdin, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"ferry {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
    return p


def podman(*args, check=True):
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "target/containers.conf")}
    p = subprocess.run(["podman", *map(str, args)], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
    return p


CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_secret = None


def credentials_secret():
    """A podman secret holding the test server's keys, for `inject --credentials-secret`.
    podman 4.3's `kube play` reads a secretKeyRef's value from a podman secret whose data is a
    JSON map of base64 values (a `kind: Secret` document played by it is not readable that way).
    One per test process, removed when it ends."""
    global _secret
    if _secret is None:
        import atexit
        import base64

        name = f"ferry-test-s3-{os.getpid()}"
        data = json.dumps({k: base64.b64encode(v.encode()).decode()
                           for k, v in (("AWS_ACCESS_KEY_ID", KEY), ("AWS_SECRET_ACCESS_KEY", SECRET))})
        podman("secret", "rm", name, check=False)
        env = {**os.environ, "CONTAINERS_CONF": str(REPO / "target/containers.conf")}
        subprocess.run(["podman", "secret", "create", name, "-"], input=data, env=env, check=True,
                       capture_output=True, text=True)
        atexit.register(podman, "secret", "rm", name, check=False)
        _secret = name
    return _secret


def s3_env_for_pod(s3):
    """`inject` flags so ferry's containers reach the local server: `--env` for the endpoint and
    settings, `--credentials-secret` for the keys (inject refuses them as plain values)."""
    flags = []
    for k, v in s3.env().items():
        if k not in CREDENTIALS:
            flags += ["--env", f"{k}={v}"]
    return flags + ["--credentials-secret", credentials_secret()]


class Pod:
    """One `podman kube play` of a YAML file; `down()` removes the pod and its volumes."""

    def __init__(self, yaml_path):
        self.yaml = Path(yaml_path)
        import yaml as _yaml

        doc = _yaml.safe_load(self.yaml.read_text())
        self.name = doc["metadata"]["name"]
        spec = doc["spec"]
        self.init_names = [c["name"] for c in spec.get("initContainers", [])]
        self.names = [c["name"] for c in spec["containers"]]
        self.play = None

    def start(self):
        # hostNetwork: true in the YAML: the pod reaches the S3 server on 127.0.0.1; never a bridge.
        self.play = podman("kube", "play", self.yaml, check=False)
        return self.play.returncode

    def wait(self, timeout=120):
        """Waits until every regular container has exited; returns {name: exit code}."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = {n: self.state(n) for n in self.names}
            if all(s[0] in ("exited", "stopped", "created") for s in states.values()):
                return {n: s[1] for n, s in states.items()}
            time.sleep(0.25)
        raise AssertionError(f"pod {self.name} still running after {timeout}s: {states}")

    def state(self, container):
        p = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{self.name}-{container}",
                   check=False)
        if p.returncode != 0:
            return ("missing", None)
        status, code = p.stdout.split()
        return (status, int(code))

    def logs(self, container):
        return podman("logs", f"{self.name}-{container}", check=False).stderr + \
            podman("logs", f"{self.name}-{container}", check=False).stdout

    def down(self):
        podman("kube", "down", self.yaml, check=False)


def pod_from_job(job, name):
    """A `kind: Pod` from a batch/v1 Job's pod template (what the Job controller would create)."""
    template = job["spec"]["template"]
    meta = dict(template.get("metadata") or {})
    meta["name"] = name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def for_podman(pod, job_dir_root=None):
    """What a cluster gives and a podman test must state: host network (S3 on 127.0.0.1), keep
    init containers for their logs, images that are local."""
    pod = json.loads(json.dumps(pod))
    spec = pod["spec"]
    spec["hostNetwork"] = True
    spec["restartPolicy"] = "Never"
    ann = pod["metadata"].setdefault("annotations", {})
    ann["io.podman.annotations.init.container.type"] = "always"
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c.get("image", "").startswith("localhost/"):
            c["imagePullPolicy"] = "Never"
    return pod
