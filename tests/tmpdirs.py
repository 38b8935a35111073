"""Short temp folders in /tmp (Ray's socket paths are limited to 107 bytes, so a Ray temp dir
cannot live under pytest's tmp_path), removed when the test process exits: Ray's session logs,
throwaway clusters' folders and caches do not pile up on a developer's machine run after run."""

import atexit
import shutil
import tempfile

_made: list[str] = []


def short_tmpdir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    _made.append(path)
    return path


@atexit.register  # registered at import, before any Ray's own exit hook: it runs after them
def _remove() -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)
