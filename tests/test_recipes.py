"""The training recipe switches without Ray: AdamW parameter groups with layer-wise lr decay,
EMA of the weights (evaluated, checkpointed, resumed), drop path, augmentation in the step, and
one tiny training step for every shipped config."""

from pathlib import Path

import pytest
import torch

from cg_ray.config import config_from_dict, load_config
from cg_ray.data.sampling import Sampling
from cg_ray.model.net import build_model
from cg_ray.taxonomy import LEVELS, Taxonomy
from cg_ray.train.checkpoint import load_model, read_checkpoint, restore_training, save_checkpoint
from cg_ray.train.ema import WeightEMA, build_ema
from cg_ray.train.optim import build_optimizer, build_schedule, layer_id
from cg_ray.train.worker import TrainState, eval_module, forward_backward, optimizer_step

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").rglob("*.yaml"))
TINY = [
    "data.num_frames=4",
    "data.image_size=32",
    "model.backbone.hidden_size=32",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.intermediate_size=64",
    "model.backbone.patch_size=8",
]
ROWS = [
    ("Lyon", "Rhone", "France", "Europe"),
    ("Paris", "IDF", "France", "Europe"),
    ("Versailles", "IDF", "France", "Europe"),
    ("Austin", "Texas", "USA", "America"),
    ("Dallas", "Texas", "USA", "America"),
]
TAXONOMY = Taxonomy.from_rows([dict(zip(LEVELS, row)) for row in ROWS])


def make_state(cfg, seed=0, total_steps=10):
    torch.manual_seed(seed)
    model = build_model(cfg, TAXONOMY.sizes, text_dim=8, parents=TAXONOMY.parents)
    optimizer = build_optimizer(model, cfg.optim)
    g = torch.Generator().manual_seed(1)
    tables = {
        level: torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
        for level, n in zip(LEVELS, TAXONOMY.sizes)
    }
    state = TrainState(
        model,
        optimizer,
        build_schedule(optimizer, cfg.optim, total_steps),
        cfg,
        torch.device("cpu"),
        tables,
        bf16=False,
    )
    state.ema = build_ema(model, cfg.train.ema)
    state.parents = {k: torch.tensor(v) for k, v in TAXONOMY.parents.items()}
    return state


def batch(n=4, seed=1, frames=4, size=32, leading=()):
    g = torch.Generator().manual_seed(seed)
    scenes = torch.rand(n, 16, generator=g)
    shape = (n, *leading, frames, size, size, 3)  # leading: (2,) for bidirectional's two views
    out = {
        "video": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "valid": torch.ones(n, dtype=torch.bool),
        "scene": scenes / scenes.sum(1, keepdim=True),
    }
    for level, k in zip(LEVELS, TAXONOMY.sizes):
        out[level] = torch.randint(0, k, (n,), generator=g)
    return out


# -- optimizer -------------------------------------------------------------------------------------


def test_adamw_groups_carry_layer_decayed_lrs_and_skip_decay_on_biases_norms_embeddings():
    cfg = config_from_dict(
        {}, TINY + ["optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.05", "optim.layer_decay=0.5"]
    )
    model = build_model(cfg, TAXONOMY.sizes, text_dim=8)
    optimizer = build_optimizer(model, cfg.optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)

    def lr(name):
        return group_of[id(params[name])]["lr"]

    def wd(name):
        return group_of[id(params[name])]["weight_decay"]

    # L = 2 layers: embeddings 0.5^3, layer 0 0.5^2, layer 1 0.5^1, everything after 0.5^0.
    patch = "backbone.encoder.embeddings.patch_embeddings.projection.weight"
    q0 = "backbone.encoder.encoder.layer.0.attention.attention.query.weight"
    q1 = "backbone.encoder.encoder.layer.1.attention.attention.query.weight"
    assert lr(patch) == pytest.approx(1.25e-4)
    assert lr(q0) == pytest.approx(2.5e-4)
    assert lr(q1) == pytest.approx(5e-4)
    assert lr("heads.city.weight") == pytest.approx(1e-3)
    assert lr("sca.q.weight") == pytest.approx(1e-3)
    assert wd(q0) == 0.05 and wd("heads.city.weight") == 0.05 and wd(patch) == 0.05
    assert wd("heads.city.bias") == 0.0
    assert wd("backbone.encoder.encoder.layer.0.layernorm_before.weight") == 0.0
    # The schedule scales every group alike: the ratios stay.
    schedule = build_schedule(optimizer, cfg.optim, 10)
    optimizer.step()
    schedule.step()
    assert lr(q0) / lr("heads.city.weight") == pytest.approx(0.25)


