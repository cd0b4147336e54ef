"""The IAM policies ferry ships (manifests/iam-policy*.json), proven by the requests a whole job
really makes.

A recording proxy sits in front of SeaweedFS (which enforces no IAM), one for the head node's
commands and one for the pod's. A whole job runs through them: stage with multipart inputs and
an index (SIGTERM mid-upload, then again), re-stage, status (staged, and of an unused job id),
init with the node cache, the sidecar with a multipart output (SIGKILL mid-upload, then again),
status, collect. Every request is mapped to the IAM action and resource ARN AWS would authorise
it with, and evaluated against the shipped policy by a small evaluator of Allow/Deny statements
with IAM wildcards and StringLike/StringEquals conditions. The test fails if the policy would
deny one request, or if it grants an action no request needed.

The README, galaxy/README.md and manifests/serviceaccount-irsa.yaml are checked against the
policy files: they show the same actions and resources.
"""

import json
import os
import random
import re
import signal
import time
import urllib.parse
from pathlib import Path

import podlib
import pytest
from proxy import Proxy, is_part_upload
from test_faults import MiB, PART, noise, ok, run, run_job, start, under, write

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
PREFIX = "site/ferry"


# -- the policy -----------------------------------------------------------------------------------


def load_policy(name, bucket="BUCKET", prefix="PREFIX"):
    text = (MANIFESTS / name).read_text()
    return json.loads(text.replace("BUCKET", bucket).replace("PREFIX", prefix))


def _list(v):
    return v if isinstance(v, list) else [v]


