"""A synthetic world of real encoded media, for the demo and the tests.

Cities sit in a real-looking hierarchy (continent > country > state > city). Every level leaves
its own visual mark in every frame, coarser levels easier to see:

    continent  background colour of the whole frame             (strong)
    country    coloured stripes over the middle band             (medium)
    state      a coloured block, lower left                      (weaker)
    city       a small checkered patch, lower right              (weakest)
    scene      the colour of the top band ("sky"), one of 16     (per frame)

plus what makes it a video and not a lookup table: a camera pan and a moving "car", per-clip
brightness and colour jitter, and pixel noise. The marks are large blocks of colour, so they
survive JPEG/h264 and a downscale to 32x32.
"""

from __future__ import annotations

import colorsys
import csv
import io
import itertools
import time
from collections.abc import Iterable, Iterator

import av
import numpy as np
from PIL import Image

from cg_ray import storage
from cg_ray.errors import UserError

NUM_SCENES = 16
JITTER = (30.0, 20.0, 12.0, 5.0)  # per-clip colour noise (RGB units) for city, state, country, continent
CONTINENTS = ("Africa", "Asia", "Europe", "North_America", "Oceania", "South_America")
# Real CityGuessr68k cities (their coordinates are in shared/data/cityguessr_city_centres.csv).
# The first 6 cover the 6 continents; the first 12 give 9 countries and 11 states, with a state
# holding two cities (Uttar_Pradesh) and countries holding two states (India, France).
PLACES = (
    ("Abu_Dhabi", "Abu_Dhabi_Emirate", "United_Arab_Emirates", "Asia"),
    ("Lyon", "Auvergne_Rhone_Alpes", "France", "Europe"),
    ("Chicago", "Illinois", "United_States", "North_America"),
    ("Nairobi", "Nairobi_County", "Kenya", "Africa"),
    ("Melbourne", "Victoria", "Australia", "Oceania"),
    ("Buenos_Aires", "Buenos_Aires_City", "Argentina", "South_America"),
    ("Mumbai", "Maharashtra", "India", "Asia"),
    ("Lucknow", "Uttar_Pradesh", "India", "Asia"),
    ("Kanpur", "Uttar_Pradesh", "India", "Asia"),
    ("Marseille", "Provence_Alpes_Cote_d_Azur", "France", "Europe"),
    ("Calgary", "Alberta", "Canada", "North_America"),
    ("Brasilia", "Federal_District", "Brazil", "South_America"),
    ("Tokyo", "Tokyo_Metropolis", "Japan", "Asia"),
    ("Osaka", "Osaka_Prefecture", "Japan", "Asia"),
    ("Edmonton", "Alberta", "Canada", "North_America"),
    ("Cape_Town", "Western_Cape", "South_Africa", "Africa"),
    ("Johannesburg", "Gauteng", "South_Africa", "Africa"),
    ("Adelaide", "South_Australia", "Australia", "Oceania"),
    ("Wellington", "Wellington_Region", "New_Zealand", "Oceania"),
    ("Rio_de_Janeiro", "Rio_de_Janeiro_State", "Brazil", "South_America"),
    ("Lima", "Lima_Region", "Peru", "South_America"),
    ("London", "England", "United_Kingdom", "Europe"),
    ("Manchester", "England", "United_Kingdom", "Europe"),
    ("Seattle", "Washington", "United_States", "North_America"),
)


def places(cities: int) -> list[tuple[str, str, str, str]]:
    """(city, state, country, continent) for `cities` cities: the real list, then generated names."""
    out = list(PLACES[:cities])
    for i in range(len(PLACES), cities):
        continent = CONTINENTS[i % len(CONTINENTS)]
        country = f"{continent}_Country_{i // 12}"
        state = f"{country}_State_{(i // 6) % 2}"
        out.append((f"{continent}_City_{i}", state, country, continent))
    return out


def _palette(n: int, offset: float, sat: float, val: float) -> np.ndarray:
    """(n, 3) float colours with hues spread by the golden ratio, so neighbours differ most."""
    hues = (offset + 0.618034 * np.arange(n)) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, sat, val) for h in hues]) * 255.0


class _Look:
    """The colours and patterns that mark each label, from its index within its level."""

    def __init__(self, world: list[tuple[str, str, str, str]]):
        self.ids = [{name: i for i, name in enumerate(sorted({p[k] for p in world}))} for k in range(4)]
        n = [len(ids) for ids in self.ids]
        self.colours = [
            _palette(n[0], 0.55, 0.6, 0.8),
            _palette(n[1], 0.3, 0.7, 0.8),
            _palette(n[2], 0.1, 0.9, 0.9),
            _palette(n[3], 0.0, 0.9, 0.7),
        ]
        self.scene_colours = _palette(NUM_SCENES, 0.8, 0.35, 1.0)


