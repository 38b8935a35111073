"""`make bench`: benchmark scripts run one after another, each one's output kept in one folder.

    .venv/bin/python benchmarks/run.py [--out bench_results] NAME...    # e.g. frame_count stream_cost

Each `benchmarks/NAME.py` runs with its default options in a process of its own, from the
repository root. Its stdout and stderr go, interleaved as they come, to OUT/NAME.log; the last
line of its stdout, which every benchmark prints as one JSON object (result_line.py), goes to
OUT/NAME.json. OUT/summary.json holds the machine (CPU model, cores, memory, load average), the
date, and each benchmark's command, exit status, seconds and figures. A benchmark that fails, or
whose last line is not a JSON object, is reported and the others still run; the exit status is
1 when any did.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gb"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the platform string says enough
    return info


def run_one(name: str, out: Path) -> dict:
    """Runs benchmarks/NAME.py; writes OUT/NAME.log and, when its last stdout line is JSON, NAME.json."""
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py")]
    env = {**os.environ, "CG_RAY_PROGRESS": os.environ.get("CG_RAY_PROGRESS", "0"), "PYTHONUNBUFFERED": "1"}
    log_path, json_path = out / f"{name}.log", out / f"{name}.json"
    json_path.unlink(missing_ok=True)  # never leave an older run's figures beside this run's log
    last_stdout = [""]
    lock = threading.Lock()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

        def copy(stream, is_stdout: bool) -> None:
            for line in stream:
                with lock:
                    log.write(line)
                    log.flush()
                if is_stdout and line.strip():
                    last_stdout[0] = line.strip()

        readers = [
            threading.Thread(target=copy, args=(proc.stdout, True)),
            threading.Thread(target=copy, args=(proc.stderr, False)),
        ]
        for reader in readers:
            reader.start()
        code = proc.wait()
        for reader in readers:
            reader.join()
    row: dict = {
        "command": f"python benchmarks/{name}.py",
        "exit_status": code,
        "seconds": round(time.perf_counter() - start, 1),
    }
    try:
        figures = json.loads(last_stdout[0])
        if not isinstance(figures, dict):
            raise ValueError("not an object")
    except ValueError:
        row["error"] = f"the last line of stdout is not a JSON object: {last_stdout[0][:200]!r}"
        return row
    if code == 0:
        json_path.write_text(json.dumps(figures, indent=1) + "\n")
        row["figures"] = figures
    else:
        row["error"] = f"exit status {code}: see {log_path}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help="benchmarks/NAME.py, one or more")
    parser.add_argument(
        "--out", default="bench_results", help="folder of the results (default: bench_results)"
    )
    args = parser.parse_args(argv)
    missing = [name for name in args.names if not (ROOT / "benchmarks" / f"{name}.py").is_file()]
    if missing:
        parser.error(f"no benchmarks/{missing[0]}.py (names are files of benchmarks/ without .py)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "benchmarks": {},
    }
    for i, name in enumerate(args.names, start=1):
        print(f"[bench] {i}/{len(args.names)} {name} ...", flush=True)
        row = summary["benchmarks"][name] = run_one(name, out)
        state = f"failed: {row['error']}" if "error" in row else f"-> {out / name}.json"
        print(f"[bench] {name}: {row['seconds']} s, {state}", flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # after each: kept if cut
    failed = [name for name, row in summary["benchmarks"].items() if "error" in row]
    print(
        f"[bench] {len(args.names) - len(failed)} of {len(args.names)} done, results in {out}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
