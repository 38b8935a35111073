"""What an object-storage error means: a fault to retry, or one that no retry can mend.

pyarrow reports S3 errors as OSError with the SDK's error name in the text ("AWS Error SLOW_DOWN
during GetObject operation: Please reduce your request rate."; a 500 to a HEAD request has no
body and reads "AWS Error UNKNOWN (HTTP status 500)"). The SDK has already retried the transient
ones by the time such an error reaches us, so here it only gets a name and a sentence on what to
do. Bad data (a clip that is there but does not decode) is never decided here: that is
cg_ray.data.decode's ClipError.
"""

from __future__ import annotations

import re

from cg_ray.errors import UserError

# The retry policy's one setting, read by every process that touches object storage (Ray passes
# it on to its workers: cg_ray.ray_env). Kept here, free of pyarrow, so the config can show it.
ATTEMPTS_ENV = "CG_RAY_STORAGE_MAX_ATTEMPTS"
DEFAULT_ATTEMPTS = 12

# Retried by the SDK (and by Ray Data for its own reads); still failing after the whole budget.
TRANSIENT = (
    "SLOW_DOWN",
    "THROTTLING",
    "INTERNAL_FAILURE",
    "SERVICE_UNAVAILABLE",
    "NETWORK_CONNECTION",
    "REQUEST_TIMEOUT",
    "HTTP status 5",
    "HTTP status 429",
    "HTTP status 408",
    "curlCode",
    "Connection reset",
    "Broken pipe",
    "timed out",
)

# (marker in the SDK's message, what it means, what to do)
PERMANENT = (
    ("NO_SUCH_BUCKET", "no such bucket", "check the bucket name, AWS_ENDPOINT_URL and AWS_REGION"),
    (
        "ACCESS_DENIED",
        "access denied",
        "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, the instance role) and the bucket's policy",
    ),
    ("HTTP status 403", "access denied", "check the credentials and the bucket's policy"),
    ("INVALID_ACCESS_KEY_ID", "the access key is not known to the store", "check AWS_ACCESS_KEY_ID"),
    ("SIGNATURE_DOES_NOT_MATCH", "the request signature was refused", "check AWS_SECRET_ACCESS_KEY"),
    ("INVALID_SIGNATURE", "the request signature was refused", "check AWS_SECRET_ACCESS_KEY"),
    ("MISSING_AUTHENTICATION_TOKEN", "no credentials were sent", "set AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY"),
    ("REQUEST_EXPIRED", "the credentials have expired", "refresh the session token"),
)
MISSING = ("NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "HTTP status 404", "Path does not exist")


class StorageError(UserError):
    """A permanent storage error (denied, no such bucket or object, bad credentials): retrying
    cannot help, so the command stops at once with one line naming the object and what to do."""


class ObjectMissing(StorageError):
    """A path that does not exist in the store (where a listing or a manifest said it would)."""


class StorageUnavailable(Exception):
    """A transient storage fault (throttling, 5xx, dropped connections) that outlasted the whole
    retry budget. Not a UserError: the input is fine, the store is not (a training run treats
    it as a worker failure and continues from its latest checkpoint under train.max_failures)."""


def is_transient(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (TimeoutError, ConnectionError)) or any(m in text for m in TRANSIENT)


def where(exc: BaseException) -> str | None:
    """The bucket and key an SDK message names ("key 'a/b' in bucket 'x'"), as s3://x/a/b."""
    text = str(exc)
    key = re.search(r"key '([^']*)' in bucket '([^']*)'", text)
    if key:
        return f"s3://{key.group(2)}/{key.group(1)}"
    bucket = re.search(r"bucket '([^']*)'", text)
    return f"s3://{bucket.group(1)}" if bucket else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def classify(exc: OSError, path: str, attempts: int) -> StorageError | StorageUnavailable:
    """The storage error that `exc` (raised while reading or writing `path`) stands for."""
    named = where(exc) or path
    detail = _first_line(exc)
    if is_transient(exc):
        return StorageUnavailable(
            f"storage: '{named}' kept failing after {attempts} attempts ({detail}); the store is "
            f"throttling or unwell: run the command again later (it continues where it stopped), "
            f"or allow more attempts with $CG_RAY_STORAGE_MAX_ATTEMPTS"
        )
    if isinstance(exc, FileNotFoundError) or any(m in detail for m in MISSING):
        return ObjectMissing(
            f"storage: '{named}' does not exist ({detail}); restore it, or prepare the dataset again"
        )
    if isinstance(exc, PermissionError):
        return StorageError(f"storage: '{named}': permission denied ({detail})")
    for marker, meaning, todo in PERMANENT:
        if marker in detail:
            return StorageError(f"storage: '{named}': {meaning} ({detail}); {todo}")
    return StorageError(f"storage: '{named}': {detail}")


def from_failure(exc: BaseException, attempts: int) -> StorageError | StorageUnavailable | None:
    """The storage error behind a failure, or None when storage is not its cause: the error
    itself, an SDK OSError that escaped unnamed, or either inside a failure that Ray wrapped
    (a task's or a worker's traceback, as text)."""
    if isinstance(exc, (StorageError, StorageUnavailable)):
        return exc
    if isinstance(exc, OSError) and "AWS Error" in str(exc):
        return classify(exc, where(exc) or "object storage", attempts)
    text = str(exc)
    for kind in (ObjectMissing, StorageError, StorageUnavailable):
        marker = f"{kind.__name__}: storage: "
        if marker in text:
            return kind("storage: " + text.split(marker, 1)[1].splitlines()[0])
    for line in text.splitlines():
        if "AWS Error" in line:
            line = line.split("OSError: ", 1)[-1].strip()
            return classify(OSError(line), where(OSError(line)) or "object storage", attempts)
    return None