def _render_clip(
    place,
    look: _Look,
    scenes: np.ndarray,
    rng: np.random.Generator,
    width: int,
    height: int,
    cue_window: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """The T frames of one clip, one (H, W, 3) uint8 array at a time; `scenes` is the (T,) scene
    category per frame. Frame by frame, so a 100-frame 1280x720 clip needs megabytes, not GBs.
    `cue_window` (first, end): the city patch and the state block show only in frames
    first..end-1."""
    city, state, country, continent = (look.ids[k][place[k]] for k in range(4))
    # Per-clip colour jitter, larger for finer levels: that, and smaller areas, is what makes
    # the city the hardest label to read and the continent the easiest.
    col = [
        look.colours[k][i] + rng.normal(0, JITTER[k], size=3)
        for k, i in enumerate((city, state, country, continent))
    ]
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.empty((height, width, 3))
    base[:] = col[3]
    # Country stripes: orientation and period vary by country, colour is the strong cue.
    period = 8 + 4 * ((country // 3) % 2)
    phase = (ys, xs, ys + xs)[country % 3]
    band = (ys >= 0.25 * height) & (ys < 0.55 * height) & ((phase % period) < period // 2)
    base[band] = col[2]
    # Without the state block and the city patch: what frames outside `cue_window` show (the
    # state alone tells most cities apart, so both marks go).
    without_city = base.copy()
    # State block; odd states get an ellipse so shape carries a little of the signal too.
    y0, y1, x0, x1 = 0.6 * height, 0.95 * height, 0.05 * width, 0.45 * width
    if state % 2:
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
        block = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    else:
        block = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    base[block] = col[1]
    # City patch: its colour checkered with a darker shade of itself (4 px squares).
    patch = (ys >= 0.6 * height) & (ys < 0.9 * height) & (xs >= 0.6 * width) & (xs < 0.85 * width)
    dark = ((ys // 4 + xs // 4) % 2).astype(bool)
    base[patch & ~dark] = col[0]
    base[patch & dark] = col[0] * 0.6

    pan0, pan_speed = rng.integers(0, width), rng.uniform(-2.0, 2.0)
    car_x, car_speed = rng.uniform(0, width), rng.uniform(2.0, 5.0) * rng.choice([-1, 1])
    car_h, car_w = max(2, height // 7), max(3, width // 8)
    brightness = rng.uniform(0.85, 1.15)
    for t, scene in enumerate(scenes):
        # A camera pan moves the whole street sideways; the sky band is not panned.
        shown = base if cue_window is None or cue_window[0] <= t < cue_window[1] else without_city
        frame = np.roll(shown, int(pan0 + pan_speed * t), axis=1)
        frame[: int(0.2 * height)] = look.scene_colours[scene]
        x = int(car_x + car_speed * t) % width
        frame[height - car_h - 1 : height - 1, x : x + car_w] = 235.0 if t % 2 else 30.0
        frame *= brightness
        # Noise drawn frame after frame is the same stream as one draw for the whole clip.
        frame += rng.normal(0, 6, size=frame.shape)
        yield np.clip(np.round(frame), 0, 255).astype(np.uint8)


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _mp4(frames: Iterable[np.ndarray], fps: int = 8, gop: int | None = None) -> bytes:
    """(H, W, 3) uint8 frames with even H, W -> h264/yuv420p mp4 bytes; `gop`: keyframe interval
    (None: the encoder's default, one keyframe for a short clip)."""
    buf = io.BytesIO()
    frames = iter(frames)
    first = next(frames)
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        stream.options = {
            "crf": "18",
            "preset": "veryfast",
            **({"g": str(gop), "keyint_min": str(gop)} if gop else {}),
        }
        for frame in itertools.chain([first], frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return buf.getvalue()


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def make_world(
    out: str,
    cities: int = 12,
    clips_per_city: int = 30,
    frames: int = 16,
    size: tuple[int, int] = (64, 48),
    fmt: str = "frames",
    seed: int = 0,
    val_fraction: float = 0.2,
    city_cue_fraction: float = 1.0,
) -> dict:
    """Write a synthetic dataset to `out` (local path or URI) and return a summary of counts.

    city_cue_fraction < 1 makes frame choice matter: each clip shows its city patch and its
    state block (which alone tells most cities apart) only in a run of round(fraction * frames)
    consecutive frames at a random start (the country and continent marks stay in every frame);
    1.0, the default, shows them in every frame and draws nothing more, so the default world is
    unchanged.

    fmt="frames": the CityGuessr68k release layout (labels_list.csv, {train,val}/<City>/<id>/<n>.jpg);
    fmt="mp4": videos/<City>/<id>.mp4 and labels.csv (path,city,state,country,continent,split).
    Both write scene_labels.csv (video_id, scene_0..scene_15: fraction of frames per scene).
    The same seed gives the same labels and the same pixels before encoding.
    """
    from cg_ray.data.layouts import val_count  # one rule for "how many clips go to val"

    writers = {"frames": _write_frames_clip, "mp4": _write_mp4_clip}
    if fmt not in writers:
        raise UserError(f"unknown synthetic format '{fmt}'; use one of {sorted(writers)}")
    width, height = size
    if fmt == "mp4":  # yuv420p needs even dimensions
        width, height = width - width % 2, height - height % 2
    if cities < 1 or clips_per_city < 1 or frames < 1 or min(width, height) < 16:
        raise UserError(
            f"synthetic world needs cities, clips_per_city, frames >= 1 and a size of "
            f"at least 16x16; got {cities}, {clips_per_city}, {frames}, {size}"
        )
    if not 0 < city_cue_fraction <= 1:
        raise UserError(f"city_cue_fraction={city_cue_fraction} must be in (0, 1]")
    start = time.perf_counter()
    world = places(cities)
    look = _Look(world)
    labels_rows, scene_rows, splits = [], [], {}
    for c, place in enumerate(world):
        # City-dependent scene mix: a few scene categories dominate each city.
        scene_probs = np.random.default_rng([seed, c, 1]).dirichlet(np.full(NUM_SCENES, 0.3))
        val_clips = set(
            np.random.default_rng([seed, c, 2])
            .permutation(clips_per_city)[: val_count(clips_per_city, val_fraction)]
            .tolist()
        )
        for k in range(clips_per_city):
            rng = np.random.default_rng([seed, c, 3, k])
            scenes = rng.choice(NUM_SCENES, size=frames, p=scene_probs)
            window = None
            if city_cue_fraction < 1:  # its own stream: the default world's pixels stay the same
                length = max(1, round(city_cue_fraction * frames))
                first = int(np.random.default_rng([seed, c, 4, k]).integers(0, frames - length + 1))
                window = (first, first + length)
            pixels = _render_clip(place, look, scenes, rng, width, height, window)
            video_id, split = f"{place[0]}_{k:04d}", "val" if k in val_clips else "train"
            splits[split] = splits.get(split, 0) + 1
            path = writers[fmt](out, split, place[0], video_id, pixels)
            labels_rows.append([path, *place, split])
            soft = np.bincount(scenes, minlength=NUM_SCENES) / frames
            scene_rows.append([video_id, *[f"{v:.6g}" for v in soft]])
    if fmt == "frames":
        storage.write_text(
            storage.join(out, "labels_list.csv"),
            _csv(["City", "State", "Country", "Continent"], [list(p) for p in world]),
        )
    else:
        storage.write_text(
            storage.join(out, "labels.csv"),
            _csv(["path", "city", "state", "country", "continent", "split"], labels_rows),
        )
    storage.write_text(
        storage.join(out, "scene_labels.csv"),
        _csv(["video_id"] + [f"scene_{i}" for i in range(NUM_SCENES)], scene_rows),
    )
    return {
        "out": out,
        "format": fmt,
        "cities": cities,
        "states": len(look.ids[1]),
        "countries": len(look.ids[2]),
        "continents": len(look.ids[3]),
        "clips": len(labels_rows),
        "splits": splits,
        "frames_per_clip": frames,
        "size": [width, height],
        "city_cue_fraction": city_cue_fraction,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _write_frames_clip(out: str, split: str, city: str, video_id: str, pixels) -> str:
    folder = f"{split}/{city}/{video_id}"
    for t, frame in enumerate(pixels, start=1):  # 1.jpg, 2.jpg, ... 10.jpg: no zero padding
        storage.write_bytes(storage.join(out, folder, f"{t}.jpg"), _jpeg(frame))
    return folder


def _write_mp4_clip(out: str, split: str, city: str, video_id: str, pixels) -> str:
    path = f"videos/{city}/{video_id}.mp4"
    storage.write_bytes(storage.join(out, path), _mp4(pixels))
    return path
