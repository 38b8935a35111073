"""The search space of `cg-ray tune`: the config's `tune.space`, checked against the config tree
and turned into Ray Tune distributions.

    tune:
      space:
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.sca.heads: {choice: [1, 2, 3]}
        model.sca.scene_widths: {choice: [[64, 32], [128, 64, 32, 16]]}   # FFN_s depth and width

A trial's parameters are the sampled values under the same dotted keys; `apply_params` puts them
into a copy of the base config. This module imports Ray only where Tune objects are built, so the
config can check its tune section without it.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from cg_ray.errors import UserError

# kind -> (number of arguments, or None for a non-empty list of values; Tune constructor name)
KINDS: dict[str, tuple[int | None, str]] = {
    "uniform": (2, "uniform"),
    "loguniform": (2, "loguniform"),
    "quniform": (3, "quniform"),
    "randint": (2, "randint"),
    "qrandint": (3, "qrandint"),
    "choice": (None, "choice"),
    "grid": (None, "grid_search"),
}
# Keys a trial may not change: they decide where a trial's run lives and what it holds.
FIXED_SECTIONS = ("tune.", "run.")
FIXED_KEYS = {"data.path", "train.num_workers", "train.cpus_per_worker", "train.use_gpu"}
_SEARCHES, _SCHEDULERS, _MODES = ("random", "optuna"), ("asha", "fifo"), ("max", "min")
_MAX_COMBINATIONS = 256


def check_tune_section(cfg) -> None:
    """Called by Config.validate: the tune settings and every key and value of the space."""
    t = cfg.tune
    for key, value, allowed in (
        ("tune.search", t.search, _SEARCHES),
        ("tune.scheduler", t.scheduler, _SCHEDULERS),
        ("tune.mode", t.mode, _MODES),
    ):
        if value not in allowed:
            raise UserError(f"config {key}={value!r}: must be one of {', '.join(allowed)}")
    for key, value in (("tune.num_samples", t.num_samples), ("tune.grace_period", t.grace_period)):
        if value <= 0:
            raise UserError(f"config {key}={value}: must be > 0")
    if t.max_concurrent < 0 or t.data_cpus < 0:
        raise UserError("config tune.max_concurrent and tune.data_cpus must be >= 0")
    if t.reduction_factor <= 1:
        raise UserError(f"config tune.reduction_factor={t.reduction_factor}: must be > 1")
    if t.space:
        check_space(cfg)


def _leaf_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _spec(key: str, spec: Any) -> tuple[str, list]:
    """(kind, arguments) of one entry, or a UserError naming what is wrong with it."""
    where = f"tune.space['{key}']"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(
            f"{where}: expected one distribution like {{loguniform: [1e-4, 1e-2]}} "
            f"or {{choice: [1, 2]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise UserError(f"{where}: unknown distribution '{kind}' (known: {', '.join(KINDS)})")
    count = KINDS[kind][0]
    if (
        not isinstance(args, list)
        or (count is None and not args)
        or (count is not None and len(args) != count)
    ):
        wanted = "a non-empty list of values" if count is None else f"a list of {count} numbers"
        raise UserError(f"{where}: {kind} takes {wanted}, got {args!r}")
    if count is not None:
        args = [_number(a) for a in args]
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise UserError(f"{where}: {kind} takes numbers, got {args!r}")
        if args[0] >= args[1] or (kind.startswith("log") and args[0] <= 0):
            raise UserError(
                f"{where}: {kind} needs 0 < low < high"
                if kind.startswith("log")
                else f"{where}: {kind} needs low < high, got {args!r}"
            )
    return kind, args


def _number(value: Any) -> Any:
    try:  # YAML 1.1 reads 1e-4 (no dot) as a string
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _candidates(kind: str, args: list) -> list:
    """Values that stand for a distribution when checking types: every option, or both ends."""
    if KINDS[kind][0] is None:
        return list(args)
    if kind in ("randint", "qrandint"):
        return [int(args[0]), int(args[1]) - (kind == "randint")]
    return [float(args[0]), float(args[1])]


def check_space(cfg) -> None:
    """Every key names a field of the config tree that a trial may change, and every value a
    distribution can give is valid there (alone, and together with the others' values)."""
    base = cfg.to_dict()
    base["tune"]["space"] = {}  # candidates are checked without their own space
    leaves = _leaf_keys(base)
    options: dict[str, list] = {}
    for key, spec in cfg.tune.space.items():
        inside = sorted(k for k in leaves if k.startswith(key + "."))
        if inside:
            raise UserError(
                f"tune.space: '{key}' is a section; name one of its fields "
                f"({', '.join(inside[:6])}{', ...' if len(inside) > 6 else ''})"
            )
        if key not in leaves:
            near = sorted(k for k in leaves if k.split(".")[-1] == key.split(".")[-1])
            hint = (
                f" (did you mean {', '.join(near)}?)"
                if near
                else " (a dotted path to a field, e.g. optim.lr or model.sca.heads)"
            )
            raise UserError(f"tune.space: unknown config key '{key}'{hint}")
        if key.startswith(FIXED_SECTIONS) or key in FIXED_KEYS:
            raise UserError(
                f"tune.space: '{key}' is fixed for a search (it decides where a trial "
                f"runs or what resources it takes); set it in the config instead"
            )
        kind, args = _spec(key, spec)
        options[key] = _candidates(kind, args)
        for value in options[key]:
            _check_values(cfg, base, {key: value})
    if cfg.tune.search == "optuna" and any("grid" in s for s in cfg.tune.space.values()):
        raise UserError("tune.space: grid distributions need tune.search=random (optuna samples)")
    combos = 1
    for values in options.values():
        combos *= len(values)
    if 1 < len(options) and combos <= _MAX_COMBINATIONS:
        for values in itertools.product(*options.values()):
            _check_values(cfg, base, dict(zip(options, values)))


def _check_values(cfg, base: dict, params: dict) -> None:
    try:
        type(cfg).from_dict(apply_params(base, params))
    except UserError as exc:
        shown = " ".join(f"{k}={v!r}" for k, v in params.items())
        raise UserError(f"tune.space: a trial with {shown} would fail: {exc}") from None


def apply_params(base: dict, params: dict) -> dict:
    """A copy of the config dict `base` with each dotted key of `params` set to its value."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = decode(value, node.get(parts[-1]))
    return data


# Lists and mappings travel through Tune and Optuna as JSON text: Optuna's categorical
# distribution takes scalars only. A field that holds a list gets the JSON decoded.
def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode(value: Any, current: Any) -> Any:
    """A sampled value as the field holding `current` takes it."""
    if isinstance(value, str) and isinstance(current, (list, dict)):
        return json.loads(value)
    return value


def tune_space(space: dict[str, dict]) -> dict[str, Any]:
    """The config's space as Ray Tune's param_space (flat: dotted key -> Tune domain)."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind, args = _spec(key, spec)
        build = getattr(tune, KINDS[kind][1])
        out[key] = build([_encode(v) for v in args]) if KINDS[kind][0] is None else build(*args)
    return out
