"""One typed config tree: nested dataclasses loaded from YAML with dotted overrides.

    cfg = load_config("configs/demo.yaml", ["train.epochs=3", "model.sca.heads=4"])

Unknown keys and values of the wrong type are refused with a one-line message naming the key.
The resolved tree is saved with every run (`config.yaml` in the run folder and in MLflow).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from cg_ray.errors import UserError


@dataclass
class AugmentConfig:
    """Training-time augmentation of uint8 clips on the device (cg_ray/data/augment.py)."""

    enabled: bool = False
    """Augment training clips (off: the paper trains without augmentation)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    """Random resized crop: range of the crop's area as a fraction of the frame ([1, 1]: no crop)."""
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    """Random resized crop: range of the crop's aspect ratio (drawn log-uniformly)."""
    color_jitter: float = 0.4
    """Brightness, contrast, saturation factors in [1-s, 1+s], hue shift in [-s/4, s/4]; 0: none."""
    randaug_n: int = 2
    """RandAugment-style policy: operations per clip (0: none)."""
    randaug_m: float = 7.0
    """RandAugment-style policy: magnitude of each operation, 0..10."""
    randaug_mstd: float = 0.5
    """RandAugment-style policy: std of the Gaussian noise on the magnitude, per clip."""
    hflip: bool = False
    """Mirror half of the clips; off by default: driving side and written text are location cues."""


@dataclass
class DataConfig:
    path: str = ""
    """Prepared dataset: a folder or URI holding manifest.parquet and taxonomy.json."""
    train_split: str = "train"
    """Split used for training."""
    val_split: str = "val"
    """Split evaluated after each epoch."""
    num_frames: int = 16
    """Frames the model sees per clip (T)."""
    sampling: str = "uniform"
    """Which T frames: 'uniform' (evenly over the clip), 'official' (the authors' loader: every
    5th frame from the first), 'random' (one per equal segment; centres in evaluation) or
    'bidirectional' (uniform forward + offset reversed view, features fused); see
    cg_ray/data/sampling.py."""
    image_size: int = 224
    """Frames are resized to image_size x image_size."""
    scene_labels: str = "soft"
    """Scene targets: 'soft' (fraction of frames per category) or 'majority' (one-hot)."""
    max_bad_fraction: float = 0.01
    """A run stops with an error when more than this fraction of clips cannot be decoded."""
    decode: str = "auto"
    """Where packed JPEG frames are decoded: 'cpu' (Ray Data tasks), 'gpu' (the model's GPU,
    batched nvJPEG: only JPEG bytes cross the object store) or 'auto' (gpu on a GPU worker)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training-time augmentation (off by default)."""


@dataclass
class BackboneConfig:
    name: str = "videomae"
    """Backbone from the registry in cg_ray.model.backbones: videomae, vit, mae, timesformer."""
    pretrained: str | None = None
    """Hub id (MCG-NJU/videomae-small-finetuned-kinetics) or local directory; None builds from scratch."""
    hidden_size: int = 384
    """Width of the transformer (ViT-S: 384)."""
    num_layers: int = 12
    """Transformer layers."""
    num_heads: int = 6
    """Attention heads per layer."""
    intermediate_size: int = 1536
    """Width of each layer's MLP."""
    patch_size: int = 16
    """Spatial patch size in pixels."""
    tubelet_size: int = 2
    """Frames per tubelet (video backbones)."""
    drop_path: float = 0.0
    """Stochastic depth: drop rate of the last layer, rising linearly from 0 at the first (0: off)."""
    attn_implementation: str = "sdpa"
    """'sdpa' (fused attention) or 'eager'."""
    frame: str = "random"
    """Image backbones (vit, mae): the frame they see: first, middle, last, or random (a random
    frame per clip in training, the middle one in evaluation). Video backbones ignore it."""


@dataclass
class SCAConfig:
    enabled: bool = True
    """Self-Cross Attention and the scene loss; off with TLA off gives the VideoMAE baseline."""
    embed_dim: int = 6
    """E: each logit token is projected 1 -> E for q, k and v."""
    heads: int = 2
    """H: attention heads over the d logit tokens."""
    scene_widths: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    """Hidden widths of FFN_s (d -> widths... -> num_scenes)."""
    num_scenes: int = 16
    """Scene categories of the soft labels (the Places365 level-2 categories)."""


@dataclass
class TLAConfig:
    enabled: bool = True
    """TextLabel Alignment to text features of the label names (needs `cg-ray text`)."""
    widths: list[int] = field(default_factory=lambda: [466])
    """Hidden widths of FFN_t (d -> widths... -> text dim)."""
    levels: str = "all"
    """Target: 'city' (the city's vector) or 'all' (mean of the four levels' vectors)."""