def test_layer_ids_follow_videomae():
    assert layer_id("backbone.encoder.embeddings.patch_embeddings.projection.weight", 12) == 0
    assert layer_id("backbone.encoder.encoder.layer.0.output.dense.weight", 12) == 1
    assert layer_id("backbone.encoder.encoder.layer.11.output.dense.weight", 12) == 12
    assert layer_id("heads.city.weight", 12) == 13


def test_graph_head_embeddings_are_not_decayed():
    cfg = config_from_dict({}, TINY + ["optim.name=adamw", "optim.weight_decay=0.05", "model.head=graph"])
    model = build_model(cfg, TAXONOMY.sizes, text_dim=8, parents=TAXONOMY.parents)
    optimizer = build_optimizer(model, cfg.optim)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert group_of[id(params["heads.node"])]["weight_decay"] == 0.0
    assert group_of[id(params["heads.layers.0.src.weight"])]["weight_decay"] == 0.05


def test_the_paper_optimizer_is_one_adam_group():
    cfg = config_from_dict({}, TINY)
    optimizer = build_optimizer(build_model(cfg, TAXONOMY.sizes, text_dim=8), cfg.optim)
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1


# -- EMA -------------------------------------------------------------------------------------------


def test_ema_follows_the_weights_with_its_decay():
    model = torch.nn.Linear(2, 1)
    ema = WeightEMA(model, decay=0.9, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, start + 0.1)
    warm = WeightEMA(model, decay=0.9999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


def test_ema_weights_differ_from_live_and_are_what_is_evaluated_and_loaded(tmp_path):
    cfg = config_from_dict({}, TINY + ["train.ema.enabled=true", "train.ema.decay=0.9"])
    state = make_state(cfg)
    for seed in range(3):
        forward_backward(state, batch(seed=seed))
        optimizer_step(state)
    assert state.ema.updates == 3
    live, avg = state.model.state_dict(), state.ema.module.state_dict()
    name = "heads.city.weight"
    assert not torch.allclose(live[name], avg[name])
    assert eval_module(state) is state.ema.module
    save_checkpoint(
        str(tmp_path),
        model=state.model,
        optimizer=state.optimizer,
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=TAXONOMY,
        text_dim=8,
        extra={"ema": state.ema.state_dict()},
    )
    loaded = load_model(str(tmp_path)).model
    torch.testing.assert_close(loaded.state_dict()[name], avg[name])
    # Without EMA the live weights are evaluated and loaded.
    plain = make_state(config_from_dict({}, TINY))
    assert eval_module(plain) is plain.model


def test_resume_restores_ema_param_groups_and_schedule_exactly(tmp_path):
    recipe = TINY + [
        "optim.name=adamw",
        "optim.weight_decay=0.05",
        "optim.layer_decay=0.75",
        "optim.schedule=cosine",
        "optim.warmup_steps=2",
        "train.ema.enabled=true",
        "train.ema.decay=0.99",
        "loss.label_smoothing=0.1",
        "model.backbone.drop_path=0.1",
        "model.head=graph",
        "loss.consistency=1.0",
    ]
    cfg = config_from_dict({}, recipe)
    first = make_state(cfg)
    for seed in range(2):
        forward_backward(first, batch(seed=seed))
        optimizer_step(first)
    save_checkpoint(
        str(tmp_path),
        model=first.model,
        optimizer=first.optimizer,
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=TAXONOMY,
        text_dim=8,
        extra={"step": first.step, "scheduler": first.scheduler.state_dict(), "ema": first.ema.state_dict()},
    )
    resumed = make_state(cfg, seed=123)  # other initial weights: all must come from the checkpoint
    start_epoch, step = restore_training(
        read_checkpoint(str(tmp_path)), resumed.model, resumed.optimizer, resumed.scheduler, resumed.ema
    )
    resumed.step = step
    assert (start_epoch, step) == (1, 2) and resumed.ema.updates == 2
    for a, b in zip(first.optimizer.param_groups, resumed.optimizer.param_groups):
        assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}
    # The next step is identical in both: same weights, moments, lr, EMA.
    torch.manual_seed(7)
    forward_backward(first, batch(seed=5))
    optimizer_step(first)
    torch.manual_seed(7)
    forward_backward(resumed, batch(seed=5))
    optimizer_step(resumed)
    for (name, a), b in zip(first.ema.module.state_dict().items(), resumed.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    for (name, a), b in zip(first.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_checkpoint_without_ema_resumes_into_a_run_with_ema(tmp_path):
    cfg = config_from_dict({}, TINY + ["train.ema.enabled=true"])
    state = make_state(cfg)
    save_checkpoint(
        str(tmp_path),
        model=state.model,
        optimizer=state.optimizer,
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=TAXONOMY,
        text_dim=8,
        extra={"step": 0, "scheduler": state.scheduler.state_dict()},
    )
    other = make_state(cfg, seed=5)
    restore_training(read_checkpoint(str(tmp_path)), other.model, other.optimizer, other.scheduler, other.ema)
    # The average restarts from the restored weights.
    torch.testing.assert_close(
        other.ema.module.state_dict()["heads.city.weight"], state.model.state_dict()["heads.city.weight"]
    )


# -- drop path and augmentation in the step ----------------------------------------------------------


def test_drop_path_is_random_in_training_and_off_in_eval():
    cfg = config_from_dict(
        {}, TINY + ["model.backbone.drop_path=0.9", "model.sca.enabled=false", "model.tla.enabled=false"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, TAXONOMY.sizes, text_dim=8)
    video = batch(8)["video"]
    model.train()
    a, b = model(video).logits["city"], model(video).logits["city"]
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(video).logits["city"], model(video).logits["city"])
    # Rate 0 adds nothing: the same weights give the same training forward twice.
    plain = build_model(
        config_from_dict({}, TINY + ["model.sca.enabled=false", "model.tla.enabled=false"]),
        TAXONOMY.sizes,
        text_dim=8,
    ).train()
    torch.testing.assert_close(plain(video).logits["city"], plain(video).logits["city"])


def test_augmentation_runs_in_the_step_and_only_when_enabled():
    on = config_from_dict({}, TINY + ["data.augment.enabled=true"])
    off = config_from_dict({}, TINY)
    data = batch()
    a, b = make_state(off), make_state(on)
    forward_backward(a, {k: v.clone() for k, v in data.items()})
    b.augment = torch.Generator().manual_seed(0)
    changed = {k: v.clone() for k, v in data.items()}
    forward_backward(b, changed)
    assert not torch.equal(changed["video"], data["video"])  # augmented in place, on the batch's device
    ga, gb = a.model.heads["city"].weight.grad, b.model.heads["city"].weight.grad
    assert not torch.allclose(ga, gb)


# -- every shipped config trains one step ------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_trains_one_tiny_step(path):
    tiny = [o.replace("num_layers=2", "num_layers=1") for o in TINY]
    cfg = load_config(
        str(path),
        tiny + ["model.backbone.pretrained=null", "model.backbone.tubelet_size=2", "train.batch_size=2"],
    )
    state = make_state(cfg)
    if cfg.data.augment.enabled:
        state.augment = torch.Generator().manual_seed(0)
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    leading = Sampling(cfg.data.sampling, cfg.data.num_frames, training=True).leading
    losses = forward_backward(state, batch(2, leading=leading))
    optimizer_step(state)
    assert torch.isfinite(torch.tensor(losses["loss"]))
    moved = [n for n, p in state.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved, f"{path.name}: no parameter changed"
