"""Text features of the label names (TextLabel Alignment targets, paper Sec. 4.4).

An open_clip text encoder embeds every label name of every level (underscores become spaces,
put into a template); each vector is L2-normalized. Stored with the dataset as
`text_features.parquet`: columns `level`, `label`, `vector`.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cg_ray import storage
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)

FILENAME = "text_features.parquet"
DEFAULT_TEMPLATE = "a street in {}."


def encode_label_names(taxonomy: Taxonomy, model_name: str = "ViT-B-32",
                       pretrained: str | None = None, template: str = DEFAULT_TEMPLATE,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """level -> (n_level, D) float32, unit rows. `pretrained`: an open_clip tag ('openai'), a
    local weights file, or None for random weights (seeded, so reproducible)."""
    import open_clip

    if "{}" not in template:
        raise UserError(f"text template '{template}' must contain {{}} where the label goes")
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None)
    except RuntimeError as exc:
        raise UserError(f"cannot build open_clip '{model_name}' with pretrained="
                        f"'{pretrained}': {str(exc).splitlines()[0]}") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    out = {}
    with torch.no_grad():
        for level in LEVELS:
            texts = [template.format(name.replace("_", " ")) for name in taxonomy.labels[level]]
            features = model.encode_text(tokenizer(texts)).float()
            out[level] = torch.nn.functional.normalize(features, dim=-1).numpy()
    return out


def save_text_features(data_path: str, features: dict[str, np.ndarray], taxonomy: Taxonomy) -> str:
    levels, labels, vectors = [], [], []
    for level in LEVELS:
        for name, vector in zip(taxonomy.labels[level], features[level]):
            levels.append(level)
            labels.append(name)
            vectors.append(vector.astype(np.float32))
    table = pa.table({"level": levels, "label": labels,
                      "vector": pa.array([v.tolist() for v in vectors], type=pa.list_(pa.float32()))})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    path = storage.join(data_path, FILENAME)
    storage.write_bytes(path, sink.getvalue())
    return path


def load_text_tables(data_path: str, taxonomy: Taxonomy) -> dict[str, np.ndarray]:
    """level -> (n_level, D) in taxonomy id order; a clear error when missing or incomplete."""
    path = storage.join(data_path, FILENAME)
    if not storage.exists(path):
        raise UserError(f"'{data_path}' has no {FILENAME}: run `cg-ray text {data_path}` to make "
                        f"the TLA targets, or switch TLA off with --set model.tla.enabled=false")
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    rows = {(lvl, lab): vec for lvl, lab, vec in zip(table["level"].to_pylist(),
                                                      table["label"].to_pylist(),
                                                      table["vector"].to_pylist())}
    tables = {}
    for level in LEVELS:
        missing = [name for name in taxonomy.labels[level] if (level, name) not in rows]
        if missing:
            raise UserError(f"{path} has no vector for {level} '{missing[0]}' "
                            f"({len(missing)} missing): run `cg-ray text {data_path}` again")
        tables[level] = np.asarray([rows[(level, name)] for name in taxonomy.labels[level]],
                                   dtype=np.float32)
    return tables
