"""The Kubernetes side of a Galaxy runner test, without a cluster.

- ``FakeKubernetesApi``: the few API calls Galaxy's k8s runner makes through pykube (create, list, get,
  patch and delete Jobs; list a Job's Pods), served from memory by a ``requests`` transport adapter
  mounted on the runner's own pykube client, so Galaxy and pykube run unchanged.
- ``pod_status``: a Pod's ``status`` built from podman's container states the way the kubelet reports
  it: ``containerStatuses`` sorted by container name, ``terminated.reason`` OOMKilled / Error / Completed.
"""

import json
import re
import subprocess
import uuid
from urllib.parse import parse_qs, urlparse

import requests
from requests.adapters import BaseAdapter

import podlib


class FakeKubernetesApi(BaseAdapter):
    """In-memory Jobs and Pods behind pykube's HTTP client (mount it on ``runner._pykube_api.session``)."""

    JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?$")
    PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")

    def __init__(self):
        super().__init__()
        self.jobs = {}  # name -> Job object as the API server holds it
        self.created = []  # every Job object POSTed, as sent
        self.deleted = []  # names of deleted Jobs
        self.pods = {}  # Job name -> Pod object (what the Job controller created)

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = json.loads(request.body) if request.body else None
        if m := self.JOBS.match(url.path):
            return self._jobs(request, request.method, m["name"], query, body)
        if (m := self.PODS.match(url.path)) and request.method == "GET":
            job_name = _selector(query.get("labelSelector", ""), "job-name")
            pods = [self.pods[job_name]] if job_name in self.pods else []
            return _response(request, 200, {"kind": "PodList", "items": pods})
        return _response(request, 404, {"kind": "Status", "message": f"no route for {request.method} {url.path}"})

    def _jobs(self, request, method, name, query, body):
        if method == "POST" and name is None:
            self.created.append(json.loads(json.dumps(body)))
            obj = json.loads(json.dumps(body))
            name = obj["metadata"].get("name") or obj["metadata"]["generateName"] + uuid.uuid4().hex[:5]
            obj["metadata"]["name"] = name
            obj["spec"].setdefault("parallelism", 1)
            obj["spec"].setdefault("completions", 1)
            obj["status"] = {}
            self.jobs[name] = obj
            return _response(request, 201, obj)
        if method == "GET" and name is None:
            wanted = _selector(query.get("fieldSelector", ""), "metadata.name")
            items = [j for n, j in self.jobs.items() if wanted is None or n == wanted]
            return _response(request, 200, {"kind": "JobList", "items": items})
        if name not in self.jobs:
            return _response(request, 404, {"kind": "Status", "reason": "NotFound"})
        if method == "GET":
            return _response(request, 200, self.jobs[name])
        if method == "PATCH":
            _merge(self.jobs[name], body)
            return _response(request, 200, self.jobs[name])
        if method == "DELETE":
            self.deleted.append(name)
            del self.jobs[name]
            self.pods.pop(name, None)
            return _response(request, 200, {"kind": "Status", "status": "Success"})
        return _response(request, 405, {"kind": "Status"})

    def job_ended(self, name, pod):
        """What the Job controller reports once the Job's only pod ended (backoffLimit 0)."""
        self.pods[name] = pod
        if pod["status"]["phase"] == "Succeeded":
            self.jobs[name]["status"] = {"succeeded": 1}
        else:
            self.jobs[name]["status"] = {
                "failed": 1,
                "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
            }

    def close(self):
        pass


def _selector(selector, key):
    for part in selector.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


def _merge(target, patch):
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = v


def _response(request, status, obj):
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(obj).encode()
    r.headers["Content-Type"] = "application/json"
    r.url = request.url
    r.request = request
    return r


def pod_status(pod, name):
    """The Pod object with the ``status`` the kubelet would report for podman pod ``name``.

    OOMKilled: podman's ``State.OOMKilled``, or the kernel's OOM record for the container's memory
    cgroup (``oom_memcg=…/libpod-<id>``), as the container runtime learns it from the cgroup's OOM events.
    podman 4.3.1 on this host's cgroup v1 never sets ``State.OOMKilled`` (measured), so the kernel
    record is what tells.
    """
    oom_memcgs = _kernel_oom_memcgs()

    def statuses(containers):
        out = []
        for c in sorted(containers, key=lambda c: c["name"]):  # the kubelet sorts by name
            state = _inspect(f"{name}-{c['name']}")
            if state is None:  # never started: an init container before it failed
                out.append({"name": c["name"], "state": {"waiting": {"reason": "PodInitializing"}}})
                continue
            oom = state["OOMKilled"] or any(cg.endswith(f"libpod-{state['Id']}") for cg in oom_memcgs)
            code = state["ExitCode"]
            reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
            terminated = {"exitCode": code, "reason": reason}
            message = _termination_file(pod, c)
            if not message and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                message = _log_tail(f"{name}-{c['name']}")
            if message:
                terminated["message"] = message
            out.append({"name": c["name"], "state": {"terminated": terminated}})
        return out

    containers = statuses(pod["spec"]["containers"])
    inits = statuses(pod["spec"].get("initContainers", []))
    ended = [s["state"].get("terminated", {}).get("exitCode") for s in containers + inits]
    phase = "Succeeded" if all(code == 0 for code in ended) else "Failed"
    return {**pod, "status": {
        "phase": phase,
        "initContainerStatuses": inits,
        "containerStatuses": containers,
    }}


def _termination_file(pod, container):
    """The container's termination-message file, as the kubelet reads it (at most 4096 bytes): podman has
    none, so a test mounts a hostPath file at /dev/termination-log (the default terminationMessagePath)."""
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["spec"].get("volumes", []) if "hostPath" in v}
    for m in container.get("volumeMounts", []):
        if m["mountPath"] == container.get("terminationMessagePath", "/dev/termination-log") and m["name"] in hosts:
            with open(hosts[m["name"]], errors="replace") as f:
                return f.read(4096)
    return ""


def _log_tail(container):
    """What the kubelet puts in ``terminated.message`` for FallbackToLogsOnError when the container wrote
    no termination-message file (podman has none): the end of its log, at most 80 lines and 2048 bytes."""
    p = podlib.podman("logs", container, check=False)
    lines = (p.stdout + p.stderr).splitlines()[-80:]
    return "\n".join(lines)[-2048:]


def _inspect(container):
    """The container's end state; None when it never started (created, or removed by podman)."""
    p = podlib.podman("inspect", "--format", "{{json .State}} {{.Id}}", container, check=False)
    if p.returncode != 0:
        return None
    state, cid = p.stdout.strip().rsplit(" ", 1)
    state = json.loads(state)
    if state["Status"] == "created":
        return None
    if state["Status"] not in ("exited", "stopped"):
        raise AssertionError(f"container {container} is {state['Status']}, not ended")
    return {"ExitCode": state["ExitCode"], "OOMKilled": state.get("OOMKilled", False), "Id": cid}


def _kernel_oom_memcgs():
    p = subprocess.run(["dmesg"], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"cannot read the kernel log for OOM kills (dmesg: {p.stderr.strip()})")
    return set(re.findall(r"oom-kill:.*?oom_memcg=([^,\s]+)", p.stdout))
