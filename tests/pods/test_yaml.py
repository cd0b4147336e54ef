"""The YAML ferry ships and produces: valid for the Kubernetes versions we claim (offline, strict
schemas), reproducible from its inputs, and within the `restricted` Pod Security Standard."""

import subprocess

import pytest
import yaml

import podlib

MANIFESTS = podlib.REPO / "manifests"
KV = podlib.REPO / ".venv/bin/kubernetes-validate"


def validate(path, version):
    p = subprocess.run([KV, "--strict", "-k", version, path], capture_output=True, text=True)
    assert p.returncode == 0, f"{path} is not valid for Kubernetes {version}:\n{p.stdout}{p.stderr}"


def inject(*args, stdin=None):
    p = subprocess.run([podlib.FERRY, "inject", *map(str, args)], capture_output=True, text=True, input=stdin)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("path,versions", [
    ("job-native.yaml", ["1.29.0", "1.33.0"]),
    ("job-shared-pid.yaml", ["1.27.0", "1.29.0", "1.33.0"]),
    ("serviceaccount-irsa.yaml", ["1.27.0", "1.33.0"]),
    ("examples/job-readstats-native.yaml", ["1.29.0", "1.33.0"]),
])
def test_shipped_manifests_are_valid_for_the_versions_we_claim(path, versions):
    for v in versions:
        validate(MANIFESTS / path, v)


def test_the_native_sidecar_yaml_is_refused_by_kubernetes_1_27():
    # The validator would catch a native sidecar on a cluster that has none: the check has teeth.
    p = subprocess.run([KV, "--strict", "-k", "1.27.0", MANIFESTS / "job-native.yaml"], capture_output=True, text=True)
    assert p.returncode != 0


@pytest.mark.parametrize("mode", ["native", "shared-pid"])
def test_shipped_examples_are_what_inject_produces_today(mode):
    out = inject("--manifest", MANIFESTS / "manifest-example.json", "--image", "ghcr.io/example/ferry:0.1.0",
                 "--sidecar", mode, "-f", MANIFESTS / "job-input.yaml")
    shipped = (MANIFESTS / f"job-{mode}.yaml").read_text()
    assert yaml.safe_load(out) == yaml.safe_load(shipped), "regenerate manifests/ (see manifests/README.md)"


RESTRICTED_INPUT = """
apiVersion: v1
kind: Pod
metadata: {name: batch}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: tool
    image: example/tool:1
    command: [/bin/sh, -c, "echo hi"]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
"""

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                   "secret"}


def restricted_violations(pod):
    """The `restricted` Pod Security Standard, rule by rule (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    bad = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(f"pod: {flag}")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            bad.append(f"volume {v['name']}: {kinds - ALLOWED_VOLUMES}")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort")
    return bad


@pytest.mark.parametrize("mode", ["native", "shared-pid"])
def test_an_injected_restricted_pod_stays_restricted_field_by_field(mode, tmp_path):
    src = tmp_path / "pod.yaml"
    src.write_text(RESTRICTED_INPUT)
    pod = yaml.safe_load(inject("--manifest", MANIFESTS / "manifest-example.json", "--image", "example/ferry:1",
                                "--sidecar", mode, "-f", src))
    assert restricted_violations(pod) == []
    ferry_containers = [c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
                        if "ferry" in c["name"]]
    assert len(ferry_containers) == 2
    for c in ferry_containers:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["runAsUser"] == 10001, "ferry writes files as the tool's user"
    out = tmp_path / "out.yaml"
    out.write_text(yaml.safe_dump(pod))
    validate(out, "1.29.0" if mode == "native" else "1.27.0")


def test_the_restricted_check_catches_a_violation():
    pod = yaml.safe_load(RESTRICTED_INPUT)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    assert len(restricted_violations(pod)) == 2
