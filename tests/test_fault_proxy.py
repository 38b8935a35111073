"""The fault proxy itself (tests/fault_proxy.py): it forwards S3 requests untouched, injects S3's
faults at the rate and on the keys and buckets it is told, and stops without leaving a thread.
No Ray: pyarrow's and boto3's S3 clients against the tests' moto server, through the proxy."""

import http.client
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fault_proxy import FaultProxy
from pyarrow import fs

# What pyarrow (its AWS SDK) says for each fault, as seen in these tests ("When reading
# information for key 'k' in bucket 'b': " before each). A HEAD answer has no body, so the SDK
# knows only the HTTP status: a 503 to HEAD reads "UNKNOWN (HTTP status 503)", a 403 "ACCESS_DENIED".
#   503 SlowDown:        AWS Error SLOW_DOWN during CreateMultipartUpload operation: Please reduce
#                        your request rate. (Request ID: FAULTPROXY00000009)
#   500 InternalError:   AWS Error INTERNAL_FAILURE during ...: We encountered an internal error. ...
#   500 to HEAD:         AWS Error UNKNOWN (HTTP status 500) during HeadObject operation: No response body.
#   dropped connection:  AWS Error NETWORK_CONNECTION during ...: curlCode: 52, Server returned nothing
#                        (no headers, no data); Details: Empty reply from server
#   403 AccessDenied:    AWS Error ACCESS_DENIED during ListObjectsV2 operation: Access Denied
# A 503 or 500 to a GetObject often reads without its message, as if the SDK never parsed the XML
# (the same bytes as when it does): "AWS Error SERVICE_UNAVAILABLE during GetObject operation: ".
# An error answer to a GET for fewer bytes than its XML body (objects under ~200 bytes) does not fit
# pyarrow's buffer: "AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response
# stream (eof: 0, bad: 1)", and the SDK does not retry that. So the objects here are 1 kB.
TRANSIENT = re.compile(
    r"SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|UNKNOWN \(HTTP status 50[03]\)|NETWORK_CONNECTION"
)
RANDOM_FAULTS = {"slow_down", "internal_error", "head_500", "dropped"}  # the kinds `rate` draws


def s3_through(proxy: FaultProxy, attempts: int) -> fs.S3FileSystem:
    """pyarrow's S3 client aimed at the proxy, trying each request `attempts` times."""
    return fs.S3FileSystem(
        endpoint_override=urlsplit(proxy.url).netloc,
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=attempts),
    )


def write(s3fs: fs.S3FileSystem, path: str, data: bytes) -> None:
    with s3fs.open_output_stream(path) as out:
        out.write(data)


def read(s3fs: fs.S3FileSystem, path: str) -> bytes:
    with s3fs.open_input_stream(path) as stream:
        return stream.read()


@pytest.fixture
def proxy():
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], seed=1) as running:
        yield running


def test_objects_pass_through_unchanged(s3, proxy):
    bucket = s3().removeprefix("s3://")
    s3fs = s3_through(proxy, attempts=1)
    payloads = {f"{bucket}/clips/{i}.bin": os.urandom(1000 * i + 1) for i in range(5)}
    for path, data in payloads.items():
        write(s3fs, path, data)

    for path, data in payloads.items():
        assert read(s3fs, path) == data
        assert s3fs.get_file_info(path).size == len(data)  # a HEAD answer keeps its Content-Length
    listed = s3fs.get_file_info(fs.FileSelector(f"{bucket}/clips"))
    assert sorted(info.path for info in listed) == sorted(payloads)

    # boto3 signs its own way; moto accepts either, the signature itself is checked further down
    client = boto3.client("s3", endpoint_url=proxy.url)
    assert (
        client.get_object(Bucket=bucket, Key="clips/3.bin")["Body"].read()
        == payloads[f"{bucket}/clips/3.bin"]
    )
    stats = proxy.stats()
    assert stats["forwarded"] > 20 and sum(stats.values()) == stats["forwarded"]


