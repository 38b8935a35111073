"""benchmarks/sched_watch.py: the scheduler's counters of a training thread, read from /proc
(what train_overhead reports of both sides), on real processes and threads."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc only")


def _sched_watch():
    spec = importlib.util.spec_from_file_location("sched_watch", ROOT / "benchmarks" / "sched_watch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUSY_THEN_IDLE = """
import threading, time
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
worker = threading.Thread(target=spin, args=(2.0,))  # the busiest thread of this process
worker.start(); time.sleep(0.3); worker.join()
"""


def test_the_busiest_thread_of_a_titled_process_and_the_shares_of_its_time():
    sched_watch = _sched_watch()
    title = f"{sys.executable} -c \n# watched-{os.getpid()}"
    watch = sched_watch.ProcessWatch(title, every=0.1).start()
    child = subprocess.Popen([sys.executable, "-c", f"\n# watched-{os.getpid()}" + BUSY_THEN_IDLE])
    child.wait(timeout=60)
    figures = watch.stop()
    assert watch.pid == child.pid
    # The spinning thread, not the main one (asleep the whole time): on a CPU or waiting for one.
    assert figures["cpu_share"] + figures["runqueue_share"] > 0.8, figures
    assert figures["sleep_share"] < 0.2 and 0.5 <= figures["seconds"] <= 2.5, figures
    assert figures["other_processes_cores"] is not None
    # Its last half only: the same thread, a shorter window.
    assert watch.stop(tail=0.5)["seconds"] < figures["seconds"]


def test_this_thread_asleep_and_busy():
    sched_watch = _sched_watch()
    with sched_watch.ThisThread() as asleep:
        time.sleep(0.5)
    assert asleep.figures["sleep_share"] > 0.9, asleep.figures
    with sched_watch.ThisThread() as busy:
        end = time.time() + 0.5
        while time.time() < end:
            pass
    assert busy.figures["cpu_share"] + busy.figures["runqueue_share"] > 0.9, busy.figures


def test_no_such_process_gives_no_figures():
    watch = _sched_watch().ProcessWatch("no process is titled like this", every=0.05).start()
    time.sleep(0.2)
    assert watch.stop() == {} and watch.pid is None
