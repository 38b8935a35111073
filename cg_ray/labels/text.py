"""Text features of the label names (TextLabel Alignment targets, paper Sec. 4.4).

An open_clip text encoder embeds every label name of every level (underscores become spaces,
put into a template); each vector is L2-normalized. Stored with the dataset as
`text_features.parquet`: columns `level`, `label`, `vector`.
"""

from __future__ import annotations

import io
import logging
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cg_ray import storage
from cg_ray.data.prepared import TEXT_FEATURES
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)

FILENAME = TEXT_FEATURES  # read back by PreparedDataset.text_tables
DEFAULT_TEMPLATE = "a street in {}."


def _open_clip_model(model_name: str, pretrained: str | None):
    """open_clip model with weights from a tag ('openai'), a weights file (local or a URI, e.g.
    a state_dict saved with torch.save), or random weights when None."""
    import tempfile

    import open_clip

    if pretrained and storage.is_uri(pretrained) and not pretrained.startswith("file://"):
        with tempfile.TemporaryDirectory() as folder:  # open_clip reads local files only
            return _open_clip_model(model_name, storage.download(pretrained, folder))
    if pretrained and pretrained.startswith("file://"):
        pretrained = pretrained[len("file://") :]
    try:
        return open_clip.create_model(model_name, pretrained=pretrained or None)
    except (
        RuntimeError,
        AssertionError,
        KeyError,
        ValueError,
        OSError,
        pickle.UnpicklingError,
    ) as exc:  # open_clip's ways of saying "these weights do not fit"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot build open_clip '{model_name}' with pretrained='{pretrained}': {reason}"
        ) from None


def _token_count(tokenizer, text: str) -> int | None:
    """Tokens of `text` with its start/end tokens, or None for a tokenizer we cannot ask."""
    if hasattr(tokenizer, "encode"):  # open_clip's BPE tokenizer: + start and end token
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if callable(inner):  # a Hugging Face tokenizer, special tokens included
        return len(inner(text)["input_ids"])
    return None


def check_embeddable(tokenizer, level: str, names: list[str], texts: list[str]) -> None:
    """Refuse, naming it, a label the encoder would not see whole: an empty name, or a prompt
    longer than the encoder's context (the tokenizer would silently cut it)."""
    limit = getattr(tokenizer, "context_length", None)
    for name, text in zip(names, texts):
        if not name.replace("_", " ").strip():
            raise UserError(
                f"{level} label '{name}' is empty once underscores become spaces: "
                f"the text encoder cannot embed it; rename it in the dataset"
            )
        count = _token_count(tokenizer, text) if limit else None
        if count is not None and count > limit:
            raise UserError(
                f"{level} label '{name}' needs {count} tokens in '{text[:60]}...', more "
                f"than the text encoder's {limit}: shorten the label or --template"
            )


def encode_label_names(
    taxonomy: Taxonomy,
    model_name: str = "ViT-B-32",
    pretrained: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """level -> (n_level, D) float32, unit rows. `pretrained`: an open_clip tag ('openai'), a
    weights file (local or URI), or None for random weights (seeded, so reproducible).

    A label the encoder cannot embed (empty, longer than its context, or a non-finite vector)
    is refused with an error naming it."""
    import open_clip

    if "{}" not in template:
        raise UserError(f"text template '{template}' must contain {{}} where the label goes")
    torch.manual_seed(seed)
    model = _open_clip_model(model_name, pretrained)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    out = {}
    with torch.no_grad():
        for level in LEVELS:
            names = taxonomy.labels[level]
            texts = [template.format(name.replace("_", " ")) for name in names]
            check_embeddable(tokenizer, level, names, texts)
            features = model.encode_text(tokenizer(texts)).float()
            bad = ~torch.isfinite(features).all(dim=-1) | (features.norm(dim=-1) == 0)
            if bad.any():
                name = names[int(bad.nonzero()[0])]
                raise UserError(
                    f"the text encoder gives no usable vector for {level} label "
                    f"'{name}' (non-finite or zero): check the --pretrained weights"
                )
            out[level] = torch.nn.functional.normalize(features, dim=-1).numpy()
    return out


def save_text_features(data_path: str, features: dict[str, np.ndarray], taxonomy: Taxonomy) -> str:
    levels, labels, vectors = [], [], []
    for level in LEVELS:
        for name, vector in zip(taxonomy.labels[level], features[level]):
            levels.append(level)
            labels.append(name)
            vectors.append(vector.astype(np.float32))
    table = pa.table(
        {
            "level": levels,
            "label": labels,
            "vector": pa.array([v.tolist() for v in vectors], type=pa.list_(pa.float32())),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    path = storage.join(data_path, FILENAME)
    storage.write_bytes(path, sink.getvalue())
    return path