@dataclass
class GraphConfig:
    """The graph head (model.head=graph): GATv2 over the label tree (cg_ray/model/heads.py)."""

    dim: int = 128
    """Width of the node states."""
    layers: int = 2
    """GATv2 layers."""
    heads: int = 4
    """Attention heads per layer (dim must be divisible by heads)."""
    text_init: bool = True
    """Start the node embeddings from the label names' text features when the dataset has them."""


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The video encoder."""
    sca: SCAConfig = field(default_factory=SCAConfig)
    """Self-Cross Attention over the logits and the scene head FFN_s."""
    tla: TLAConfig = field(default_factory=TLAConfig)
    """TextLabel Alignment: FFN_t and its target."""
    head: str = "linear"
    """Classifier heads (registry in cg_ray.model.heads): 'linear' (the paper) or 'graph' (GATv2)."""
    graph: GraphConfig = field(default_factory=GraphConfig)
    """The graph head's shape (used when head is 'graph')."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Per-channel normalization mean (applied on the device)."""
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    """Per-channel normalization std (applied on the device)."""


@dataclass
class LossConfig:
    city: float = 1.0
    """Weight of the city cross-entropy."""
    state: float = 1.0
    """Weight of the state cross-entropy."""
    country: float = 1.0
    """Weight of the country cross-entropy."""
    continent: float = 1.0
    """Weight of the continent cross-entropy."""
    scene: float = 1.0
    """Weight of the soft-scene cross-entropy (SCA)."""
    tla: float = 1.0
    """Weight of the TLA term (negative cosine to the label text features)."""
    tla_reduction: str = "mean"
    """TLA over the batch: 'mean' of -cos, or 'sum' (the authors' code: B times the weight)."""
    label_smoothing: float = 0.0
    """Label smoothing of the four cross-entropies (0: none, as the paper)."""
    consistency: float = 0.0
    """Weight of the parent-child consistency term: (P(parent) - sum of P(children))^2 (0: off)."""


@dataclass
class OptimConfig:
    name: str = "adam"
    """'adam' (the paper) or 'adamw' (decoupled weight decay)."""
    lr: float = 1e-3
    """Learning rate of the heads (the paper's constant 1e-3); backbone layers get less with layer_decay."""
    weight_decay: float = 0.0
    """Weight decay (0: none, as the paper); never on biases, norms and embeddings."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: backbone layer i of L gets lr * layer_decay^(L+1-i), embeddings ^(L+1)."""
    schedule: str = "constant"
    """'constant' (the paper) or 'cosine' (decay to min_lr_ratio * lr after the warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps (either schedule)."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, as a fraction of lr."""


@dataclass
class EMAConfig:
    """An exponential moving average of the weights (cg_ray/train/ema.py)."""

    enabled: bool = False
    """Keep an EMA of the weights; it is what each epoch evaluates and checkpoints beside the live ones."""
    decay: float = 0.9999
    """Decay per optimizer step."""
    warmup: bool = True
    """Use min(decay, (1+k)/(10+k)) at update k, so the average starts near the live weights."""