def _glob(pattern, value, case=True):
    """IAM wildcards: `*` any run of characters (`/` included), `?` one character."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, 0 if case else re.IGNORECASE) is not None


def _condition_holds(condition, context):
    for op, tests in condition.items():
        for key, wanted in tests.items():
            if key not in context:  # an absent key fails the test (no ...IfExists here)
                return False
            if op == "StringLike":
                if not any(_glob(w, context[key]) for w in _list(wanted)):
                    return False
            elif op == "StringEquals":
                if context[key] not in _list(wanted):
                    return False
            else:
                raise AssertionError(f"condition operator {op} is not understood by this test")
    return True


def _statement_matches(st, action, resource, context):
    for unsupported in ("NotAction", "NotResource", "NotPrincipal"):
        assert unsupported not in st, f"{unsupported} is not understood by this test"
    return (any(_glob(a, action, case=False) for a in _list(st["Action"]))
            and any(_glob(r, resource) for r in _list(st["Resource"]))
            and _condition_holds(st.get("Condition", {}), context))


def allows(policy, action, resource, context=None):
    """An explicit Deny wins; otherwise allowed iff an Allow statement matches."""
    context = context or {}
    verdict = False
    for st in _list(policy["Statement"]):
        if _statement_matches(st, action, resource, context):
            if st["Effect"] == "Deny":
                return False
            verdict = True
    return verdict


# -- requests → IAM ---------------------------------------------------------------------------------


def iam_of(method, path, query, status):
    """[(action, resource ARN, condition context)] AWS authorises a path-style request with."""
    bucket, _, key = urllib.parse.unquote(path).lstrip("/").partition("/")
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method == "GET" and "uploads" in q:
            return [("s3:ListBucketMultipartUploads", bucket_arn, {})]
        if method in ("GET", "HEAD") and not (set(q) - {"list-type", "prefix", "delimiter",
                                                          "continuation-token", "max-keys",
                                                          "start-after", "marker", "encoding-type"}):
            ctx = {"s3:prefix": q["prefix"][0]} if "prefix" in q else {}
            return [("s3:ListBucket", bucket_arn, ctx)]
        if method == "PUT" and not q:
            return [("s3:CreateBucket", bucket_arn, {})]
        raise AssertionError(f"unmapped bucket request {method} {path}?{query}: teach iam_of")
    arn = f"{bucket_arn}/{key}"
    found = []
    if method in ("GET", "HEAD") and "uploadId" not in q:
        found.append(("s3:GetObject", arn, {}))
        if status == 404:  # S3 says 404 (not 403) only to a caller allowed to list the bucket
            found.append(("s3:ListBucket", bucket_arn, {}))
    elif method == "GET" and "uploadId" in q:
        found.append(("s3:ListMultipartUploadParts", arn, {}))
    elif method == "PUT" or (method == "POST" and ("uploads" in q or "uploadId" in q)):
        found.append(("s3:PutObject", arn, {}))  # PutObject, UploadPart, Create/Complete MPU
    elif method == "DELETE" and "uploadId" in q:
        found.append(("s3:AbortMultipartUpload", arn, {}))
    elif method == "DELETE":
        found.append(("s3:DeleteObject", arn, {}))
    else:
        raise AssertionError(f"unmapped object request {method} {path}?{query}: teach iam_of")
    return found


def needed(proxy):
    """Every (action, resource, context, request line) the proxy saw."""
    out = []
    for e, status in proxy.records():
        for action, resource, ctx in iam_of(e.method, e.path, e.query, status):
            out.append((action, resource, ctx, f"{e.method} {e.path}?{e.query} -> {status}"))
    return out


def granted_pairs(policy):
    return {(a, r) for st in _list(policy["Statement"]) if st["Effect"] == "Allow"
            for a in _list(st["Action"]) for r in _list(st["Resource"])}


def unused_grants(policy, requests):
    """Actions, and resource patterns, of the policy that no request needed. (Judged apart: a
    pattern such as PREFIX/jobs/* is granted for every action of its statement, and one job need
    not use every pair, e.g. abort a multipart upload of a workdir file.)"""
    pairs = granted_pairs(policy)
    actions = {a for a, _ in pairs}
    resources = {r for _, r in pairs}
    unused = [a for a in actions
              if not any(_glob(a, action, case=False) for action, _, _, _ in requests)]
    unused += [r for r in resources if not any(_glob(r, resource) for _, resource, _, _ in requests)]
    return sorted(unused)


def covers(pairs, pair):
    """`pair` (action, resource pattern) lies within one of `pairs`."""
    return any(_glob(a, pair[0], case=False) and _glob(r, pair[1]) for a, r in pairs)


# -- the whole job ----------------------------------------------------------------------------------


def _kill_mid_upload(s3, proxy, log, sig, args, parts_before_kill):
    """Runs `ferry ARGS` through the throttled proxy and sends `sig` once that many part uploads
    arrived; returns the process's exit code."""
    since = proxy.mark()
    proxy.rate = 10 * MiB
    proc = start(s3, log, *args, endpoint=proxy.endpoint)
    try:
        assert proxy.wait_for(is_part_upload, parts_before_kill, since, timeout=60), log.read_text()
        proc.send_signal(sig)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proxy.rate = None
    return rc


@pytest.fixture(scope="module")
def whole_job(tmp_path_factory):
    """Runs the whole job once; yields (head proxy, pod proxy, bucket)."""
    s3 = podlib.shared_s3()
    base = tmp_path_factory.mktemp("iam")
    bucket = s3.new_bucket("iam")
    head, pod = Proxy(s3.endpoint), Proxy(s3.endpoint)
    try:
        rng = random.Random(12)
        wd = base / "head/w/job"
        for i in range(12):
            write(wd / f"d{i % 7}/sub{i % 3}/f{i}.txt", rng.randbytes(rng.choice([0, 10, 5000])))
        write(wd / "big.bin", noise(12 * MiB, 1))
        os.symlink("/etc/hostname", wd / "link")
        (wd / "empty").mkdir()
        inp = base / "head/d/in.dat"
        write(inp, noise(16 * MiB + 5, 2))  # multipart
        index = base / "head/refs/genome.fa"
        write(index, noise(11 * MiB, 3))  # multipart, cached by init
        out = base / "head/out/result.dat"
        url = f"s3://{bucket}/{PREFIX}/jobs/7/manifest.json"
        stage_args = ["stage", "--url", f"s3://{bucket}/{PREFIX}", "--job-id", "7", "--workdir", wd,
                      "--input", inp, "--index", index, "--output", out, "--part-size", PART]
        # Stage, interrupted mid-upload (SIGTERM: ferry aborts its open uploads), then again.
        rc = _kill_mid_upload(s3, head, base / "stage.log", signal.SIGTERM, stage_args, 2)
        assert rc == 130, (base / "stage.log").read_text()
        assert ok(run(s3, *stage_args, endpoint=head.endpoint)) == url
        assert ok(run(s3, *stage_args, endpoint=head.endpoint)) == url  # re-stage: HEADs only
        assert ok(run(s3, "status", "--manifest", url, endpoint=head.endpoint)).startswith("staged")
        # The Galaxy runner asks whether a job id is still unused: a missing manifest, exit 5.
        unused = run(s3, "status", "--manifest", f"s3://{bucket}/{PREFIX}/jobs/8/manifest.json",
                     endpoint=head.endpoint)
        assert unused.returncode == 5, unused.stderr

        root = base / "pod"
        cache = base / "cache"
        ok(run(s3, "init", "--manifest", url, "--root", root, "--cache-dir", cache,
               "--part-size", PART, endpoint=pod.endpoint))
        run_job(under(root, wd), under(root, out), "7", 14 * MiB, seed=7)
        sidecar = ["sidecar", "--manifest", url, "--root", root, "--quiet-ms", 100, "--timeout", 60,
                   "--part-size", PART]
        # The sidecar, SIGKILLed mid-upload (no chance to clean up), then again.
        rc = _kill_mid_upload(s3, pod, base / "sidecar.log", signal.SIGKILL, sidecar, 1)
        assert rc == -signal.SIGKILL
        ok(run(s3, *sidecar, endpoint=pod.endpoint))
        assert ok(run(s3, "status", "--manifest", url, endpoint=head.endpoint)).startswith("done")
        ok(run(s3, "collect", "--manifest", url, "--part-size", PART, endpoint=head.endpoint))
        assert out.read_bytes() == under(root, out).read_bytes()
        yield head, pod, bucket
    finally:
        head.stop()
        pod.stop()


# -- tests --------------------------------------------------------------------------------------------


def test_the_policy_evaluator_follows_iam_wildcards_conditions_and_deny():
    p = {"Statement": [
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/p/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::b",
         "Condition": {"StringLike": {"s3:prefix": "p/*"}}},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/p/secret?"},
    ]}
    assert allows(p, "s3:GetObject", "arn:aws:s3:::b/p/a/b")
    assert allows(p, "S3:GETOBJECT", "arn:aws:s3:::b/p/x")  # actions ignore case
    assert not allows(p, "s3:GetObject", "arn:aws:s3:::b/q/x")
    assert not allows(p, "s3:GetObject", "arn:aws:s3:::B/p/x")  # resources do not
    assert not allows(p, "s3:GetObject", "arn:aws:s3:::b/p/secret1")
    assert allows(p, "s3:GetObject", "arn:aws:s3:::b/p/secret12")
    assert allows(p, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "p/jobs/"})
    assert not allows(p, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "q/"})
    assert not allows(p, "s3:ListBucket", "arn:aws:s3:::b")  # no prefix in the request
    assert not allows(p, "s3:PutObject", "arn:aws:s3:::b/p/x")


def test_requests_map_to_the_iam_actions_aws_authorises_them_with():
    a = "arn:aws:s3:::b/p/k"
    assert iam_of("HEAD", "/b/p/k", "", 200) == [("s3:GetObject", a, {})]
    assert iam_of("GET", "/b/p/k", "", 404) == [("s3:GetObject", a, {}),
                                               ("s3:ListBucket", "arn:aws:s3:::b", {})]
    assert iam_of("POST", "/b/p/k", "uploads", 200) == [("s3:PutObject", a, {})]
    assert iam_of("PUT", "/b/p/k", "partNumber=1&uploadId=u", 200) == [("s3:PutObject", a, {})]
    assert iam_of("DELETE", "/b/p/k", "uploadId=u", 204) == [("s3:AbortMultipartUpload", a, {})]
    assert iam_of("DELETE", "/b/p/k", "", 204) == [("s3:DeleteObject", a, {})]
    assert iam_of("GET", "/b", "uploads&prefix=p%2Fk", 200) == [
        ("s3:ListBucketMultipartUploads", "arn:aws:s3:::b", {})]
    with pytest.raises(AssertionError, match="unmapped"):
        iam_of("POST", "/b", "delete", 200)


@pytest.mark.parametrize("side", ["head", "pod"])
def test_the_shipped_policy_allows_every_request_of_a_whole_job(whole_job, side):
    head, pod, bucket = whole_job
    proxy = head if side == "head" else pod
    requests = needed(proxy)
    assert len(requests) > 20, requests
    multipart = [r for r in requests if "uploads" in r[3] or "partNumber=" in r[3]]
    assert multipart, "the job made no multipart upload: it proves nothing about them"
    for name in (f"iam-policy-{side}.json", "iam-policy.json"):
        policy = load_policy(name, bucket, PREFIX)
        denied = sorted({(a, r, line) for a, r, ctx, line in requests
                         if not allows(policy, a, r, ctx)})
        assert denied == [], f"{name} would deny:\n" + "\n".join(map(str, denied))


@pytest.mark.parametrize("side", ["head", "pod"])
def test_the_shipped_policy_grants_nothing_a_whole_job_does_not_use(whole_job, side):
    head, pod, bucket = whole_job
    proxy = head if side == "head" else pod
    policy = load_policy(f"iam-policy-{side}.json", bucket, PREFIX)
    assert unused_grants(policy, needed(proxy)) == []


def test_the_job_sends_no_streamed_checksum_trailer(whole_job):
    """aws-chunked uploads (`STREAMING-…` payloads) are what Garage and older Ceph/MinIO refuse."""
    head, pod, _ = whole_job
    assert head.streamed == 0 and pod.streamed == 0, (head.streamed, pod.streamed)
    assert any(is_part_upload(e) for e, _ in head.records())


def test_the_union_policy_is_exactly_head_and_pod_together():
    union = granted_pairs(load_policy("iam-policy.json"))
    parts = granted_pairs(load_policy("iam-policy-head.json")) | granted_pairs(
        load_policy("iam-policy-pod.json"))
    assert [p for p in parts if not covers(union, p)] == []
    assert [p for p in union if not covers(parts, p)] == []
    for name in ("iam-policy.json", "iam-policy-head.json", "iam-policy-pod.json"):
        policy = load_policy(name)
        assert policy["Version"] == "2012-10-17"
        assert all(st["Effect"] == "Allow" and "Condition" not in st for st in policy["Statement"])


def _pairs_in(text):
    """(action, resource) pairs a document names, from lines/rows holding both."""
    found = set()
    for line in text.splitlines():
        actions = re.findall(r"s3:[A-Z][A-Za-z]+", line)  # condition keys (s3:prefix) are lowercase
        resources = re.findall(r"arn:aws:s3:::[A-Za-z0-9_./*-]+", line)
        found |= {(a, r.rstrip(".")) for a in actions for r in resources}
    return found


@pytest.mark.parametrize("doc,policy", [
    ("manifests/serviceaccount-irsa.yaml", "iam-policy-pod.json"),
    ("galaxy/README.md", "iam-policy.json"),
    ("README.md", "iam-policy.json"),
])
def test_the_documentation_shows_the_shipped_policy(doc, policy):
    text = (REPO / doc).read_text()
    shown = _pairs_in(text)
    assert shown, f"{doc} shows no action on a resource"
    assert shown == granted_pairs(load_policy(policy)), doc
    assert f"manifests/{policy}" in text or policy in text, f"{doc} does not name {policy}"
