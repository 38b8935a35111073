"""The synthetic world's harder option: the city patch in only part of each clip."""

import numpy as np
import pytest

from cg_ray.data.synthetic import _Look, _render_clip, make_world, places
from cg_ray.errors import UserError


def render(window, frames=12):
    world = places(6)
    look = _Look(world)
    rng = np.random.default_rng(3)
    return np.stack(list(_render_clip(world[2], look, np.zeros(frames, dtype=int), rng, 64, 48, window)))


def test_city_patch_only_inside_the_window():
    full, partial = render(None), render((4, 7))
    assert np.array_equal(render((0, 12)), full)  # a window over the whole clip is the default
    for t in range(12):
        same = np.array_equal(partial[t], full[t])
        assert same == (4 <= t < 7), t


def test_default_world_draws_nothing_more_and_the_option_is_checked(tmp_path):
    a = make_world(str(tmp_path / "a"), cities=2, clips_per_city=2, frames=6, size=(32, 32))
    b = make_world(
        str(tmp_path / "b"), cities=2, clips_per_city=2, frames=6, size=(32, 32), city_cue_fraction=0.5
    )
    assert a["city_cue_fraction"] == 1.0 and b["city_cue_fraction"] == 0.5
    first = sorted((tmp_path / "a").rglob("1.jpg"))[0]
    other = tmp_path / "b" / first.relative_to(tmp_path / "a")
    assert other.exists()
    with pytest.raises(UserError, match="city_cue_fraction"):
        make_world(
            str(tmp_path / "c"), cities=2, clips_per_city=2, frames=6, size=(32, 32), city_cue_fraction=0.0
        )
