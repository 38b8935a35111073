"""Every path cg_ray reads or writes is resolved here: a local path or a URI (s3://bucket/key).

S3 goes through pyarrow's S3 filesystem, configured by the standard AWS environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL), so any S3-compatible
store works.

Object stores fail in ordinary ways, and cg_ray tells three outcomes apart (cg_ray.storage_errors
names them): a transient fault (throttling, 5xx, a dropped connection, a timeout) is retried by
one policy, exponential back-off for $CG_RAY_STORAGE_MAX_ATTEMPTS attempts (default 12) in every
process; when those run out it is StorageUnavailable. The SDK's default strategy does the
retrying (waits doubling from 50 ms; not the "standard" one, whose retry quota runs dry under
sustained throttling and then stops retrying at all: measured at 30% faults). A permanent
fault (access denied, no such bucket or key, bad credentials) is StorageError at once.
Neither is ever a bad clip.
"""

from __future__ import annotations

import os
import posixpath
import random
import time
from contextlib import contextmanager
from functools import lru_cache

import pyarrow as pa
import pyarrow.fs as pafs

from cg_ray.errors import UserError
from cg_ray.storage_errors import (
    ATTEMPTS_ENV,
    DEFAULT_ATTEMPTS,
    ObjectMissing,
    StorageError,
    StorageUnavailable,
    classify,
)

__all__ = ["ObjectMissing", "StorageError", "StorageUnavailable"]


def max_attempts() -> int:
    """Attempts per object-storage request: $CG_RAY_STORAGE_MAX_ATTEMPTS, else 12."""
    value = os.environ.get(ATTEMPTS_ENV, "")
    if not value:
        return DEFAULT_ATTEMPTS
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"${ATTEMPTS_ENV}={value!r} must be a whole number of attempts, 1 or more")
    return int(value)


def use_policy(attempts: int) -> None:
    """Make `attempts` the policy of this process and of every Ray process it starts later
    (cg_ray.ray_env passes the variable on to them)."""
    if attempts < 1:
        raise UserError(f"storage.max_attempts must be 1 or more, got {attempts}")
    if os.environ.get(ATTEMPTS_ENV) != str(attempts):
        os.environ[ATTEMPTS_ENV] = str(attempts)
        _s3.cache_clear()


def is_uri(path: str) -> bool:
    return "://" in str(path)


class RetryingS3(pafs.FileSystemHandler):
    """An S3 filesystem that keeps cg_ray's retry policy wherever it is unpickled.

    pyarrow's S3FileSystem drops its retry strategy when pickled (pyarrow 25: `__reduce__`
    carries endpoint, region and keys but not the strategy), so one built here and shipped to a
    Ray Data task or to Ray Train's checkpoint upload would fall back to 3 attempts. This
    handler pickles its settings only and builds the filesystem where it is used, with the
    policy of that process. Streams are pyarrow's own: reads and writes cost no Python.
    """

    def __init__(self, options: dict):
        self.options = options
        self._fs: pafs.S3FileSystem | None = None

    def __reduce__(self):
        return type(self), (self.options,)

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            # The default strategy's max_attempts counts retries, after the first request.
            retry = pafs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts() - 1)
            self._fs = pafs.S3FileSystem(**self.options, retry_strategy=retry)
        return self._fs

    def get_type_name(self):
        return "cg_ray+s3"

    def equals(self, other):
        return isinstance(other, RetryingS3) and other.options == self.options

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return pa.PythonFile(RetryingReader(self.fs, path), mode="r")

    def open_input_file(self, path):
        return pa.PythonFile(RetryingReader(self.fs, path), mode="r")

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


# A read whose error body (SlowDown, InternalError XML) is larger than the bytes it asked for:
# the SDK writes that body into the read's fixed buffer, fails with "Failed to flush response
# stream" and does not retry it. Every Parquet footer read and every small object meets this
# under throttling, so such reads are retried here, with the same budget.
UNRETRIED_BY_SDK = ("Failed to flush response stream",)


