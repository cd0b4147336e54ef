"""A fault-injecting HTTP proxy for tests, in front of a real S3 server (SeaweedFS).

It forwards every request byte for byte (request line, every header line including Host, which
SigV4 signs, and the body: Content-Length, `Transfer-Encoding: chunked`, `aws-chunked` inside a
Content-Length) to the upstream endpoint and relays the response the same way, with keep-alive.
A `FaultPlan` decides, deterministically from its seed and the order of eligible requests, which
requests get a fault instead:

  "503"         503 with an S3 `SlowDown` XML error body (the request is not forwarded)
  "500"         500 with an S3 `InternalError` XML error body (not forwarded)
  "reset_body"  forwarded; the client gets the headers and half the body, then a TCP reset
                (SO_LINGER 0). A response without a body is cut inside its headers instead.
  "reset"       not forwarded; the connection is reset at once
  "delay"       forwarded after `plan.delay` seconds

Besides the plan: `rate` (bytes/s per connection) slows every request and response body, and
`outage()` / `resume()` close and reopen the listening socket (connections refused, open ones
reset), which is what a client sees while the S3 server restarts.

Everything binds to 127.0.0.1. Use as a context manager or call `stop()`.
"""

import collections
import random
import socket
import struct
import threading
import time
import urllib.parse

ERROR_BODIES = {
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": ("500 Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
}
KINDS = ("503", "500", "reset_body", "reset", "delay")


def is_object_path(path):
    """Path-style `/bucket/key...` (a key is present), not a bucket-level request."""
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    return len(parts) == 2 and parts[1] != ""


class FaultPlan:
    """Every `every`-th eligible request (method in `methods`, an object path unless
    `objects_only=False`, after the first `start_after`) gets a fault whose kind is drawn from
    `kinds` by a `random.Random(seed)`, until `max_faults` (None: no limit) were injected."""

    def __init__(self, every=3, kinds=("503", "500", "reset_body"), seed=0, max_faults=20,
                 methods=("GET", "PUT"), objects_only=True, start_after=0, delay=0.5):
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds or every < 1:
            raise ValueError(f"bad fault plan: every={every} kinds={kinds}")
        self.every, self.kinds, self.max_faults = every, tuple(kinds), max_faults
        self.methods, self.objects_only = tuple(methods), objects_only
        self.start_after, self.delay = start_after, delay
        self._rng = random.Random(seed)
        self._seen = 0
        self._injected = 0
        self._lock = threading.Lock()

    def eligible(self, method, path):
        return method in self.methods and (not self.objects_only or is_object_path(path))

    def pick(self, method, path):
        """The fault for this request, or None."""
        if not self.eligible(method, path):
            return None
        with self._lock:
            self._seen += 1
            n = self._seen - self.start_after
            if n <= 0 or n % self.every:
                return None
            if self.max_faults is not None and self._injected >= self.max_faults:
                return None
            self._injected += 1
            return self._rng.choice(self.kinds)


Event = collections.namedtuple("Event", "method path query range fault")


def is_part_upload(e):
    return e.method == "PUT" and "partNumber=" in e.query


def is_ranged_get(e):
    return e.method == "GET" and bool(e.range)


class _Abort(Exception):
    """The client connection is (to be) dropped."""