@dataclass
class TrainConfig:
    epochs: int = 10
    """Passes over the training split."""
    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    batch_size: int = 12
    """Clips per worker per step."""
    use_gpu: bool | None = None
    """true, false, or auto (null): GPUs when a live node or a node type the autoscaler can
    launch has one (the run logs which it chose and why)."""
    cpus_per_worker: float = 1.0
    """CPUs each training worker holds."""
    seed: int = 0
    """Seed of the initialization, the shuffling and the sampling."""
    log_every: int = 10
    """Unused (progress lines are timed: $CG_RAY_PROGRESS_EVERY seconds); kept so older configs load."""
    max_failures: int = 0
    """Worker-group restarts from the latest checkpoint before a run gives up (-1: no limit)."""
    keep_best: int = 2
    """Checkpoints kept: the best k by city_top1, plus always the latest."""
    precision: str = "auto"
    """'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'."""
    tf32: bool = True
    """Allow TF32 matmuls and convolutions on GPU."""
    compile: bool = False
    """torch.compile the network before wrapping it in DDP."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size * workers * this)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    ema: EMAConfig = field(default_factory=EMAConfig)
    """EMA of the weights (off by default)."""


@dataclass
class EvalConfig:
    mode: str = "codependent"
    """'flat', 'independent', 'codependent' (paper Sec. 4.6) or 'official' (the authors'
    evaluate.py: plain city argmax mapped up, top-5 from each level's own softmax)."""
    views: int = 1
    """Temporal clips per video in evaluation; their probabilities are averaged."""
    batch_size: int = 32
    """Clips per evaluation batch."""


@dataclass
class RunConfig:
    name: str = "cityguessr"
    """Run name: the folder under storage_path and the MLflow run name."""
    storage_path: str = "runs"
    """Where checkpoints go (a local folder, made absolute, or a URI)."""
    experiment: str = "cg_ray"
    """MLflow experiment."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite in the working directory."""
    register_as: str | None = None
    """Register the best checkpoint in the MLflow model registry under this name."""


@dataclass
class TuneConfig:
    """`cg-ray tune`: the search lives in storage_path/run.name (see cg_ray/tune.py)."""

    metric: str = "city_top1"
    """Per-epoch metric the search optimizes (city_top1, train_loss, ...)."""
    mode: str = "max"
    """'max' or 'min'."""
    scheduler: str = "asha"
    """'asha' (stop weak trials at rungs of epochs) or 'fifo' (every trial runs all epochs)."""
    search: str = "random"
    """Search algorithm: 'random' (random and grid sampling) or 'optuna' (TPE)."""
    num_samples: int = 8
    """Trials (with grid distributions: samples of each grid point)."""
    max_concurrent: int = 0
    """Trials at once; 0: as many as the cluster's CPUs and GPUs fit."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: float = 2.0
    """ASHA: 1/reduction_factor of the trials at a rung go on to the next one."""
    seed: int | None = 0
    """Seed of the sampler (random or optuna); None: a different search every time."""
    data_cpus: float = 1.0
    """Whole CPUs a trial keeps free for its Ray Data decode tasks, besides its training workers
    (a trial without one free CPU would stall in its first read)."""
    check_resources: bool = True
    """Refuse at once a search (or train run) whose one trial no node, live or of a type the
    autoscaler can launch, could ever host, and report while it waits; false: skip the check."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dotted config key -> one distribution: {"optim.lr": {"loguniform": [1e-4, 1e-2]}}; kinds:
    uniform, loguniform [low, high], quniform [low, high, q], randint [low, high) (high
    excluded), qrandint [low, high, q], choice [values], grid [values]."""


def _storage_attempts() -> int:
    from cg_ray.storage_errors import ATTEMPTS_ENV, DEFAULT_ATTEMPTS

    value = os.environ.get(ATTEMPTS_ENV, "")
    if value and not value.isdigit():
        raise UserError(f"${ATTEMPTS_ENV}={value!r} must be a whole number of attempts, 1 or more")
    return int(value) if value else DEFAULT_ATTEMPTS


@dataclass
class StorageConfig:
    max_attempts: int = field(default_factory=_storage_attempts)
    """Attempts of each object-storage request before it fails (throttling, 5xx, dropped
    connections; exponential back-off, waits doubling from 50 ms to 25.6 s: about 51 s in all at
    12), in every process of the run; default: $CG_RAY_STORAGE_MAX_ATTEMPTS, else 12."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """The prepared dataset and how clips are read."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: backbone, SCA, TLA, input normalization."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Weights of the loss terms."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Ray Train: workers, batch, precision, checkpoints, failures."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation after each epoch and by `cg-ray evaluate`."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run lives: name, storage, MLflow."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """`cg-ray tune`: the search space and how trials are scheduled."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object storage: how hard a request is retried."""

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """A validated config from plain data (the YAML tree)."""
        return config_from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> Config:
        choices = {
            "eval.mode": (self.eval.mode, ("flat", "independent", "codependent", "official")),
            "data.sampling": (self.data.sampling, ("uniform", "official", "random", "bidirectional")),
            "loss.tla_reduction": (self.loss.tla_reduction, ("mean", "sum")),
            "model.tla.levels": (self.model.tla.levels, ("city", "all")),
            "data.scene_labels": (self.data.scene_labels, ("soft", "majority")),
            "data.decode": (self.data.decode, ("cpu", "gpu", "auto")),
            "train.precision": (self.train.precision, ("auto", "bf16", "fp32")),
            "optim.schedule": (self.optim.schedule, ("constant", "cosine")),
            "optim.name": (self.optim.name, ("adam", "adamw")),
            "model.head": (self.model.head, ("linear", "graph")),
            "model.backbone.frame": (self.model.backbone.frame, ("first", "middle", "last", "random")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"config {key}={value!r}: must be one of {', '.join(allowed)}")
        positive = {
            "train.epochs": self.train.epochs,
            "train.num_workers": self.train.num_workers,
            "train.batch_size": self.train.batch_size,
            "data.num_frames": self.data.num_frames,
            "data.image_size": self.data.image_size,
            "optim.lr": self.optim.lr,
            "train.grad_accum_steps": self.train.grad_accum_steps,
            "train.keep_best": self.train.keep_best,
            "storage.max_attempts": self.storage.max_attempts,
            "eval.views": self.eval.views,
        }
        for key, number in positive.items():
            if number <= 0:
                raise UserError(f"config {key}={number}: must be > 0")
        self._check_recipe()
        if self.data.sampling == "official" and self.eval.views > 1:
            raise UserError(
                f"config eval.views={self.eval.views}: the official sampling takes "
                f"one view (the authors' evaluation); set eval.views=1"
            )
        if self.model.sca.embed_dim % self.model.sca.heads:
            raise UserError(
                f"config model.sca.embed_dim={self.model.sca.embed_dim} must be "
                f"divisible by model.sca.heads={self.model.sca.heads}"
            )
        from cg_ray.tune.space import check_tune_section  # the tune section: its own module

        check_tune_section(self)
        return self

    def _check_recipe(self) -> None:
        """Ranges of the recipe switches (augmentation, optimizer, EMA, head, loss)."""
        aug = self.data.augment
        ranges = {
            "optim.layer_decay": (self.optim.layer_decay, 0.0, 1.0, False),
            "train.ema.decay": (self.train.ema.decay, 0.0, 1.0, True),
            "model.backbone.drop_path": (self.model.backbone.drop_path, 0.0, 1.0, True),
            "loss.label_smoothing": (self.loss.label_smoothing, 0.0, 1.0, True),
        }
        for key, (value, low, high, open_high) in ranges.items():
            if not (low <= value < high if open_high else low < value <= high):
                raise UserError(
                    f"config {key}={value}: must be in {'[' if open_high else '('}{low}, "
                    f"{high}{')' if open_high else ']'}"
                )
        for key, pair in (
            ("data.augment.crop_scale", aug.crop_scale),
            ("data.augment.crop_ratio", aug.crop_ratio),
        ):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise UserError(f"config {key}={pair}: must be [low, high] with 0 < low <= high")
        if aug.crop_scale[1] > 1:
            raise UserError(
                f"config data.augment.crop_scale={aug.crop_scale}: a crop cannot exceed the frame (high <= 1)"
            )
        nonneg = {
            "data.augment.color_jitter": aug.color_jitter,
            "data.augment.randaug_n": aug.randaug_n,
            "data.augment.randaug_m": aug.randaug_m,
            "data.augment.randaug_mstd": aug.randaug_mstd,
            "optim.weight_decay": self.optim.weight_decay,
            "loss.consistency": self.loss.consistency,
        }
        for key, value in nonneg.items():
            if value < 0:
                raise UserError(f"config {key}={value}: must be >= 0")
        graph = self.model.graph
        if graph.dim <= 0 or graph.layers < 0 or graph.heads <= 0 or graph.dim % graph.heads:
            raise UserError(
                f"config model.graph: dim={graph.dim} must be > 0 and divisible by "
                f"heads={graph.heads}, layers={graph.layers} >= 0"
            )


# -- building dataclasses from plain data, with type checks ---------------------------------------


def _check(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if value == "auto" and inner == [bool]:  # e.g. train.use_gpu: auto, the same as null
            return None
        return _check(value, inner[0], key)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"config {key}: expected a section (mapping), got {value!r}")
        return _build(typing.cast(type, hint), value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads '5e-4' (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise UserError(f"config {key}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}' (known in this section: {', '.join(sorted(names))})"
        )
    kwargs = {name: _check(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    data = merge_overrides(dict(data or {}), list(overrides or []))
    return _build(Config, data).validate()


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Config from a YAML file (or defaults when path is None) plus `key=value` overrides."""
    data: dict = {}
    if path:
        from cg_ray import storage

        if not storage.exists(path):
            raise UserError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(storage.read_text(path)) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file '{path}' is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise UserError(f"config file '{path}' must hold a mapping of sections")
    return config_from_dict(data, overrides)


# -- documentation: `cg-ray config show` ----------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """A config dataclass's fields -> the string literal written under each, on one line."""
    cls_node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(cls_node, ast.ClassDef)
    body = cls_node.body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe(cfg: Any, indent: str = "") -> str:
    """The resolved config as YAML that loads back to it, each field with its doc as a comment."""
    docs = field_docs(type(cfg))
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        doc = f"  # {docs[f.name]}" if f.name in docs else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:{doc}")
            lines.append(describe(value, indent + "  "))
        else:
            shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            shown = shown.removesuffix("\n...").strip()
            lines.append(f"{indent}{f.name}: {shown}{doc}")
    return "\n".join(lines)