def backoff(attempt: int, cap: float = 20.0) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): exponential with full jitter."""
    return random.uniform(0, min(cap, 0.1 * 2**attempt))


class RetryingReader:
    """A file object over one S3 object whose reads are retried where the SDK gives up at once
    (see UNRETRIED_BY_SDK); wrapped in pyarrow.PythonFile, so Parquet and every other reader
    take it as a random-access file."""

    def __init__(self, fs: pafs.S3FileSystem, path: str):
        self.fs, self.path, self.position, self.closed = fs, path, 0, False
        self._file = fs.open_input_file(path)  # a HEAD: errors here are the SDK's to retry

    def read(self, size: int = -1) -> bytes:
        attempts = max_attempts()
        for attempt in range(1, attempts + 1):
            try:
                self._file.seek(self.position)
                data = self._file.read() if size is None or size < 0 else self._file.read(size)
                break
            except OSError as exc:
                if attempt == attempts or not any(gap in str(exc) for gap in UNRETRIED_BY_SDK):
                    raise
                time.sleep(backoff(attempt))
                self._file = self.fs.open_input_file(self.path)
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self._file.size()}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def size(self) -> int:
        return self._file.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()
        self.closed = True


@lru_cache(maxsize=16)
def _s3(endpoint: str | None, region: str | None, keys: tuple | None = None) -> pafs.FileSystem:
    # Keys from the environment are given explicitly, so the filesystem object carries them when
    # it is pickled to another process (Ray Train workers); without them the SDK's own chain
    # (instance roles, config files) applies wherever the filesystem is used.
    options = dict(zip(("access_key", "secret_key", "session_token"), keys)) if keys else {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if region:
        options["region"] = region
    return pafs.PyFileSystem(RetryingS3(options))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    path = str(path)
    if path.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        keys = None
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            keys = (
                os.environ["AWS_ACCESS_KEY_ID"],
                os.environ["AWS_SECRET_ACCESS_KEY"],
                os.environ.get("AWS_SESSION_TOKEN"),
            )
        return _s3(endpoint, region, keys), path[len("s3://") :].rstrip("/")
    if is_uri(path) and not path.startswith("file://"):
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as exc:  # pyarrow raises several types for unknown schemes
            raise UserError(f"cannot open '{path}': {exc}") from None
    if path.startswith("file://"):
        path = path[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return os.path.join(base, *parts)


@contextmanager
def errors_named(path: str):
    """Turn an OSError from the filesystem into the storage error it stands for (naming
    `path`): StorageUnavailable once the retries are spent, else StorageError."""
    try:
        yield
    except OSError as exc:
        raise classify(exc, str(path), max_attempts()) from None


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    with errors_named(path):
        return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    with errors_named(path):
        return fs.get_file_info(p).type == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with errors_named(path), fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    fs, p = filesystem(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    with errors_named(path):
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def list_dir(path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries under a directory (FileInfo with .path, .base_name, .type), sorted by path."""
    fs, p = filesystem(path)
    with errors_named(path):
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True))
    return sorted(infos, key=lambda info: info.path)


def why_missing(path: str) -> str:
    """For a path that does not exist: ': no such bucket ...' when its bucket is what is
    missing (an S3 listing of a missing bucket is merely empty), else ''."""
    if not str(path).startswith("s3://"):
        return ""
    fs, inner = filesystem(path)
    bucket = inner.split("/", 1)[0]
    with errors_named(f"s3://{bucket}"):
        if fs.get_file_info(bucket).type != pafs.FileType.NotFound:
            return ""
    return (
        f": no such bucket '{bucket}' at {os.environ.get('AWS_ENDPOINT_URL') or 'AWS'}; check the "
        f"name, AWS_ENDPOINT_URL and AWS_REGION"
    )


def uri_of(path: str, inner: str) -> str:
    """The user-facing location of `inner`, a path inside the filesystem of `path`."""
    if str(path).startswith("s3://"):
        return "s3://" + inner
    return inner


def ray_storage(path: str) -> tuple[pafs.FileSystem | None, str]:
    """(storage_filesystem, storage_path) for ray.train.RunConfig: for s3:// our own S3
    filesystem (endpoint, region and keys from the AWS environment variables, the retry policy
    rebuilt in every process that unpickles it) and the path inside it; otherwise (None, path)
    and Ray resolves it."""
    if str(path).startswith("s3://"):
        return filesystem(path)
    return None, path


def download(uri: str, local_dir: str) -> str:
    """Copy a file or a folder at `uri` into local_dir; returns the local path of the copy."""
    fs, inner = filesystem(uri)
    with errors_named(uri):
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"'{uri}' does not exist")
        target = os.path.join(local_dir, posixpath.basename(inner.rstrip("/")) or "download")
        if info.type == pafs.FileType.Directory:
            os.makedirs(target, exist_ok=True)
            pafs.copy_files(
                inner, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
            )
        else:
            with fs.open_input_stream(inner) as src, open(target, "wb") as dst:
                dst.write(src.read())
    return target
