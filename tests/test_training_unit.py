"""The training step and its guards, without Ray: accumulation, schedules, resume checks,
secrets and an unreachable tracking server."""

import socket

import pytest
import torch
from output import own

from cg_ray.config import config_from_dict
from cg_ray.errors import UserError
from cg_ray.model.net import build_model
from cg_ray.secrets import redact, redact_tree
from cg_ray.taxonomy import LEVELS, Taxonomy
from cg_ray.train.driver import check_resumable
from cg_ray.train.optim import build_optimizer, build_schedule, lr_factor
from cg_ray.train.worker import TrainState, forward_backward, optimizer_step

TINY = [
    "data.num_frames=4",
    "data.image_size=32",
    "model.backbone.hidden_size=32",
    "model.backbone.num_layers=1",
    "model.backbone.num_heads=2",
    "model.backbone.intermediate_size=64",
    "model.backbone.patch_size=8",
]


def make_state(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg, [5, 4, 3, 2], text_dim=8)
    optimizer = build_optimizer(model, cfg.optim)
    tables = {
        lvl: torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for lvl, n in zip(LEVELS, [5, 4, 3, 2])
    }
    return TrainState(
        model,
        optimizer,
        build_schedule(optimizer, cfg.optim, 10),
        cfg,
        torch.device("cpu"),
        tables,
        bf16=False,
    )


