"""What our CLI printed, without the lines Ray's log monitor forwards into the same stream.

A session-wide Ray (the `ray_session` fixture) keeps forwarding its processes' log lines, for
example ``(pid=gcs_server) ... gcs_actor_scheduler.cc: ...``, to the test process's stderr at any
moment, so they can land in whichever test is capturing. Tests that check our exact output read
it through `own`.
"""

import re

_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)\n]*pid=[^)\n]*\)")


def own(text: str) -> str:
    """`text` without Ray-forwarded lines, stripped."""
    return "\n".join(line for line in text.splitlines() if not _FORWARDED.match(line)).strip()
