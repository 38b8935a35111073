from pathlib import Path

import pytest

from cg_ray.config import Config, config_from_dict, load_config
from cg_ray.errors import UserError
from cg_ray.model.net import build_model

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").rglob("*.yaml"))


def test_defaults_are_the_paper():
    cfg = Config()
    assert cfg.optim.lr == 1e-3 and cfg.train.batch_size == 12 and cfg.train.epochs == 10
    assert cfg.model.sca.embed_dim == 6 and cfg.model.sca.heads == 2
    assert cfg.model.sca.scene_widths == [256, 128, 64, 32, 16]
    assert cfg.model.tla.widths == [466] and cfg.model.backbone.hidden_size == 384


def test_dotted_overrides_are_typed():
    cfg = config_from_dict(
        {},
        [
            "train.epochs=3",
            "optim.lr=5e-4",
            "model.sca.heads=3",
            "model.backbone.pretrained=/models/videomae",
            "train.use_gpu=false",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr == 5e-4 and cfg.model.sca.heads == 3
    assert cfg.model.backbone.pretrained == "/models/videomae" and cfg.train.use_gpu is False


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochz=3", "unknown config key 'train.epochz'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("train.epochs=three", "config train.epochs: expected int"),
        ("train.num_workers=1.5", "config train.num_workers: expected int"),
        ("eval.mode=best", "eval.mode='best': must be one of"),
        ("optim.lr=0", "optim.lr=0.0: must be > 0"),
        ("model.sca.heads=4", "divisible"),
        ("train.epochs", "key=value"),
    ],
)
def test_bad_values_get_one_line_errors(override, message):
    with pytest.raises(UserError) as err:
        config_from_dict({}, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(bad))


def test_yaml_round_trip():
    cfg = config_from_dict({}, ["train.epochs=2"])
    import yaml

    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_builds(path):
    # A hub id cannot be fetched here: build the same architecture from the config's fields.
    cfg = load_config(str(path), ["data.path=/nowhere", "model.backbone.pretrained=null"])
    parents = {"city": [0, 1, 2, 3, 3], "state": [0, 1, 2, 2], "country": [0, 0, 1]}  # the graph head's tree
    model = build_model(cfg, [5, 4, 3, 2], text_dim=16, parents=parents)
    assert sum(p.numel() for p in model.parameters()) > 0