def test_random_faults_are_retried_until_they_pass(s3, proxy):
    bucket = s3().removeprefix("s3://")
    proxy.rate, proxy.drop_share = 0.15, 0.2
    # 1 kB each: an error answer to a read smaller than its XML body is not retried (see above)
    payloads = {f"{bucket}/many/{i:02d}.txt": f"object {i:02d}\n".encode() * 100 for i in range(50)}
    # A client per object, all built before the first request: pyarrow's SDK grants one
    # S3FileSystem 100 retries in its lifetime (a quota of 500, 5 per retry, not refilled by
    # successes), and 50 objects at 0.3 needed about 150. Building a client waits for every S3
    # call in flight in the process (pyarrow's S3ClientFinalizer lock), retries' back-off included.
    clients = {path: s3_through(proxy, attempts=10) for path in payloads}

    # In parallel: a retry waits up to 1, 2, 4, ... s (the SDK backs off at random), which one
    # object after another added up to a minute. The slowest object still sets the pace.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda item: write(clients[item[0]], *item), payloads.items()))
        listed = s3_through(proxy, attempts=10).get_file_info(fs.FileSelector(f"{bucket}/many"))
        sizes = dict(pool.map(lambda path: (path, clients[path].get_file_info(path).size), payloads))
        contents = dict(pool.map(lambda path: (path, read(clients[path], path)), payloads))

    assert sorted(info.path for info in listed) == sorted(payloads)
    assert sizes == {path: len(data) for path, data in payloads.items()}
    assert contents == payloads
    stats = proxy.stats()
    assert all(stats[kind] > 0 for kind in RANDOM_FAULTS), stats


def test_without_retries_a_fault_reaches_the_caller(s3, proxy):
    bucket = s3().removeprefix("s3://")
    s3fs = s3_through(proxy, attempts=1)
    for i in range(20):
        write(s3fs, f"{bucket}/once/{i}", b"x" * 1000)
    proxy.rate = 0.3

    errors = []
    for i in range(20):
        try:
            read(s3fs, f"{bucket}/once/{i}")
        except OSError as error:
            errors.append(str(error))
    # e.g. "When reading information for key 'once/4' in bucket 'cg-ray-test-2': AWS Error
    # UNKNOWN (HTTP status 500) during HeadObject operation: No response body."
    assert errors and all(TRANSIENT.search(error) for error in errors), errors


def test_a_failing_key_fails_every_time_and_others_do_not(s3, proxy):
    bucket = s3().removeprefix("s3://")
    s3fs = s3_through(proxy, attempts=2)
    for frame in ("4.jpg", "5.jpg"):
        write(s3fs, f"{bucket}/clip_0003/{frame}", frame.encode())
    proxy.fail_key("clip_0003/5.jpg")

    for _ in range(3):
        with pytest.raises(OSError, match=r"key 'clip_0003/5.jpg'.*UNKNOWN \(HTTP status 500\)"):
            read(s3fs, f"{bucket}/clip_0003/5.jpg")
        assert read(s3fs, f"{bucket}/clip_0003/4.jpg") == b"4.jpg"
    assert proxy.stats()["failed_key"] == 3 * 2  # every attempt of every read

    proxy.clear()
    assert read(s3fs, f"{bucket}/clip_0003/5.jpg") == b"5.jpg"


def test_a_denied_bucket_fails_fast(s3, proxy):
    denied, allowed = s3().removeprefix("s3://"), s3().removeprefix("s3://")
    proxy.deny_bucket(denied)
    s3fs = s3_through(proxy, attempts=10)

    started = time.monotonic()
    with pytest.raises(OSError, match="ACCESS_DENIED during ListObjectsV2 operation: Access Denied"):
        s3fs.get_file_info(fs.FileSelector(denied))
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        write(s3fs, f"{denied}/a", b"a")
    assert time.monotonic() - started < 2  # a permanent fault is not retried
    assert proxy.stats()["access_denied"] == 2

    write(s3fs, f"{allowed}/a", b"a")
    assert read(s3fs, f"{allowed}/a") == b"a"


def test_same_seed_same_faults():
    def faults(seed: int) -> list:
        proxy = FaultProxy("http://127.0.0.1:9", seed=seed, rate=0.3)  # decide() needs no server
        return [proxy.decide(method, f"/b/k{i}") for i in range(200) for method in ("GET", "HEAD")]

    assert faults(1) == faults(1) != faults(2)
    assert {fault.stat for fault in faults(1) if fault} == RANDOM_FAULTS


