"""The job server of a Ray cluster, reached as Ray's own `ray job` CLI reaches it: the address from
--address or $RAY_ADDRESS, the auth token from where Ray keeps it, and one line for each way that
can fail instead of a traceback."""

from __future__ import annotations

import os
import time

from cg_ray.errors import UserError

AUTH_HINT = (
    "the cluster at {address} wants a Ray auth token: put the head's token (`ray "
    "get-auth-token` there) in ~/.ray/auth_token, or set RAY_AUTH_TOKEN=<token> "
    "(or RAY_AUTH_TOKEN_PATH=<file>)"
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def address_of(given: str | None) -> str:
    """The job server's address: given, else $RAY_ADDRESS."""
    address = given or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster: give --address http://HEAD:8265 or set RAY_ADDRESS")
    return address


def use_auth_token() -> None:
    """Send Ray's auth token the way Ray finds one. Ray 2.60's `ray job` sends the token of
    $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (Ray's AuthenticationTokenLoader)
    when RAY_AUTH_MODE=token; with RAY_AUTH_MODE unset, `ray start` and `ray.init` turn token mode
    on when such a token exists (maybe_enable_token_auth_if_token_available), and so does this,
    so a shell that holds the head's token needs no RAY_AUTH_MODE. RAY_AUTH_MODE=disabled sends none."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")  # Ray reads the mode once per process


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def refused(exc: BaseException, address: str) -> UserError | None:
    """The one-line error for what the job server answered (a missing or wrong token, nobody
    there); None for anything else."""
    from ray.exceptions import AuthenticationError

    text = str(exc)
    if isinstance(exc, AuthenticationError) or "status code 401" in text or "status code 403" in text:
        return UserError(AUTH_HINT.format(address=address))
    if isinstance(exc, (ConnectionError, OSError)) or "Failed to connect" in text:
        return UserError(
            f"cannot reach the job server at {address} ({_first_line(exc)}): is the cluster up, and "
            f"is this its dashboard address (http://HEAD:8265)?"
        )
    return None


def connect(address: str):
    """A JobSubmissionClient of the cluster at `address` (Ray's token sent as Ray sends it)."""
    from ray.job_submission import JobSubmissionClient

    from cg_ray.console import route_library_logs

    route_library_logs()  # Ray's client logs (uploads) to the command's log, not the terminal
    use_auth_token()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError, ConnectionError, ValueError
        raise refused(exc, address) or UserError(
            f"cannot use the job server at {address}: {_first_line(exc)}"
        ) from None


def job_info(client, address: str, job_id: str):
    """The job's JobDetails; a UserError naming the job when the cluster does not know it."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "status code 404" in str(exc):
            raise UserError(
                f"no job {job_id} on the cluster at {address}: `cg-ray jobs list` shows its jobs"
            ) from None
        raise refused(exc, address) or exc from None


def wait_for_end(client, job_id: str, timeout: float, poll: float = 1.0):
    """The job's JobDetails once it has ended, or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_job_info(job_id)
        if info.status in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(poll)


def follow_hint(job_id: str, address: str) -> str:
    """How to follow or stop a job again, in one line."""
    where = f" --address {address}" if address != os.environ.get("RAY_ADDRESS") else ""
    return (
        f"follow it with `cg-ray jobs logs {job_id} --follow{where}`, "
        f"stop it with `cg-ray jobs stop {job_id}{where}`"
    )
