"""Test inputs for `cg-ray scenes`: a Places365-style ResNet saved as the CSAIL release does, and a
hierarchy sheet written in the official format."""

from __future__ import annotations

import csv
import io

import numpy as np
import torch
import torchvision

from cg_ray.labels.hierarchy import read_categories

TWO_FLAGS = "/a/airfield"
"""The class the test sheets give two level-2 flags: 9 (man-made elements) and 10 (transport)."""


def sheet_flags(categories: list[str]) -> np.ndarray:
    """(K, 16) flags: class i -> category i % 16, and /a/airfield also -> category 10."""
    flags = np.zeros((len(categories), 16), dtype=np.int64)
    flags[np.arange(len(categories)), np.arange(len(categories)) % 16] = 1
    first = categories.index(TWO_FLAGS)
    flags[first] = 0
    flags[first, [9, 10]] = 1
    return flags


def write_sheet(
    path, categories: list[str] | None = None, flags: np.ndarray | None = None, extra_rows: list[str] = ()
) -> np.ndarray:
    """The official layout: two header rows, then 'name', 3 level-1 flags, 16 level-2 flags."""
    categories = categories if categories is not None else read_categories()
    flags = flags if flags is not None else sheet_flags(read_categories())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["", "level1", "", "", "level2"] + [""] * 15)
    writer.writerow(
        ["category", "indoor", "outdoor, natural", "outdoor, man-made"] + [f"category {c}" for c in range(16)]
    )
    every = read_categories()
    for name in categories:
        row = flags[every.index(name)]
        level1 = [int(row[:6].any()), int(row[6:10].any()), int(row[10:].any())]
        writer.writerow([f"'{name}'", *level1, *row.tolist()])
    for name in extra_rows:
        writer.writerow([f"'{name}'", 0, 0, 1] + [1] + [0] * 15)
    path.write_text(out.getvalue())
    return flags


def places_resnet(seed: int = 0) -> torch.nn.Module:
    """A random resnet18 with 365 outputs; its classifier is scaled up so that the class
    probabilities are peaked and differ from frame to frame, as a trained network's do."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=365).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30.0)
    return model


def save_csail(model: torch.nn.Module, path, arch: str = "resnet18") -> None:
    """As the CSAIL release: epoch, arch, best_prec1 and DataParallel `module.` keys."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "best_prec1": 54.7}, path)


def save_python2_style(model: torch.nn.Module, path) -> None:
    """A legacy (pre-zip) torch file whose pickle holds a Python 2 byte string, as files written
    by old PyTorch under Python 2 do: it only loads with encoding='latin1'."""
    buffer = io.BytesIO()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"epoch": 90, "arch": "resnet18", "note": "caf\u00e9", "state_dict": state},
        buffer,
        _use_new_zipfile_serialization=False,
        pickle_protocol=2,
    )
    unicode_op = b"X\x05\x00\x00\x00caf\xc3\xa9"  # BINUNICODE 'café'
    data = buffer.getvalue()
    assert data.count(unicode_op) == 1
    path.write_bytes(data.replace(unicode_op, b"U\x04caf\xe9"))  # SHORT_BINSTRING, latin-1 bytes
