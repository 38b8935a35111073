"""Places365 CNNs as the CSAIL release publishes them, in torchvision architectures.

A checkpoint (`resnet18_places365.pth.tar` and kin) is a dict with `epoch`, `arch`,
`state_dict` and `best_prec1`; the state_dict keys carry DataParallel's `module.` prefix. Files
written by old PyTorch under Python 2 hold byte strings that only unpickle with
`encoding='latin1'`. A bare state_dict is accepted as well.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from cg_ray import storage
from cg_ray.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_ARCH = "resnet18"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""ImageNet statistics, which the Places365 CNNs were trained with."""


@dataclass
class PlacesWeights:
    """A checkpoint read and checked against its architecture."""

    arch: str
    """torchvision architecture name (resnet18, resnet50, ...)."""
    state_dict: dict[str, torch.Tensor]
    """Keys without the `module.` prefix, matching `arch` exactly."""
    num_classes: int


def _torch_load(data: bytes, **kwargs):
    with warnings.catch_warnings():
        # torch warns that `encoding` needs weights_only=False, yet its tensors-only unpickler
        # honours it (tested with a Python 2 style file).
        warnings.filterwarnings("ignore", message="pickle_load_args only works")
        return torch.load(io.BytesIO(data), map_location="cpu", **kwargs)


def read_checkpoint_file(path: str):
    """The unpickled checkpoint at `path` (local or URI).

    Tensors-only unpickling first; Python-2 byte strings are retried with encoding='latin1';
    a file holding other Python objects falls back to full unpickling, with a warning.
    """
    if not storage.exists(path):
        raise UserError(f"Places365 checkpoint '{path}' does not exist")
    data = storage.read_bytes(path)
    for kwargs in (
        {"weights_only": True},
        {"weights_only": True, "encoding": "latin1"},
        {"weights_only": False, "encoding": "latin1"},
    ):
        try:
            return _torch_load(data, **kwargs)
        except UnicodeDecodeError:
            continue  # an old pickle: the next attempt reads its strings as latin1
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc) or not kwargs["weights_only"]:
                raise UserError(f"'{path}' is not a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
            if "encoding" in kwargs:
                log.warning(
                    "%s holds Python objects besides tensors: loading it with full "
                    "unpickling (only use checkpoints you trust)",
                    path,
                )
        except (RuntimeError, EOFError, ValueError) as exc:
            raise UserError(f"'{path}' is not a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    raise UserError(f"cannot unpickle Places365 checkpoint '{path}'")


def strip_module_prefix(state: dict) -> dict[str, torch.Tensor]:
    """DataParallel's `module.` prefix off every key that has it."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def build_arch(arch: str, num_classes: int) -> nn.Module:
    """A torchvision classification architecture with `num_classes` outputs, random weights."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        shown = ", ".join(a for a in known if a.startswith(("resnet", "densenet", "alexnet", "vgg")))
        raise UserError(f"unknown --arch '{arch}': not a torchvision classification model (e.g. {shown})")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _mismatch(model: nn.Module, state: dict) -> list[str]:
    """What keeps `state` from loading into `model` exactly, in words (empty when it fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for what, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint vs arch)", shapes),
    ):
        if keys:
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    return problems


def load_places_weights(path: str, arch: str | None = None) -> PlacesWeights:
    """Read the checkpoint at `path` and check that it is an `arch` network (default: the
    checkpoint's own `arch` entry, else resnet18). A checkpoint of another architecture is
    refused, naming the architecture and the keys that do not fit."""
    checkpoint = read_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise UserError(
            f"'{path}' holds a {type(checkpoint).__name__}, not a checkpoint dict with a state_dict"
        )
    named = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' has no state_dict of tensors")
    state = strip_module_prefix(state)
    arch = arch or named or DEFAULT_ARCH
    heads = [
        v for k, v in state.items() if k.endswith(("fc.weight", "classifier.weight", "classifier.6.weight"))
    ]
    num_classes = int(heads[-1].shape[0]) if heads else 365
    problems = _mismatch(build_arch(arch, num_classes), state)
    if problems:
        said = f" (the checkpoint says arch '{named}')" if named and named != arch else ""
        raise UserError(
            f"Places365 checkpoint '{path}' is not a {arch} network{said}: "
            f"{'; '.join(problems)}; pass the matching --arch"
        )
    return PlacesWeights(arch, state, num_classes)


def places_model(weights: PlacesWeights) -> nn.Module:
    """The network of `weights`, loaded and in eval mode."""
    model = build_arch(weights.arch, weights.num_classes)
    model.load_state_dict(weights.state_dict)
    return model.eval()
