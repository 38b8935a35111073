"""Every path cg_ray reads or writes is resolved here: a local path or a URI (s3://bucket/key).

S3 goes through pyarrow's S3 filesystem, configured by the standard AWS environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL), so any S3-compatible
store works.
"""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache

import pyarrow.fs as pafs

from cg_ray.errors import UserError


def is_uri(path: str) -> bool:
    return "://" in str(path)


@lru_cache(maxsize=16)
def _s3(endpoint: str | None, region: str | None, keys: tuple | None = None) -> pafs.S3FileSystem:
    # Keys from the environment are given explicitly, so the filesystem object carries them when
    # it is pickled to another process (Ray Train workers); without them the SDK's own chain
    # (instance roles, config files) applies wherever the filesystem is used.
    kwargs = dict(zip(("access_key", "secret_key", "session_token"), keys)) if keys else {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


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


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    fs, p = filesystem(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def list_dir(path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries under a directory (FileInfo with .path, .base_name, .type), sorted by path."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True))
    return sorted(infos, key=lambda info: info.path)


def uri_of(path: str, inner: str) -> str:
    """The user-facing location of `inner`, a path inside the filesystem of `path`."""
    if str(path).startswith("s3://"):
        return "s3://" + inner
    return inner


def ray_storage(path: str) -> tuple[pafs.FileSystem | None, str]:
    """(storage_filesystem, storage_path) for ray.train.RunConfig: for s3:// our own S3
    filesystem (endpoint, region and keys from the AWS environment variables) and the path inside
    it; otherwise (None, path) and Ray resolves it."""
    if str(path).startswith("s3://"):
        return filesystem(path)
    return None, path


def download(uri: str, local_dir: str) -> str:
    """Copy a file or a folder at `uri` into local_dir; returns the local path of the copy."""
    fs, inner = filesystem(uri)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"'{uri}' does not exist")
    target = os.path.join(local_dir, posixpath.basename(inner.rstrip("/")) or "download")
    if info.type == pafs.FileType.Directory:
        os.makedirs(target, exist_ok=True)
        pafs.copy_files(inner, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        with fs.open_input_stream(inner) as src, open(target, "wb") as dst:
            dst.write(src.read())
    return target