def batch(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    scenes = torch.rand(n, 16, generator=g)
    return {
        "video": torch.randint(0, 256, (n, 4, 32, 32, 3), generator=g, dtype=torch.uint8),
        "valid": torch.ones(n, dtype=torch.bool),
        "city": torch.randint(0, 5, (n,), generator=g),
        "state": torch.randint(0, 4, (n,), generator=g),
        "country": torch.randint(0, 3, (n,), generator=g),
        "continent": torch.randint(0, 2, (n,), generator=g),
        "scene": scenes / scenes.sum(1, keepdim=True),
    }


def test_gradient_accumulation_equals_the_larger_batch():
    cfg = config_from_dict({}, TINY)
    full, accum = make_state(cfg), make_state(cfg)
    data = batch(8)
    forward_backward(full, data)
    for half in ({k: v[:4] for k, v in data.items()}, {k: v[4:] for k, v in data.items()}):
        forward_backward(accum, half, scale=0.5)
    for (name, a), (_, b) in zip(full.model.named_parameters(), accum.model.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    optimizer_step(full)
    optimizer_step(accum)
    for (name, a), (_, b) in zip(full.model.named_parameters(), accum.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert full.step == 1


def test_invalid_clips_are_left_out_of_the_loss():
    cfg = config_from_dict({}, TINY)
    a, b = make_state(cfg), make_state(cfg)
    data = batch(6)
    masked = dict(data, valid=torch.tensor([True, True, True, False, False, False]))
    forward_backward(a, masked)
    forward_backward(b, {k: v[:3] for k, v in data.items()})
    for (name, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_grad_clip_bounds_the_norm():
    cfg = config_from_dict({}, TINY + ["train.grad_clip=0.001"])
    state = make_state(cfg)
    forward_backward(state, batch(4))
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.train.grad_clip)
    norm = torch.norm(torch.stack([p.grad.norm() for p in state.model.parameters() if p.grad is not None]))
    assert float(norm) <= 0.001 * 1.01


def test_schedules():
    constant = config_from_dict({}, ["optim.warmup_steps=4"]).optim
    assert [lr_factor(s, constant, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = config_from_dict(
        {}, ["optim.schedule=cosine", "optim.warmup_steps=2", "optim.min_lr_ratio=0.1"]
    ).optim
    assert lr_factor(1, cosine, 12) == 1.0
    assert lr_factor(2, cosine, 12) == pytest.approx(1.0)
    assert lr_factor(7, cosine, 12) == pytest.approx(0.55)
    assert lr_factor(12, cosine, 12) == pytest.approx(0.1)
    assert config_from_dict({}).optim.schedule == "constant"  # the paper's default


def _state_for(cfg, taxonomy):
    return {"config": cfg.to_dict(), "taxonomy": taxonomy.to_dict()}


def test_resume_refuses_another_config_naming_the_keys(small_taxonomy):
    cfg = config_from_dict({}, TINY)
    saved = _state_for(cfg, small_taxonomy)
    check_resumable(saved, config_from_dict({}, TINY + ["train.epochs=20"]), small_taxonomy, "ck")
    with pytest.raises(UserError) as err:
        check_resumable(
            saved, config_from_dict({}, TINY + ["optim.lr=0.01", "model.sca.heads=3"]), small_taxonomy, "ck"
        )
    assert "optim.lr: 0.001 -> 0.01" in str(err.value) and "model.sca.heads" in str(err.value)


def test_resume_refuses_another_taxonomy(small_taxonomy):
    cfg = config_from_dict({}, TINY)
    other = Taxonomy.from_rows(
        [{"city": "Rome", "state": "Lazio", "country": "Italy", "continent": "Europe"}]
    )
    with pytest.raises(UserError, match="taxonomy differs.*Rome"):
        check_resumable(_state_for(cfg, other), cfg, small_taxonomy, "ck")


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG")
    text = "http://alice:pa55word@mlflow:5000/?token=abcdef s3://b/k key=wJalrXUtnFEMI-K7MDENG"
    masked = redact(text)
    for secret in ("pa55word", "alice", "abcdef", "wJalrXUtnFEMI-K7MDENG"):
        assert secret not in masked
    assert "s3://b/k" in masked and "mlflow:5000" in masked
    assert redact_tree({"a": ["x://u:p@h"], "b": 3}) == {"a": ["x://***@h"], "b": 3}


def test_unreachable_tracking_server_fails_fast():
    from cg_ray.tracking import check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="unreachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(UserError, match="does not exist"):
        check_reachable("sqlite:////no/such/folder/mlflow.db")


def test_bf16_autocast_step_runs_on_cpu_and_tracks_fp32():
    cfg = config_from_dict({}, TINY)
    fp32, bf16 = make_state(cfg), make_state(cfg)
    bf16.bf16 = True
    data = batch(4)
    a = forward_backward(fp32, data)
    b = forward_backward(bf16, data)
    assert abs(a["loss"] - b["loss"]) < 0.05 * abs(a["loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bf16.model.parameters())


@pytest.mark.slow
def test_compiled_model_matches_eager():
    cfg = config_from_dict({}, TINY)
    eager = make_state(cfg)
    compiled = make_state(cfg)
    compiled.model = torch.compile(compiled.model)
    data = batch(4)
    a, b = forward_backward(eager, data), forward_backward(compiled, data)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_a_checkpoint_cut_short_in_the_copy_is_not_resumed_from(small_taxonomy, tmp_path):
    """A driver killed while Ray Train copies a checkpoint into the run folder leaves a newer
    folder with a truncated checkpoint.pt: resume must take the last complete one."""
    import shutil

    from cg_ray.train.checkpoint import FILENAME, FILES, is_complete, latest_checkpoint, save_checkpoint

    cfg = config_from_dict({}, TINY + ["model.tla.enabled=false"])
    model = build_model(cfg, small_taxonomy.sizes, text_dim=8)
    run = tmp_path / "run"
    good = run / "checkpoint_2026-01-01_00-00-00.000001"
    save_checkpoint(
        str(good),
        model=model,
        optimizer=None,
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=small_taxonomy,
        text_dim=8,
    )
    assert is_complete(str(good)) and latest_checkpoint(str(run)) == str(good)

    cut = run / "checkpoint_2026-01-01_00-00-09.000001"  # newer, its .pt cut short
    shutil.copytree(good, cut)
    data = (cut / FILENAME).read_bytes()
    (cut / FILENAME).write_bytes(data[: len(data) // 2])
    unlisted = run / "checkpoint_2026-01-01_00-00-08.000001"  # files.json not copied yet
    shutil.copytree(good, unlisted)
    (unlisted / FILES).unlink()
    assert not is_complete(str(cut)) and not is_complete(str(unlisted))
    assert latest_checkpoint(str(run)) == str(good)


def test_a_run_whose_driver_died_before_any_checkpoint_is_closed_not_left_running(tmp_path, capsys):
    import json

    from cg_ray import tracking
    from cg_ray.train.driver import RUN_MARKER, _close_run_without_checkpoint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "runs" / "r"
    _close_run_without_checkpoint(str(run_dir), uri)  # a new run folder: nothing to close
    dead = tracking.start_run(uri, "e", "r", {"a": 1})
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"mlflow_run_id": dead}))
    _close_run_without_checkpoint(str(run_dir), uri)
    run = tracking.get_run(uri, dead)
    assert (
        run.info.status == "KILLED" and "first complete checkpoint" in run.data.tags["cg_ray.ended_because"]
    )
    assert "marked KILLED" in capsys.readouterr().out
    _close_run_without_checkpoint(str(run_dir), uri)  # ended already: left as it is
    assert own(capsys.readouterr().out) == ""


def test_a_run_shorter_than_one_sampling_interval_still_gets_system_metrics(tmp_path):
    """MLflow's monitor drops the interval in progress when it stops; on a fast run (or a fast
    last epoch) that was every sample."""
    from cg_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = tracking.start_run(uri, "short", "short", {})
    tracking.system_metrics(uri, run_id, interval=60).finish()
    metrics = tracking.get_run(uri, run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
