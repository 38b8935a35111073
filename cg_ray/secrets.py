"""Keeping secrets out of what cg_ray records: params, tags, artifacts and checkpoints.

Credentials belong in the environment (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, ...),
which cg_ray never records; a URI that carries them anyway (`https://user:pass@host`,
`?token=...`) is recorded with those parts masked.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:token|access_token|password|passwd|secret|signature|x-amz-signature|"
    r"x-amz-credential|x-amz-security-token|api_key|apikey|key)=)[^&\s]+",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL)", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask credentials inside URIs and the values of secret environment variables."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", text)
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 8 and value in text:
            text = text.replace(value, MASK)
    return text


def redact_tree(data: Any) -> Any:
    """The same structure with every string redacted."""
    if isinstance(data, dict):
        return {k: redact_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_tree(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data
