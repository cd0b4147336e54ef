"""The fault proxy itself: forwards requests byte for byte and injects exactly what its plan says."""

import http.client
import http.server
import socket
import threading

import pytest
from proxy import FaultPlan, Proxy


class Echo(http.server.BaseHTTPRequestHandler):
    """Upstream that answers with what it received: method, target, headers and body size."""

    protocol_version = "HTTP/1.1"
    seen = []

    def _answer(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Echo.seen.append((self.command, self.path, dict(self.headers), body))
        out = b"x" * 100_000 if self.command in ("GET", "HEAD") else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *a):
        pass


@pytest.fixture
def upstream():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Echo.seen.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_requests_are_forwarded_unchanged_over_one_kept_alive_connection(upstream):
    with Proxy(upstream) as p:
        c = http.client.HTTPConnection("127.0.0.1", p.port)
        c.request("PUT", "/b/k%20%C3%BC?partNumber=1&uploadId=x", body=b"abc" * 1000,
                  headers={"Host": "s3.example:9000", "X-Amz-Date": "20260101T000000Z"})
        assert c.getresponse().read() == b""
        c.putrequest("PUT", "/b/chunked", skip_host=True)
        c.putheader("Host", "elsewhere")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-amz-checksum-crc32: AAAAAA==\r\n\r\n")
        assert c.getresponse().read() == b""
        c.request("GET", "/b/k", headers={"Range": "bytes=0-9"})
        assert len(c.getresponse().read()) == 100_000
        c.request("HEAD", "/b/k")
        r = c.getresponse()
        assert r.getheader("Content-Length") == "100000" and r.read() == b""
    (m1, t1, h1, b1), (m2, t2, h2, b2), (m3, _, h3, _), (m4, _, _, _) = Echo.seen
    assert (m1, t1, h1["Host"], h1["X-Amz-Date"], b1) == (
        "PUT", "/b/k%20%C3%BC?partNumber=1&uploadId=x",
        "s3.example:9000", "20260101T000000Z", b"abc" * 1000)
    assert (m2, h2["Host"], b2) == ("PUT", "elsewhere", b"hello world")
    assert h3["Range"] == "bytes=0-9" and m4 == "HEAD"
    assert p.requests == {"PUT object": 2, "GET object": 1, "HEAD object": 1}


def test_the_plan_injects_its_faults_deterministically(upstream):
    plan = FaultPlan(every=2, kinds=["503", "500", "reset_body"], seed=7, max_faults=6)
    twin = FaultPlan(every=2, kinds=["503", "500", "reset_body"], seed=7, max_faults=6)
    expected = [twin.pick("GET", "/b/k") for _ in range(20)]
    with Proxy(upstream, plan=plan) as p:
        got = []
        for _ in range(20):
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            c.request("GET", "/b/k")
            try:
                r = c.getresponse()
                body = r.read()
                got.append({503: "503", 500: "500"}.get(r.status))
                if r.status == 503:
                    assert b"<Code>SlowDown</Code>" in body
                if r.status == 500:
                    assert b"<Code>InternalError</Code>" in body
            except (http.client.IncompleteRead, ConnectionError, socket.error):
                got.append("reset_body")
            c.close()
        c = http.client.HTTPConnection("127.0.0.1", p.port)
        c.request("GET", "/bucket-only")  # bucket-level requests are never faulted
        assert c.getresponse().status == 200
    assert got == expected and sum(1 for g in got if g) == 6 == p.injected
    assert p.faults == {k: expected.count(k) for k in set(expected) if k}


def test_an_outage_refuses_connections_until_resumed(upstream):
    with Proxy(upstream) as p:
        p.outage()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2)
        p.resume()
        c = http.client.HTTPConnection("127.0.0.1", p.port)
        c.request("GET", "/b/k")
        assert c.getresponse().status == 200
