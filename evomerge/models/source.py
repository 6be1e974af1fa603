"""Opening a source model: a local directory or a Hugging Face repo id from the local cache
(references are resolved by `evomerge.models.refs`).

A SourceModel knows every tensor's file, dtype and shape from the headers alone, and reads a
tensor only when asked. Pickled checkpoints (`.bin`, `.pt`) are refused unless explicitly
allowed, since loading them can run arbitrary code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evomerge.models.refs import SourceError, resolve_model_ref
from evomerge.models.safetensors_io import SafetensorsError, SafetensorsFile, TensorEntry

__all__ = ["SourceError", "SourceModel", "resolve_model_ref"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class SourceModel:
    """A model directory whose tensors are read lazily."""

    path: Path
    config: dict
    files: list[SafetensorsFile] = field(default_factory=list)
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    _file_of: dict[str, SafetensorsFile] = field(default_factory=dict)
    _pickled: dict[str, torch.Tensor] | None = None

    @classmethod
    def open(cls, ref: str, allow_pickle: bool = False, allow_download: bool = False
             ) -> SourceModel:
        """Resolve a path or hub id and index its tensors from headers (pickles only if allowed)."""
        path = resolve_model_ref(ref, allow_download=allow_download)
        config: dict = {}
        cfg_path = path / "config.json"
        if cfg_path.exists():
            try:
                config = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as exc:
                raise SourceError(f"{cfg_path}: not valid JSON: {exc}") from None
        model = cls(path=path, config=config)
        st_files = _safetensors_files(path)
        if st_files:
            for f in st_files:
                try:
                    sf = SafetensorsFile(f)
                except SafetensorsError as exc:
                    raise SourceError(str(exc)) from None
                model.files.append(sf)
                for name, entry in sf.entries.items():
                    if name in model.entries:
                        raise SourceError(f"{f}: tensor {name} also stored in "
                                          f"{model._file_of[name].path}")
                    model.entries[name] = entry
                    model._file_of[name] = sf
            return model
        pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickled:
            raise SourceError(f"{path}: no .safetensors weights found")
        if not allow_pickle:
            raise SourceError(
                f"{pickled[0]}: pickled weights can run arbitrary code when loaded; convert to "
                "safetensors, or pass --allow-pickle if you trust this file"
            )
        model._pickled = {}
        for p in pickled:
            try:
                state = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:
                raise SourceError(f"{p}: cannot load pickled weights: {exc}") from None
            for name, t in state.items():
                model._pickled[name] = t
                model.entries[name] = TensorEntry(name, t.dtype, tuple(t.shape), 0,
                                                  t.numel() * t.element_size())
        return model

    def read(self, name: str) -> torch.Tensor:
        """Load one tensor on demand; the caller owns the result."""
        if name not in self.entries:
            raise SourceError(f"{self.path}: missing tensor {name}")
        if self._pickled is not None:
            return self._pickled[name].clone()  # callers own what they read
        try:
            return self._file_of[name].read(name)
        except SafetensorsError as exc:
            raise SourceError(str(exc)) from None

    @property
    def architecture(self) -> str | None:
        """The model's class or type from config.json, to refuse merging unlike models."""
        arch = self.config.get("architectures")
        return arch[0] if arch else self.config.get("model_type")

    def close(self) -> None:
        """Close every safetensors file the model has open."""
        for f in self.files:
            f.close()


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise SourceError(f"{index}: not a safetensors index ({exc})") from None
        files = []
        for name in dict.fromkeys(weight_map.values()):
            f = path / name
            if not f.exists():
                raise SourceError(f"{index}: lists shard {name}, which does not exist")
            files.append(f)
        return files
    return sorted(path.glob("*.safetensors"))
