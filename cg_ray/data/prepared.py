"""A prepared dataset (what `cg-ray prepare` writes), opened once.

Its filesystem and root are found once, from the path; its parts are read when first asked and
kept: the manifest's schema and clips per split, the taxonomy, the text features, the complete
packs. Training, evaluation, the data benchmark, pack and scenes take this object rather than a
path, so no stage turns the path into a filesystem again, and every read goes through the one
filesystem that carries the storage retry policy (cg_ray.storage).

    dataset = PreparedDataset.open("s3://work/cg68k")
    dataset.taxonomy, dataset.splits, dataset.manifest("val", ["clip_id", "city"])
"""

from __future__ import annotations

import json
import posixpath
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from cg_ray import storage
from cg_ray.data.packed_sampling import PACK_NAME, PackChoice
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

MANIFEST = "manifest.parquet"
TAXONOMY = "taxonomy.json"
TEXT_FEATURES = "text_features.parquet"


class PreparedDataset:
    def __init__(self, path: str):
        self.path = str(path)
        self.fs, self.root = storage.filesystem(self.path)
        if not self.exists(MANIFEST):
            raise UserError(
                f"'{self.path}' is not a prepared dataset (no {MANIFEST}{storage.why_missing(self.path)}); "
                f"run `cg-ray prepare SOURCE --out {self.path}` first"
            )

    @classmethod
    def open(cls, dataset: PreparedDataset | str) -> PreparedDataset:
        """The dataset itself, or the one at a path."""
        return dataset if isinstance(dataset, PreparedDataset) else cls(dataset)

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"PreparedDataset({self.path!r})"

    # -- files -----------------------------------------------------------------------------------

    def uri(self, *parts: str) -> str:
        """A file of the dataset as users name it (for messages and for writers)."""
        return storage.join(self.path, *parts)

    def inner(self, *parts: str) -> str:
        """A file of the dataset as its filesystem names it."""
        return posixpath.join(self.root, *parts)

    def info(self, *parts: str) -> pafs.FileInfo:
        with storage.errors_named(self.uri(*parts)):
            return self.fs.get_file_info(self.inner(*parts))

    def exists(self, *parts: str) -> bool:
        return self.info(*parts).type != pafs.FileType.NotFound

    def list_dir(self, *parts: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.inner(*parts), allow_not_found=True)
        with storage.errors_named(self.uri(*parts)):
            return sorted(self.fs.get_file_info(selector), key=lambda info: info.path)

    def read_bytes(self, *parts: str) -> bytes:
        with storage.errors_named(self.uri(*parts)), self.fs.open_input_stream(self.inner(*parts)) as f:
            return f.read()

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    # -- the manifest ----------------------------------------------------------------------------

    @cached_property
    def schema(self) -> pa.Schema:
        import pyarrow.parquet as pq

        with storage.errors_named(self.uri(MANIFEST)):
            return pq.read_schema(self.inner(MANIFEST), filesystem=self.fs)

    def manifest(self, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The manifest's rows (of one split), the given columns (that it has) or all."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if columns is not None:
            columns = [c for c in columns if c in self.schema.names]
            if split is not None and "split" not in columns:
                columns = [*columns, "split"]
        with storage.errors_named(self.uri(MANIFEST)):
            table = pq.read_table(self.inner(MANIFEST), columns=columns, filesystem=self.fs)
        return table if split is None else table.filter(pc.equal(table.column("split"), split))

    @cached_property
    def splits(self) -> dict[str, int]:
        """Clips per split, from the manifest's split column only."""
        column = self.manifest(columns=["split"]).column("split").to_numpy(zero_copy_only=False)
        names, counts = np.unique(column, return_counts=True)
        return {str(s): int(c) for s, c in zip(names, counts)}

    def stamp(self) -> dict:
        """Size and modification time of the manifest: which manifest a pack was made from.
        Read each time: `cg-ray scenes` rewrites the manifest."""
        info = self.info(MANIFEST)
        return {"size": info.size, "mtime_ns": info.mtime_ns}

    def has_scene_labels(self, split: str) -> bool:
        """Whether every clip of `split` has a soft scene label (read batch by batch, two
        columns: a manifest of millions of rows is never held whole)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if "scene_soft" not in self.schema.names:
            return False
        rows = 0
        with storage.errors_named(self.uri(MANIFEST)), self.fs.open_input_file(self.inner(MANIFEST)) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["split", "scene_soft"], batch_size=65536):
                mine = batch.filter(pc.equal(batch.column("split"), split))
                if mine.column("scene_soft").null_count:
                    return False
                rows += mine.num_rows
        return rows > 0

    # -- labels ----------------------------------------------------------------------------------

    @cached_property
    def taxonomy(self) -> Taxonomy:
        if not self.exists(TAXONOMY):
            raise UserError(f"'{self.path}' has no {TAXONOMY}; run `cg-ray prepare` again")
        return Taxonomy.from_json(self.read_bytes(TAXONOMY).decode("utf-8"))

    def has_text_features(self) -> bool:
        return self.exists(TEXT_FEATURES)

    @cached_property
    def text_tables(self) -> dict[str, np.ndarray]:
        """level -> (n_level, D) text features in taxonomy id order (the TLA targets); a clear
        error when they are missing or lack a label."""
        import pyarrow.parquet as pq

        if not self.has_text_features():
            raise UserError(
                f"'{self.path}' has no {TEXT_FEATURES}: run `cg-ray text {self.path}` to make "
                f"the TLA targets, or switch TLA off with --set model.tla.enabled=false"
            )
        table = pq.read_table(pa.BufferReader(self.read_bytes(TEXT_FEATURES)))
        rows = {
            (level, label): vector
            for level, label, vector in zip(
                table["level"].to_pylist(), table["label"].to_pylist(), table["vector"].to_pylist()
            )
        }
        tables = {}
        for level in LEVELS:
            names = self.taxonomy.labels[level]
            missing = [name for name in names if (level, name) not in rows]
            if missing:
                raise UserError(
                    f"{self.uri(TEXT_FEATURES)} has no vector for {level} '{missing[0]}' "
                    f"({len(missing)} missing): run `cg-ray text {self.path}` again"
                )
            tables[level] = np.asarray([rows[(level, name)] for name in names], dtype=np.float32)
        return tables

    # -- packed shards ---------------------------------------------------------------------------

    def complete_packs(self, image_size: int, report: str) -> list[PackChoice]:
        """The packs under shards/ at `image_size` whose report (written last) exists."""
        found = []
        for info in self.list_dir("shards"):
            match = PACK_NAME.match(info.base_name)
            if info.is_file or not match or int(match[2]) != image_size:
                continue
            if self.exists("shards", info.base_name, report):
                found.append(
                    PackChoice(self.uri("shards", info.base_name), int(match[1]), match[3] or "uniform")
                )
        return sorted(found, key=lambda p: (p.frames, p.kind))
