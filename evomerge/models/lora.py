"""PEFT LoRA adapters as merge sources (`base+adapter`, mergekit's syntax): the adapter's
low-rank factors are read from its own files, and the source it stands for is the base with
each targeted weight W replaced by W + scaling · B·A, which is what peft's `merge_and_unload`
computes. Nothing merged is written to disk: `AdapterModel.read` forms one tensor when asked,
and the in-place builder keeps only the factors resident (`lowrank`).

Refused, by name: a directory without `adapter_config.json`, an adapter that is not LoRA (or
is DoRA, whose merge rescales columns), saved full modules (`modules_to_save`), embedding
targets, and an adapter whose modules do not fit the base (another base model)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evomerge.models.refs import SourceError, resolve_model_ref, split_adapter
from evomerge.models.safetensors_io import SafetensorsError, SafetensorsFile
from evomerge.models.source import SourceModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # how peft names the wrapped model's modules in saved files


@dataclass
class LowRank:
    """One targeted weight's update: scaling · B·A (transposed for fan-in-fan-out layers)."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scaling: float
    transpose: bool = False

    def delta(self) -> torch.Tensor:
        """The dense update, in float32."""
        d = (self.b.float() @ self.a.float()) * self.scaling
        return d.T if self.transpose else d

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight` with the update added, in its own dtype (the arithmetic in float32, as
        peft does for float32 models): what every reader of an adapter source gets."""
        return (weight.float() + self.delta()).to(weight.dtype)

    def to(self, device: torch.device) -> LowRank:
        """The factors on `device` (what the in-place builder keeps resident)."""
        return LowRank(self.a.to(device), self.b.to(device), self.scaling, self.transpose)

    @property
    def nbytes(self) -> int:
        """Bytes the two factors take."""
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()


@dataclass
class AdapterModel(SourceModel):
    """A base model seen through a LoRA adapter: its tensors are the adapter-merged ones.
    `path`, `config` and `entries` are the base's (a tokenizer and a live model load from
    the base); `adapter_path` names the adapter in errors."""

    base: SourceModel | None = None
    adapter_path: Path | None = None
    lowrank: dict[str, LowRank] = field(default_factory=dict)

    def read(self, name: str) -> torch.Tensor:
        """The base tensor plus the adapter's update where it targets it, in the base's dtype
        (the arithmetic in float32, as peft does for float32 models)."""
        assert self.base is not None
        weight = self.base.read(name)
        update = self.lowrank.get(name)
        return weight if update is None else update.apply(weight)

    def close(self) -> None:
        """Close the base's files."""
        if self.base is not None:
            self.base.close()


def open_source(ref: str, allow_pickle: bool = False, allow_download: bool = False
                ) -> SourceModel:
    """A model directory, or `base+adapter`: the base seen through a LoRA adapter."""
    base_ref, adapter_ref = split_adapter(ref)
    base = SourceModel.open(base_ref, allow_pickle, allow_download)
    if adapter_ref is None:
        return base
    try:
        lowrank = read_lora(resolve_model_ref(adapter_ref, allow_download), base)
    except BaseException:
        base.close()
        raise
    return AdapterModel(path=base.path, config=base.config, entries=base.entries, base=base,
                        adapter_path=Path(adapter_ref), lowrank=lowrank)


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """peft's rank/alpha patterns: a key matches a module name ending in it (as a regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return float(value)
    return float(default)


def read_lora(path: Path, base: SourceModel) -> dict[str, LowRank]:
    """Base tensor name → its low-rank update, checked against the base's shapes."""
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.exists():
        raise SourceError(f"{path}: no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{cfg_path}: not valid JSON: {exc}") from None
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise SourceError(f"{cfg_path}: peft_type {kind!r} is not a LoRA adapter; only LoRA "
                          "adapters can be merge sources")
    for key, why in (("use_dora", "DoRA rescales the merged weight's columns"),
                     ("modules_to_save", "it replaces whole modules"),
                     ("layer_replication", "it changes the base's layers")):
        if cfg.get(key):
            raise SourceError(f"{cfg_path}: {key} is set, which is not supported as a merge "
                              f"source ({why})")
    weights = path / ADAPTER_WEIGHTS
    if not weights.exists():
        raise SourceError(f"{path}: no {ADAPTER_WEIGHTS} (save the adapter with safetensors)")
    try:
        sf = SafetensorsFile(weights)
    except SafetensorsError as exc:
        raise SourceError(str(exc)) from None
    try:
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for name in sf.entries:
            if "lora_embedding_" in name:
                raise SourceError(f"{weights}: {name}: LoRA on embeddings is not supported")
            m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
            if m is None:
                raise SourceError(f"{weights}: tensor {name} is not a LoRA factor")
            module = m.group(1).removeprefix(_PREFIX)
            factors.setdefault(module, {})[m.group(2)] = sf.read(name)
    except SafetensorsError as exc:
        raise SourceError(str(exc)) from None
    finally:
        sf.close()
    alpha = float(cfg.get("lora_alpha", 8))
    rslora = bool(cfg.get("use_rslora"))
    transpose = bool(cfg.get("fan_in_fan_out"))
    where = f"{path} (for {cfg.get('base_model_name_or_path') or 'an unnamed base'})"
    out: dict[str, LowRank] = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise SourceError(f"{weights}: {module} has lora_{''.join(pair)} but not both "
                              "factors")
        a, b = pair["A"], pair["B"]
        target = f"{module}.weight"
        entry = base.entries.get(target)
        if entry is None:
            raise SourceError(f"{where}: targets {target}, which {base.path} does not have; "
                              "the adapter is for another base model")
        want = (b.shape[0], a.shape[1])
        shape = tuple(entry.shape)[::-1] if transpose else tuple(entry.shape)
        if len(shape) != 2 or shape != want or a.shape[0] != b.shape[1]:
            raise SourceError(f"{where}: {target} is {tuple(entry.shape)} in {base.path}, but "
                              f"the adapter's factors make {want}; the adapter is for another "
                              "base model")
        r = a.shape[0]
        alpha_m = _pattern_value(cfg.get("alpha_pattern"), module, alpha)
        scaling = alpha_m / math.sqrt(r) if rslora else alpha_m / r
        out[target] = LowRank(a, b, scaling, transpose)
    if not out:
        raise SourceError(f"{weights}: holds no LoRA factors")
    return out


__all__ = ["AdapterModel", "LowRank", "open_source", "read_lora"]
