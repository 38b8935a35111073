"""How a `cg-ray` process ends: as Python would end it (threads that are not daemons finished,
atexit handlers run, output flushed, the command's exit code), less the teardown of the loaded
libraries that cost 2 to 4 s after every command's result."""

import subprocess
import sys
from pathlib import Path

ENDING = """
import atexit, sys, threading, time
from cg_ray.cli import exit_now

out = sys.argv[1]
atexit.register(lambda: open(out + "/atexit", "w").write("ran"))

def late():
    time.sleep(0.5)
    open(out + "/thread", "w").write("done")

threading.Thread(target=late).start()  # not a daemon: Python waits for it, so does exit_now
sys.stdout.write("the result, unflushed")
exit_now(3)
print("never")
"""


def test_exit_now_ends_as_python_would(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", ENDING, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (3, "the result, unflushed"), done.stderr
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_console_script_and_python_m_end_through_it(tmp_path):
    """`cg-ray` and `python -m cg_ray` run main() and end through exit_now, with main's code."""
    script = Path(sys.executable).parent / "cg-ray"
    assert "from cg_ray.cli import run" in script.read_text()
    for command in ([str(script)], [sys.executable, "-m", "cg_ray"]):
        done = subprocess.run(
            [*command, "config", "show", "--config", str(tmp_path / "missing.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "missing.yaml" in done.stderr, done.stderr