def _reset(sock):
    """Closes with SO_LINGER 0: the peer gets a TCP RST, not a clean FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _read_head(rfile):
    """The start line and the raw header lines (bytes, CRLF included), or None at EOF."""
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(65537)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _Abort("truncated start line")
    lines = []
    while True:
        h = rfile.readline(65537)
        if not h:
            raise _Abort("EOF in headers")
        if h in (b"\r\n", b"\n"):
            return line, lines
        lines.append(h)


def _header_map(lines):
    m = {}
    for h in lines:
        name, _, value = h.decode("latin-1").partition(":")
        m[name.strip().lower()] = value.strip()
    return m


class _Pace:
    """Keeps a byte stream under `rate` bytes/s (None: unlimited)."""

    def __init__(self, rate):
        self.rate, self.t0, self.n = rate, time.monotonic(), 0

    def tick(self, n):
        if not self.rate:
            return
        self.n += n
        ahead = self.t0 + self.n / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def _read_exact(rfile, n, pace=None, chunk=65536):
    out = bytearray()
    while len(out) < n:
        b = rfile.read(min(chunk, n - len(out)))
        if not b:
            raise _Abort("EOF in body")
        out += b
        if pace:
            pace.tick(len(b))
    return bytes(out)


def _read_chunked_raw(rfile, pace=None):
    """A chunked body with its framing and trailers, byte for byte."""
    out = bytearray()
    while True:
        size_line = rfile.readline(65537)
        if not size_line.endswith(b"\n"):
            raise _Abort("EOF in chunk size")
        out += size_line
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                t = rfile.readline(65537)
                if not t:
                    raise _Abort("EOF in trailers")
                out += t
                if t in (b"\r\n", b"\n"):
                    return bytes(out)
        out += _read_exact(rfile, size + 2, pace)


def _read_body(rfile, headers, pace=None, no_body=False):
    """(raw body, read until EOF?) per RFC 9112 message framing."""
    if no_body:
        return b"", False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked_raw(rfile, pace), False
    if "content-length" in headers:
        return _read_exact(rfile, int(headers["content-length"]), pace), False
    return None, True


class Proxy:
    """See the module docstring. `plan` and `rate` may be changed between or during runs."""

    def __init__(self, upstream, plan=None, rate=None):
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.plan = plan
        self.rate = rate
        self.faults = collections.Counter()
        self.requests = collections.Counter()  # "METHOD object|bucket"
        self.events = []  # one Event per request, in arrival order
        self.statuses = {}  # event index -> HTTP status the client got (absent: none, e.g. a reset)
        self.streamed = 0  # requests with an aws-chunked body (a streamed checksum trailer)
        self.upstream_failures = 0  # requests the upstream refused or dropped (client got a reset)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._conns = set()
        self._stopped = False
        self._want_down = False
        self._is_down = threading.Event()
        self._listener = self._bind(0)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------------

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def injected(self):
        with self._lock:
            return sum(self.faults.values())

    def object_requests(self):
        with self._lock:
            return sum(v for k, v in self.requests.items() if k.endswith(" object"))

    def mark(self):
        """The number of requests seen so far, for `wait_for(..., since=)`."""
        with self._lock:
            return len(self.events)

    def wait_for(self, match, n=1, since=0, timeout=30):
        """Blocks until `n` requests after `since` satisfy `match(event)` (an `Event`: method,
        path, query, range); False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while sum(1 for e in self.events[since:] if match(e)) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def outage(self):
        """Stops listening (new connections are refused) and resets every open connection."""
        self._want_down = True
        self._is_down.wait(5)
        self._drop_all()

    def resume(self):
        """Listens again on the same port."""
        self._want_down = False
        deadline = time.monotonic() + 5
        while self._is_down.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self):
        self._stopped = True
        self._thread.join(5)
        self._drop_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _bind(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        s.settimeout(0.05)
        return s

    def _drop_all(self):
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            except OSError:
                pass
            _reset(c)

    def _accept_loop(self):
        while not self._stopped:
            if self._want_down and self._listener is not None:
                self._listener.close()
                self._listener = None
                self._is_down.set()
            if not self._want_down and self._listener is None:
                try:
                    self._listener = self._bind(self.port)
                    self._is_down.clear()
                except OSError:
                    time.sleep(0.05)
                    continue
            if self._listener is None:
                time.sleep(0.02)
                continue
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                continue
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        if self._listener is not None:
            self._listener.close()

    def _serve(self, conn):
        conn.settimeout(120)
        rfile = conn.makefile("rb")
        up = None
        try:
            while not self._stopped:
                head = _read_head(rfile)
                if head is None:
                    break
                start, lines = head
                method, target, _ = start.decode("latin-1").split(" ", 2)
                headers = _header_map(lines)
                path = urllib.parse.urlsplit(target).path
                scope = "object" if is_object_path(path) else "bucket"
                plan = self.plan
                kind = plan.pick(method, path) if plan else None
                with self._cond:  # counted when the headers arrive, before the body
                    self.requests[f"{method} {scope}"] += 1
                    if kind:
                        self.faults[kind] += 1
                    self.events.append(Event(method, path, urllib.parse.urlsplit(target).query,
                                             headers.get("range"), kind))
                    index = len(self.events) - 1
                    if ("aws-chunked" in headers.get("content-encoding", "")
                            or headers.get("x-amz-content-sha256", "").startswith("STREAMING-")):
                        self.streamed += 1
                    self._cond.notify_all()
                pace = _Pace(self.rate)
                body, _ = _read_body(rfile, headers, pace)
                if body is None:
                    body = b""  # a request without framing has no body
                if kind in ERROR_BODIES:
                    self._status(index, int(kind))
                    conn.sendall(self._error(kind, path))
                    continue
                if kind == "reset":
                    raise _Abort("reset")
                if kind == "delay":
                    time.sleep(plan.delay)
                up, status, resp_lines, resp_body, until_eof = self._forward(up, method, start, lines,
                                                                            body)
                head_bytes = status + b"".join(resp_lines) + b"\r\n"
                self._status(index, int(status.split()[1]))
                if kind == "reset_body":
                    if resp_body:
                        conn.sendall(head_bytes + resp_body[: len(resp_body) // 2])
                    else:
                        conn.sendall(head_bytes[: len(head_bytes) // 2])
                    raise _Abort("reset_body")
                conn.sendall(head_bytes)
                out_pace = _Pace(self.rate)
                for i in range(0, len(resp_body), 65536):
                    piece = resp_body[i:i + 65536]
                    conn.sendall(piece)
                    out_pace.tick(len(piece))
                if until_eof or "close" in headers.get("connection", "").lower():
                    break
        except (_Abort, OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            _reset(conn)  # after a fault or an upstream failure the client sees a reset
            if up is not None:
                up[0].close()

    def _status(self, index, code):
        with self._lock:
            self.statuses[index] = code

    def records(self):
        """(Event, HTTP status or None) per request, in arrival order."""
        with self._lock:
            return [(e, self.statuses.get(i)) for i, e in enumerate(self.events)]

    def _forward(self, up, method, start, lines, body):
        """Sends the request upstream (a fresh connection if a kept-alive one went stale)."""
        for attempt in range(2):
            fresh = up is None
            try:
                if fresh:
                    s = socket.create_connection(self.upstream, timeout=120)
                    up = (s, s.makefile("rb"))
                up[0].sendall(start + b"".join(lines) + b"\r\n" + body)
                head = _read_head(up[1])
                if head is None:
                    raise _Abort("upstream closed")
                status, resp_lines = head
                rh = _header_map(resp_lines)
                code = int(status.split()[1])
                no_body = method == "HEAD" or code in (204, 304) or 100 <= code < 200
                resp_body, until_eof = _read_body(up[1], rh, None, no_body)
                if until_eof:
                    resp_body = up[1].read()
                if until_eof or "close" in rh.get("connection", "").lower():
                    up[0].close()
                    up = None
                return up, status, resp_lines, resp_body, until_eof
            except (_Abort, OSError):
                if up is not None:
                    up[0].close()
                up = None
                if fresh or attempt:
                    break
        with self._lock:
            self.upstream_failures += 1
        raise _Abort("upstream failed")

    def _error(self, kind, path):
        status, code, message = ERROR_BODIES[kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{path}</Resource><RequestId>ferry-fault-proxy</RequestId></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: ferry-fault-proxy\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        return head + body
