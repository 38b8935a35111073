"""An HTTP proxy that makes the tests' S3 server (moto) fail the way a real cloud S3 does.

moto answers every request correctly, so code that only ever talks to it never meets a
`503 SlowDown`, a `500 InternalError` or a connection dropped mid-request, and its retry and
error paths go untested. This proxy sits between the code under test and moto: it forwards
requests untouched, except a seeded share of them (`rate`) and chosen keys or buckets, which it
answers itself with S3's own error responses. The store behind it never sees a fault, so what a
test reads back afterwards is the truth.

    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.rate = 0.10
        ...
        assert proxy.stats()["slow_down"] > 0

Buckets are taken from the path (path-style addressing, which is what clients use for an
endpoint given as an IP address and port).
"""

from __future__ import annotations

import http.client
import random
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

# Headers that describe one hop of the connection, not the request: the proxy speaks for itself on
# each side (RFC 9110, section 7.6.1). `Expect: 100-continue` was already answered to the client.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
CHUNK = 64 * 1024
STAT_NAMES = (
    "forwarded",  # passed to the upstream server and its answer sent back
    "slow_down",  # random 503 SlowDown with S3's XML body
    "internal_error",  # random 500 InternalError with S3's XML body
    "head_500",  # random 500 to a HEAD request, without a body (HEAD answers never have one)
    "dropped",  # random: the connection closed without an answer
    "failed_key",  # a request for a key given to fail_key(), answered with its fault
    "access_denied",  # a request to a bucket given to deny_bucket(): 403 AccessDenied
    "upstream_error",  # the upstream server could not be reached: 502
)


