"""What the endpoint accepts: one clip per POST /predict, turned into a source that
cg_ray.data.decode reads (a file or a frames folder in a temporary folder, or a URI).

    multipart/form-data   the file in field `video` (what a browser's form sends)
    video/*, raw bytes    the body is the video file
    application/zip       the body is a zip of a frames folder (JPEG/PNG frames)
    application/json      {"uri": "s3://bucket/clip.mp4"} (local paths with --allow-local-paths)

Every refusal is a RequestError: an HTTP status and a one-line message that names the problem and
what to send instead. Nothing here imports Ray: the same code runs in the Serve replica and in
unit tests.
"""

from __future__ import annotations

import hmac
import json
import os
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cg_ray.data.decode import frame_sort_key, is_frame_name
from cg_ray.errors import UserError

HOW = (
    "send the clip as multipart field 'video', as raw bytes with a video content type, as a "
    'zip of its frames, or as JSON {"uri": "s3://..."}'
)
MAX_ZIP_MEMBERS = 10_000


class RequestError(UserError):
    """A request the endpoint refuses: `status` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A request's clip: `source` for decode_clip, `name` for the answer's `input` field."""

    source: str
    name: str


def check_token(authorization: str | None, token: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer TOKEN` (when a token is set)."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise RequestError(
            401,
            "this endpoint needs the header 'Authorization: Bearer TOKEN' (the token given to cg-ray serve)",
        )


def too_large(limit: int) -> RequestError:
    return RequestError(
        413,
        f"the upload is larger than the server's limit of "
        f"{limit / 2**20:g} MB (cg-ray serve --max-upload-mb)",
    )


def check_length(content_length: str | None, limit: int) -> None:
    """Refuse a body announced as too large before reading any of it."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise too_large(limit)


async def capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, refusing it (413) as soon as it passes `limit` bytes."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        yield chunk


# Container signatures: (offset, bytes). Anything else that PyAV reads is still tried when the
# client says it is a video; what is neither is refused as not a video.
SIGNATURES = [
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # AVI, Ogg, FLV, MPEG-PS
    (0, b"\x00\x00\x01\xb3"),
    (0, b"\x30\x26\xb2\x75"),
]  # MPEG-1, ASF
ZIP_MAGIC = b"PK\x03\x04"


def sniff(head: bytes) -> str:
    """'zip', 'video' (a known container), 'text', or 'unknown' from a body's first bytes."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if any(head[offset : offset + len(magic)] == magic for offset, magic in SIGNATURES):
        return "video"
    if len(head) > 188 and head[0] == head[188] == 0x47:  # MPEG-TS: a sync byte every 188
        return "video"
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return "text" if text and printable >= 0.95 * len(text) else "unknown"


def classify(head: bytes, content_type: str, name: str) -> str:
    """'zip' or 'video' for a body worth decoding; 415 for text and for bytes that are neither
    a known container nor declared as video."""
    kind = sniff(head)
    if not head:
        raise RequestError(400, f"the upload '{name}' is empty: {HOW}")
    if kind in ("zip", "video"):
        return kind
    declared = content_type.split(";")[0].strip().lower()
    if kind == "unknown" and declared.startswith("video/"):
        return "video"  # a container we do not know by its first bytes: let the decoder judge
    what = "text" if kind == "text" else f"'{declared or 'no content type'}' data"
    raise RequestError(415, f"'{name}' is not a video (it looks like {what}): {HOW}")


def safe_name(name: str | None, default: str = "upload") -> str:
    """A file name from a client, reduced to its last part and harmless characters."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in base).lstrip(".")
    return cleaned[:120] or default


def extract_frames(path: str, folder: str, limit: int, name: str) -> str:
    """Unpack the JPEG/PNG frames of a zip into `folder` (flat: the zip's folders are dropped,
    nothing lands outside it); 413 when they would unpack to more than `limit` bytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir()
                and is_frame_name(m.filename)
                and not os.path.basename(m.filename).startswith(".")
            ]
            if len(members) > MAX_ZIP_MEMBERS:
                raise RequestError(
                    413, f"the zip '{name}' holds {len(members)} frames, more than {MAX_ZIP_MEMBERS}"
                )
            if sum(m.file_size for m in members) > limit:
                raise RequestError(
                    413,
                    f"the frames in the zip '{name}' unpack to more than the "
                    f"server's limit of {limit / 2**20:g} MB",
                )
            os.makedirs(folder, exist_ok=True)
            seen: set[str] = set()
            for member in sorted(members, key=lambda m: frame_sort_key(m.filename)):
                base = safe_name(member.filename)
                if base in seen:
                    raise RequestError(
                        422, f"the zip '{name}' has two frames named '{base}' (zip one clip's frames folder)"
                    )
                seen.add(base)
                with archive.open(member) as src, open(os.path.join(folder, base), "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
    except zipfile.BadZipFile as exc:
        raise RequestError(422, f"cannot read the zip '{name}': {exc}") from None
    if not seen:
        raise RequestError(422, f"the zip '{name}' has no frames (.jpg/.jpeg/.png files)")
    return folder


def materialize(path: str, head: bytes, content_type: str, name: str, workdir: str, limit: int) -> Upload:
    """A body saved at `path` -> the Upload to decode (a zip becomes a frames folder)."""
    if classify(head, content_type, name) == "zip":
        return Upload(extract_frames(path, os.path.join(workdir, "frames"), limit, name), name)
    return Upload(path, name)


def uri_upload(body: bytes, allow_local: bool) -> Upload:
    """A JSON body {"uri": ...} -> the Upload of that URI (400 when malformed, 403 for a local
    path unless the server allows them)."""
    from cg_ray import storage

    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise RequestError(400, f"the JSON body does not parse ({exc}): {HOW}") from None
    uri = data.get("uri") if isinstance(data, dict) else None
    if not isinstance(uri, str) or not uri.strip():
        raise RequestError(400, f"the JSON body has no 'uri' field: {HOW}")
    uri = uri.strip()
    local = not storage.is_uri(uri) or uri.startswith("file://")
    if local and not allow_local:
        raise RequestError(
            403,
            f"'{uri}' is a path on the server; this server reads only object "
            f"store URIs (s3://, gs://); start it with --allow-local-paths "
            f"to read its own files",
        )
    return Upload(uri, uri)


def public_message(message: str, upload: Upload, workdir: str | None) -> str:
    """A decode error with the server's temporary paths replaced by the client's file name."""
    if workdir:
        message = message.replace(upload.source, upload.name).replace(workdir, upload.name)
    return message