class Recorder(BaseHTTPRequestHandler):
    """An upstream that keeps what reaches it; every object holds the same 10 bytes."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}  # clients differ in case
        self.seen.append((self.command, self.path, headers, body))
        self.send_response(200)
        # HEAD tells the length a GET sends; other answers have no body (a body on a 200 to a
        # PUT is S3's way to report an error inside a success, botocore would see a 500)
        self.send_header("Content-Length", "10" if self.command in ("GET", "HEAD") else "0")
        self.send_header("Last-Modified", "Mon, 02 Mar 2026 10:00:00 GMT")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(b"0123456789")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    Recorder.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.seen
    server.shutdown()
    server.server_close()
    thread.join()


def signature_holds(method: str, path: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether a request's SigV4 signature is right for what arrived (as S3 would check it);
    `headers` with lower-case names."""
    authorization = headers["authorization"]
    signed = re.search(r"SignedHeaders=([^,]+)", authorization).group(1).split(";")
    request = AWSRequest(
        method, f"http://{headers['host']}{path}", {name: headers[name] for name in signed}, body
    )
    request.context["timestamp"] = headers["x-amz-date"]
    auth = S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1")
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return authorization.endswith(f"Signature={signature}")


def test_requests_arrive_as_signed(recorder):
    upstream, seen = recorder
    with FaultProxy(upstream) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url)
        client.put_object(Bucket="bucket", Key="a b/c.txt", Body=b"payload", Metadata={"clip": "3"})
        client.get_object(Bucket="bucket", Key="a b/c.txt", VersionId="v 1", ResponseContentType="text/css")
        assert client.head_object(Bucket="bucket", Key="a b/c.txt")["ContentLength"] == 10
        s3fs = s3_through(proxy, attempts=1)
        assert s3fs.get_file_info("bucket/clip.bin").size == 10
        assert read(s3fs, "bucket/clip.bin") == b"0123456789"
        client.delete_object(Bucket="bucket", Key="a b/c.txt")
        host = urlsplit(proxy.url).netloc

    # boto3: PUT, GET, HEAD; pyarrow: HEAD for the size, HEAD and GET for the read; boto3: DELETE
    assert [method for method, *_ in seen] == ["PUT", "GET", "HEAD", "HEAD", "HEAD", "GET", "DELETE"]
    assert seen[0][3] == b"payload" and seen[0][2]["x-amz-meta-clip"] == "3"
    assert seen[1][1] == "/bucket/a%20b/c.txt?versionId=v%201&response-content-type=text%2Fcss"
    for method, path, headers, body in seen:
        assert headers["host"] == host
        assert signature_holds(method, path, headers, body), (method, path)


def test_a_chunked_request_body_is_sent_on_whole(recorder):
    upstream, seen = recorder
    with FaultProxy(upstream) as proxy:
        connection = http.client.HTTPConnection(urlsplit(proxy.url).netloc)
        connection.request("PUT", "/bucket/key", body=iter([b"first ", b"second"]), encode_chunked=True)
        assert connection.getresponse().status == 200
        connection.close()
    assert seen[0][3] == b"first second" and seen[0][2]["content-length"] == "12"


def test_an_unreachable_upstream_is_a_502():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with FaultProxy(nowhere) as proxy:
        connection = http.client.HTTPConnection(urlsplit(proxy.url).netloc)
        connection.request("GET", "/bucket/key")
        assert connection.getresponse().status == 502
        connection.close()
        assert proxy.stats()["upstream_error"] == 1


def test_stop_leaves_no_thread_and_no_listener(s3):
    bucket = s3().removeprefix("s3://")
    before = set(threading.enumerate())
    proxy = FaultProxy(os.environ["AWS_ENDPOINT_URL"]).start()
    url = proxy.url
    s3fs = s3_through(proxy, attempts=1)  # keeps its connections open, each held by a thread
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: write(s3fs, f"{bucket}/t/{i}", b"x"), range(8)))
    assert len(threading.enumerate()) > len(before) + 1  # the listener and some client's handler

    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(urlsplit(url).netloc).connect()