@dataclass(frozen=True)
class S3Error:
    """One of S3's error answers: the HTTP status and the code and message of its XML body."""

    status: int
    code: str
    message: str

    def body(self, request_id: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()


SLOW_DOWN = S3Error(503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = S3Error(500, "InternalError", "We encountered an internal error. Please try again.")
ACCESS_DENIED = S3Error(403, "AccessDenied", "Access Denied")
FAULT_KINDS = {"slow_down": SLOW_DOWN, "internal_error": INTERNAL_ERROR, "dropped": None}


@dataclass(frozen=True)
class Fault:
    """What the proxy does instead of forwarding: answer `error` (None: drop the connection), and
    the counter in stats() it adds to."""

    stat: str
    error: S3Error | None


DROPPED = Fault("dropped", None)
HEAD_500 = Fault("head_500", INTERNAL_ERROR)
ANSWERED_FAULTS = (Fault("slow_down", SLOW_DOWN), Fault("internal_error", INTERNAL_ERROR))
DENIED = Fault("access_denied", ACCESS_DENIED)


def bucket_and_key(path: str) -> tuple[str, str]:
    """('bucket', 'some/key') of a path-style request path; the key URL-decoded, as it is named."""
    bucket, _, key = unquote(urlsplit(path).path).lstrip("/").partition("/")
    return bucket, key


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of `upstream` that injects S3's faults.

    `rate` (settable while it runs) is the share of requests answered with a random fault:
    among those, `drop_share` close the connection without an answer; the others get
    `503 SlowDown` or `500 InternalError` (a HEAD request gets a 500 without a body, as from S3).
    The draws come from one `random.Random(seed)`, so a run whose requests arrive in the same
    order sees the same faults. `fail_key()` and `deny_bucket()` add faults that hit every time.
    """

    def __init__(self, upstream: str, seed: int = 0, rate: float = 0.0, drop_share: float = 0.1):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FaultProxy forwards plain HTTP: upstream {upstream!r} is not http://host:port")
        self.upstream = (parts.hostname, parts.port or 80)
        self.rate = rate
        self.drop_share = drop_share
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._failing_keys: dict[str, Fault] = {}
        self._denied_buckets: set[str] = set()
        self._stats: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint clients use instead of the upstream one, e.g. http://127.0.0.1:40123."""
        if self._server is None:
            raise RuntimeError("FaultProxy has no address until start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        """Listen on a free port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("FaultProxy is already running")
        self._server = _Server(("127.0.0.1", 0), _Handler, proxy=self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the clients' open connections and join every thread."""
        if self._server is None:
            return
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.close_clients()
        self._server.server_close()  # joins the handler threads (non-daemon, see _Server)
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def fail_key(self, *substrings: str, kind: str = "internal_error") -> None:
        """Fail every request whose key contains one of `substrings`, with the fault `kind`
        ('internal_error', 'slow_down' or 'dropped'): a key that never comes back."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fail_key kind {kind!r} is not one of {sorted(FAULT_KINDS)}")
        with self._lock:
            for substring in substrings:
                self._failing_keys[substring] = Fault("failed_key", FAULT_KINDS[kind])

    def deny_bucket(self, *buckets: str) -> None:
        """Answer every request to these buckets with 403 AccessDenied: a permanent fault, such as
        a bucket the credentials may not use."""
        with self._lock:
            self._denied_buckets.update(buckets)

    def clear(self) -> None:
        """Forget the keys of fail_key() and the buckets of deny_bucket(); `rate` stays as set."""
        with self._lock:
            self._failing_keys.clear()
            self._denied_buckets.clear()

    def stats(self) -> dict[str, int]:
        """How many requests were forwarded and how many faults of each kind were injected (every
        name in STAT_NAMES, zero included, so a test can index it directly)."""
        with self._lock:
            return {name: self._stats[name] for name in STAT_NAMES}

    def count(self, stat: str) -> int:
        """Add one to a counter of stats(); returns the running total of injected faults and
        forwarded requests, which numbers the request ids of the error answers."""
        with self._lock:
            self._stats[stat] += 1
            return self._stats.total()

    def decide(self, method: str, path: str) -> Fault | None:
        """The fault this request gets, or None to forward it. Targeted faults come first and do
        not use up random draws, so they leave the seeded sequence of the others unchanged."""
        bucket, key = bucket_and_key(path)
        with self._lock:
            if bucket in self._denied_buckets:
                return DENIED
            for substring, fault in self._failing_keys.items():
                if key and substring in key:
                    return fault
            if self._random.random() >= self.rate:
                return None
            if self._random.random() < self.drop_share:
                return DROPPED
            if method == "HEAD":
                return HEAD_500
            return self._random.choice(ANSWERED_FAULTS)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that can be stopped without leaking a thread: handler threads are not
    daemons, so server_close() joins them, and it tracks its clients' sockets, so close_clients()
    can end handlers that wait on an idle keep-alive connection."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address, handler, proxy: FaultProxy):
        super().__init__(address, handler)
        self.proxy = proxy
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._clients_lock:
            self._clients.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._clients_lock:
            self._clients.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (or one that stop() cut off) is no error of the proxy;
        anything else is printed, as the base class does."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_clients(self) -> None:
        with self._clients_lock:
            clients = list(self._clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the handler's next read sees the end and returns
            except OSError:
                pass  # already closed by the client


class _Handler(BaseHTTPRequestHandler):
    """One client connection: each request is answered with a fault or forwarded upstream."""

    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall between
    timeout = 60  # an idle client connection ends after this, so its thread does too
    server: _Server

    def serve_request(self) -> None:
        body = self.read_body()  # read even when failing, so the next request on the connection parses
        fault = self.server.proxy.decide(self.command, self.path)
        if fault is None:
            self.forward(body)
        elif fault.error is None:
            self.server.proxy.count(fault.stat)
            self.drop()
        else:
            request_number = self.server.proxy.count(fault.stat)
            self.answer_error(fault.error, f"FAULTPROXY{request_number:08X}")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = serve_request

    def read_body(self) -> bytes:
        """The request's body, whether sent with a Content-Length or in chunks."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def read_chunked(self) -> bytes:
        parts = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailer fields, if any
        return b"".join(parts)

    def forward(self, body: bytes) -> None:
        """Send the request upstream as it came and stream the answer back."""
        # A fresh connection per request: a kept-alive one may have been closed by the server
        # meanwhile, and retrying a request the proxy cannot tell was sent is not its call.
        upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            try:
                response = self.send_upstream(upstream, body)
            except OSError as error:  # includes http.client's errors for a closed connection
                self.server.proxy.count("upstream_error")
                self.answer_error(S3Error(502, "BadGateway", f"fault proxy: upstream failed: {error}"), "")
                self.close_connection = True
                return
            self.relay(response)
        finally:
            upstream.close()
        self.server.proxy.count("forwarded")

    def send_upstream(self, upstream: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
        """The request as it came, Host header included: the client signed it (SigV4) for the
        proxy's address, and the signature holds only if the server sees that same Host."""
        upstream.connect()
        upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                upstream.putheader(name, value)
        if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            upstream.putheader("Content-Length", str(len(body)))  # a chunked body goes on with a length
        upstream.endheaders(body)
        return upstream.getresponse()

    def relay(self, response: http.client.HTTPResponse) -> None:
        """Send back the upstream answer: status, headers and body. A HEAD answer keeps the
        upstream Content-Length (the size of the object), though no body follows it."""
        self.send_response_only(response.status, response.reason)
        headers = [(name, value) for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP]
        has_body = self.command != "HEAD" and response.status not in (204, 304) and response.status >= 200
        length = response.getheader("Content-Length")
        if has_body and length is None:  # chunked or ended by a close: buffered and sent with a length
            body = response.read()
            headers.append(("Content-Length", str(len(body))))
            self.send_headers(headers)
            self.wfile.write(body)
            return
        self.send_headers(headers)
        while has_body and (chunk := response.read(CHUNK)):
            self.wfile.write(chunk)

    def send_headers(self, headers: list[tuple[str, str]]) -> None:
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def answer_error(self, error: S3Error, request_id: str) -> None:
        """S3's error answer; to a HEAD request without a body, as S3 sends it."""
        body = b"" if self.command == "HEAD" else error.body(request_id)
        self.send_response_only(error.status, error.code)
        self.send_headers(
            [
                ("Content-Type", "application/xml"),
                ("Content-Length", str(len(body))),
                ("x-amz-request-id", request_id),
            ]
        )
        self.wfile.write(body)

    def drop(self) -> None:
        """Close the connection without a word, as a lost network path or a crashed front end."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client left first

    def log_message(self, format, *args) -> None:
        pass  # one stderr line per request otherwise
