"""S3 over HTTPS signed by a private CA (what on-prem Ceph RGW and MinIO sites run): SeaweedFS
with a CA and a server certificate made here with openssl. AWS_CA_BUNDLE (the AWS convention)
and SSL_CERT_FILE are honoured; an untrusted certificate fails at once, with one line naming the
endpoint and the fix, and is never retried (a TCP relay counts the connections)."""

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from test_faults import MiB, PART, env_for, error_lines, noise, ok, run, snapshot, under, write

import podlib

REPO = Path(__file__).resolve().parents[2]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca_and_server_cert(d):
    """ca.pem (a CA), server.pem + server.key (signed by it, SAN IP:127.0.0.1), other-ca.pem."""
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.pem", "-days", "2", "-subj", f"/CN=ferry test {name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


class Relay:
    """A TCP relay to `port` on 127.0.0.1 that counts the connections made through it."""

    def __init__(self, port):
        self.target = port
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            u = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    """(https endpoint, http endpoint, cert dir) of a SeaweedFS serving both."""
    d = tmp_path_factory.mktemp("tls")
    make_ca_and_server_cert(d)
    state = REPO / "target/test-s3" / f"tls-{os.getpid()}"
    env = {**os.environ, "FERRY_S3_TLS": f"{d / 'server.pem'} {d / 'server.key'}"}
    out = subprocess.run([REPO / "scripts/s3-server.sh", "start", state], env=env, check=True,
                         capture_output=True, text=True)
    try:
        yield (state / "endpoint-https").read_text().strip(), out.stdout.strip(), d
    finally:
        subprocess.run([REPO / "scripts/s3-server.sh", "stop", state], check=False)


@pytest.fixture(scope="module")
def server(https):
    """A podlib.S3 talking plain HTTP to the same server (buckets, checks)."""
    s3 = podlib.S3.__new__(podlib.S3)
    s3.state, s3.endpoint = None, https[1]
    return s3


def round_trip(server, endpoint, tmp_path, **tls_env):
    bucket = server.new_bucket("tls")
    wd = tmp_path / "head/w"
    write(wd / "small.txt", b"hello\n")
    write(wd / "big.bin", noise(11 * MiB, 5))  # multipart
    url = ok(run(server, "stage", "--url", f"s3://{bucket}/p", "--job-id", "1", "--workdir", wd,
                 "--part-size", PART, endpoint=endpoint, **tls_env))
    root = tmp_path / "pod"
    ok(run(server, "init", "--manifest", url, "--root", root, "--part-size", PART,
           endpoint=endpoint, **tls_env))
    assert snapshot(under(root, wd)) == snapshot(wd)


def test_aws_ca_bundle_makes_a_private_ca_trusted(https, server, tmp_path):
    round_trip(server, https[0], tmp_path, AWS_CA_BUNDLE=https[2] / "ca.pem")


def test_ssl_cert_file_makes_a_private_ca_trusted(https, server, tmp_path):
    round_trip(server, https[0], tmp_path, SSL_CERT_FILE=https[2] / "ca.pem")


@pytest.mark.parametrize("bundle", [None, "other-ca.pem"])
def test_an_untrusted_certificate_fails_at_once_with_one_line_naming_the_endpoint(
        https, server, tmp_path, bundle):
    bucket = server.new_bucket("tls-bad")
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    relay = Relay(int(https[0].rsplit(":", 1)[1]))
    endpoint = f"https://127.0.0.1:{relay.port}"
    extra = {"AWS_CA_BUNDLE": https[2] / bundle} if bundle else {}
    try:
        p = run(server, "stage", "--url", f"s3://{bucket}/p", "--job-id", "1", "--workdir", wd,
                endpoint=endpoint, FERRY_S3_MAX_ATTEMPTS=8, **extra)
    finally:
        relay.close()
    assert p.returncode == 12, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1, p.stderr
    line = errors[0]
    assert endpoint in line and "certificate not trusted" in line and "AWS_CA_BUNDLE" in line, line
    # Not retried: 8 attempts were allowed, one connection was made.
    assert relay.connections == 1, relay.connections


def test_https_to_a_plain_http_port_fails_at_once_naming_the_endpoint(https, server, tmp_path):
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    relay = Relay(int(https[1].rsplit(":", 1)[1]))  # the HTTP port
    endpoint = f"https://127.0.0.1:{relay.port}"
    try:
        p = run(server, "stage", "--url", "s3://some-bucket/p", "--job-id", "1", "--workdir", wd,
                endpoint=endpoint, FERRY_S3_MAX_ATTEMPTS=8)
    finally:
        relay.close()
    assert p.returncode == 12, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and endpoint in errors[0] and "speaks HTTPS" in errors[0], p.stderr
    assert relay.connections == 1, relay.connections


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n",
                                     b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_an_unusable_ca_bundle_is_refused_naming_it(https, server, tmp_path, content):
    bundle = tmp_path / "bundle.pem"
    if content is not None:
        bundle.write_bytes(content)
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    p = run(server, "stage", "--url", "s3://some-bucket/p", "--job-id", "1", "--workdir", wd,
            endpoint=https[0], AWS_CA_BUNDLE=bundle)
    assert p.returncode == 2, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and f"AWS_CA_BUNDLE={bundle}" in errors[0], p.stderr


@pytest.mark.parametrize("content", [None, b"not a certificate\n"])
def test_an_unusable_ssl_cert_file_is_refused_naming_it(https, server, tmp_path, content):
    # SSL_CERT_FILE replaces the system roots: a typo must not look like an untrusted server.
    bundle = tmp_path / "roots.pem"
    if content is not None:
        bundle.write_bytes(content)
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    p = run(server, "stage", "--url", "s3://some-bucket/p", "--job-id", "1", "--workdir", wd,
            endpoint=https[0], SSL_CERT_FILE=bundle)
    assert p.returncode == 2, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and f"SSL_CERT_FILE={bundle}" in errors[0], p.stderr


def without_static_keys(env, tmp_path, **web_identity):
    """`env` with credentials only from web identity (IRSA): no keys, no profile."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(k, None)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_WEB_IDENTITY_TOKEN_FILE=str(token), AWS_ROLE_ARN="arn:aws:iam::123456789012:role/ferry",
               **{k: str(v) for k, v in web_identity.items()})
    return env


def stage_without_static_keys(server, tmp_path, max_attempts=2, web_identity=True, **env):
    """`ferry stage` of a one-file job with credentials only from web identity (or none at all)."""
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    env = without_static_keys(env_for(server, FERRY_S3_MAX_ATTEMPTS=max_attempts), tmp_path, **env)
    if not web_identity:
        for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
            env.pop(k)
    return subprocess.run([str(podlib.FERRY), "stage", "--url", "s3://some-bucket/p", "--job-id", "1",
                           "--workdir", str(wd)], env=env, capture_output=True, text=True, timeout=120)


def test_an_untrusted_sts_certificate_fails_at_once_naming_sts_not_the_s3_endpoint(https, server, tmp_path):
    """IRSA: ferry swaps the pod's token for keys at STS first. An STS behind a private CA used to
    be retried inside every credentials lookup for ~40 s, then blamed on the S3 endpoint."""
    relay = Relay(int(https[0].rsplit(":", 1)[1]))
    sts = f"https://127.0.0.1:{relay.port}"
    try:
        p = stage_without_static_keys(server, tmp_path, max_attempts=8, AWS_ENDPOINT_URL_STS=sts)
    finally:
        relay.close()
    assert p.returncode == 12, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1, p.stderr
    line = errors[0]
    assert f"STS endpoint {sts}" in line and "certificate not trusted" in line and "AWS_CA_BUNDLE" in line, line
    assert server.endpoint not in line, line
    # Not retried: 8 attempts were allowed, one connection was made.
    assert relay.connections == 1, relay.connections


def test_a_refused_credentials_lookup_names_sts_and_exits_6(https, server, tmp_path):
    """STS answering with an error (here: an S3 server, which knows no AssumeRoleWithWebIdentity)
    is a credentials failure naming STS, not an S3 error on the first object."""
    p = stage_without_static_keys(server, tmp_path, AWS_ENDPOINT_URL_STS=https[1])
    assert p.returncode == 6, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1, p.stderr
    # SeaweedFS serves STS too, and refuses the role: its code and message, in words.
    line = errors[0]
    assert f"no S3 credentials from STS endpoint {https[1]}" in line and "AccessDenied: role not found" in line, line
    assert "Error {" not in line and "DispatchFailure(" not in line, line


def test_an_sts_that_does_not_answer_is_a_network_failure_naming_sts_exit_4(https, server, tmp_path):
    """Refused, then stalled (accepts, never answers): retried like S3 itself, then exit 4 naming
    STS; a stalled STS is given one S3 attempt's time (FERRY_S3_ATTEMPT_TIMEOUT), not minutes."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    p = stage_without_static_keys(server, tmp_path, AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{port}")
    assert p.returncode == 4, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and f"no credentials: STS endpoint http://127.0.0.1:{port}" in errors[0], p.stderr
    assert "is unreachable or failing" in errors[0] and "Connection refused" in errors[0], errors

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    try:
        sts = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        p = stage_without_static_keys(server, tmp_path, AWS_ENDPOINT_URL_STS=sts, FERRY_S3_ATTEMPT_TIMEOUT=2)
    finally:
        stalled.close()
    assert p.returncode == 4, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and f"no credentials: STS endpoint {sts}" in errors[0], p.stderr
    assert "timed out" in errors[0], errors


def test_no_credentials_at_all_is_one_line_saying_how_to_give_them_exit_6(https, server, tmp_path):
    p = stage_without_static_keys(server, tmp_path, web_identity=False)
    assert p.returncode == 6, p.stderr
    lines = [line for line in p.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and " ERROR " in lines[0], p.stderr  # nothing but that line: no SDK dumps
    assert "no S3 credentials from any source" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0] \
        and "AWS_WEB_IDENTITY_TOKEN_FILE" in lines[0], lines


def test_a_certificate_for_another_name_says_so_and_how_to_fix_it(https, server, tmp_path):
    """The test certificate is for IP 127.0.0.1; `localhost` is another name (CA trusted)."""
    endpoint = https[0].replace("127.0.0.1", "localhost")
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    p = run(server, "stage", "--url", "s3://some-bucket/p", "--job-id", "1", "--workdir", wd,
            endpoint=endpoint, AWS_CA_BUNDLE=https[2] / "ca.pem")
    assert p.returncode == 12, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and "not valid for name" in errors[0] and "127.0.0.1" in errors[0], p.stderr
    assert "issued for" in errors[0] and "Context {" not in errors[0], errors


def test_an_unusable_ssl_cert_dir_is_refused_naming_it(https, server, tmp_path):
    wd = tmp_path / "w"
    write(wd / "a.txt", b"a\n")
    p = run(server, "stage", "--url", "s3://some-bucket/p", "--job-id", "1", "--workdir", wd,
            endpoint=https[0], SSL_CERT_DIR=tmp_path / "no-such-dir")
    assert p.returncode == 2, p.stderr
    assert f"SSL_CERT_DIR={tmp_path / 'no-such-dir'}" in p.stderr, p.stderr
