"""Frame sampling (`data.sampling`, `eval.views`): exact indices on a 100-frame clip."""

import numpy as np
import pytest

from cg_ray.data.sampling import Sampling, official, pack_indices, random_segments, uniform

UNIFORM_16 = [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]
CENTRES_16 = [3, 9, 15, 21, 28, 34, 40, 46, 53, 59, 65, 71, 78, 84, 90, 96]


def test_uniform_is_the_evenly_spaced_sample():
    assert Sampling("uniform", 16).indices(100).tolist() == UNIFORM_16
    assert uniform(3, 8).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]  # a short clip repeats frames


def test_official_is_every_fifth_frame_from_the_first():
    assert Sampling("official", 16).indices(100).tolist() == list(range(0, 80, 5))
    assert official(100, 16).tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75]
    # Too short for 16 picks at stride 5: the picks, then the last repeated.
    assert official(30, 8).tolist() == [0, 5, 10, 15, 20, 25, 25, 25]


def test_random_draws_one_frame_per_segment_in_training_and_centres_in_evaluation():
    assert Sampling("random", 16).indices(100).tolist() == CENTRES_16
    train = Sampling("random", 16, training=True)
    a = train.indices(100, np.random.default_rng(7))
    b = train.indices(100, np.random.default_rng(7))
    c = train.indices(100, np.random.default_rng(8))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()  # seeded
    segment = np.floor(np.arange(17) * 100 / 16).astype(int)
    for i, frame in enumerate(a):
        assert segment[i] <= frame < segment[i + 1]
    draws = np.stack([random_segments(100, 16, np.random.default_rng(s)) for s in range(200)])
    assert draws.min(axis=0).tolist() == segment[:-1].tolist()  # every frame of a segment drawn
    assert (draws.max(axis=0) == segment[1:] - 1).all()


def test_bidirectional_is_a_forward_view_and_an_offset_reversed_view():
    views = Sampling("bidirectional", 16).indices(100)
    assert views.shape == (2, 16)
    assert views[0].tolist() == UNIFORM_16
    assert views[1].tolist() == CENTRES_16[::-1]  # reversed, half a segment later
    assert np.all(np.diff(views[1]) < 0)


def test_multi_view_evaluation_takes_k_clips_at_spread_phases():
    two = Sampling("uniform", 16, views=2).indices(100)
    assert two.shape == (2, 16)
    assert two[0].tolist() == [0, 6, 12, 18, 25, 31, 37, 43, 50, 56, 62, 68, 75, 81, 87, 93]
    assert two[1].tolist() == CENTRES_16
    assert Sampling("random", 16, views=2).indices(100).tolist()[0] == [
        1,
        7,
        14,
        20,
        26,
        32,
        39,
        45,
        51,
        57,
        64,
        70,
        76,
        82,
        89,
        95,
    ]
    assert Sampling("bidirectional", 4, views=3).indices(100).shape == (3, 2, 4)
    # A training dataset always takes one view.
    assert Sampling("random", 16, views=1, training=True).leading == ()
    assert Sampling("bidirectional", 16, views=5).leading == (5, 2)


@pytest.mark.parametrize(
    "name,views,needed",
    [
        ("uniform", 1, 16),
        ("uniform", 3, 48),
        ("random", 1, 32),
        ("bidirectional", 1, 32),
        ("bidirectional", 2, 64),
        ("official", 1, 16),
    ],
)
def test_frames_a_pack_must_hold(name, views, needed):
    assert Sampling(name, 16, views).pack_frames_needed() == needed


def test_a_pack_of_2t_frames_serves_both_views():
    # From a uniform pack of 32 frames: the reversed view takes the odd packed frames.
    views = Sampling("bidirectional", 16).indices(32)
    assert views[1].tolist() == list(range(31, 0, -2))
    assert views[0].tolist() == uniform(32, 16).tolist()
    assert pack_indices("official", 100, 16).tolist() == list(range(0, 80, 5))
    assert pack_indices("uniform", 100, 16).tolist() == UNIFORM_16


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampling"):
        Sampling("sparse")
    with pytest.raises(ValueError):
        uniform(0, 4)
