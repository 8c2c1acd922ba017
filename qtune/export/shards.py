"""Safetensors folders read one tensor at a time and written shard by shard.

:class:`ShardReader` opens a checkpoint folder (one ``*.safetensors`` file or several, with or
without ``model.safetensors.index.json``) and returns single tensors on request through
``safetensors.safe_open``, which maps the file: nothing but the tensor asked for is read.
:class:`ShardWriter` takes tensors as a streamed export produces them and writes them as one shard
at each ``flush`` — the stream flushes after every decoder layer (and once after the embeddings), so
only one layer's tensors are ever pending; ``close`` names the files the way transformers does
(``model-00001-of-00025.safetensors`` plus the index, or one ``model.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qtune.errors import QtuneError

INDEX = "model.safetensors.index.json"


class ShardReader:
    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise QtuneError(f"model.path: no *.safetensors files in {self.folder} (qtune exports from safetensors only)")
        self.where, self.shapes = {}, {}
        for f in files:
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    self.where[k] = f
                    self.shapes[k] = list(h.get_slice(k).get_shape())

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as stored (dtype of the file, CPU)."""
        if name not in self.where:
            raise QtuneError(f"model.path: tensor '{name}' is not in the safetensors files of {self.folder}")
        from safetensors import safe_open

        # opened per read: a mapping kept open would keep every page read so far in this process's RSS
        with safe_open(str(self.where[name]), "pt") as h:
            return h.get_tensor(name)


class ShardWriter:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.pending: dict[str, torch.Tensor] = {}
        self.files: list[str] = []
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in tensors.items():
            assert k not in self.weight_map and k not in self.pending, f"tensor {k} written twice"
            self.pending[k] = v.detach().to("cpu").contiguous()

    def flush(self) -> None:
        """Write the pending tensors as one shard."""
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.files.append(name)
        self.weight_map.update({k: name for k in self.pending})
        self.total += sum(t.nbytes for t in self.pending.values())
        self.pending = {}

    def close(self) -> list[str]:
        """Write what is pending, give the shards their final names; return them."""
        self.flush()
        n = len(self.files)
        final = {f: "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                 for i, f in enumerate(self.files)}
        for old, new in final.items():
            (self.folder / old).rename(self.folder / new)
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": {k: final[v] for k, v in sorted(self.weight_map.items())}}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2))
        return list(final.values())
