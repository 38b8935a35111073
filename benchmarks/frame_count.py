"""What an honest frame count costs `cg-ray prepare` per video: header trusted vs counted by decoding.

    .venv/bin/python benchmarks/frame_count.py [--frames 300] [--size 640x360]

Writes an H.264 mp4 (a moving gradient, keyframe every 30 frames) and the same file cut with
stream copy as `ffmpeg -ss ... -c copy` cuts it (11 leading packets hidden by an edit list: the
header still counts them), then times cg_ray.data.decode.frame_count on each: the first is
trusted from its header after demuxing agrees, the second is decoded and counted. Last line: a
JSON object with ms per video.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cg_ray.data.decode import frame_count  # noqa: E402


def write(path: str, frames: np.ndarray) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.gop_size = "yuv420p", 30
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def cut(source: str, dest: str, skip: int) -> None:
    with av.open(source) as src, av.open(dest, "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= skip * packet.duration
            packet.dts -= skip * packet.duration
            packet.stream = copy
            out.mux(packet)


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per video (default: 300)")
    parser.add_argument("--size", default="640x360", help="WxH (default: 640x360)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per file (default: 3)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    y, x = np.mgrid[0:height, 0:width]
    frames = np.stack(
        [np.stack([(x + 4 * t) % 256, (y + 2 * t) % 256, (x + y + t) % 256], -1) for t in range(args.frames)]
    ).astype(np.uint8)
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        full, clipped = os.path.join(folder, "full.mp4"), os.path.join(folder, "cut.mp4")
        write(full, frames)
        cut(full, clipped, skip=11)
        for name, path in (("header", full), ("decoded", clipped)):
            start = time.perf_counter()
            for _ in range(args.repeats):
                count, source = frame_count(path)
            ms = 1000 * (time.perf_counter() - start) / args.repeats
            print(f"{name:8s} {count} frames ({source}): {ms:.0f} ms per video")
            result[f"{name}_ms"] = round(ms, 1)
    print_result({"frames": args.frames, "size": args.size, **result})


if __name__ == "__main__":
    main()
