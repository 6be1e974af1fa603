"""What a merge into a directory is asked to do (`MergeOptions`) and what it reports
(`MergeSummary`), shared by the parameter merge and the route export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evomerge.merge.errors import MergeError


@dataclass
class MergeOptions:
    """How to merge (device, threads, memory bound) and what to allow (overwrite, pickles,
    downloads, non-finite weights); the recipe says what to merge."""

    device: str = "cpu"
    shard_size: int = 2 * 1024**3
    overwrite: bool = False
    allow_nonfinite: bool = False
    allow_pickle: bool = False
    allow_download: bool = False
    threads: int = 2
    max_inflight_elements: int = 64 * 1024 * 1024
    progress: bool = False
    # more files for the output directory (name → text), written before it is renamed into
    # place, so they appear together with the weights or not at all
    extra_files: dict[str, str] | None = None


@dataclass
class MergeSummary:
    """What a finished merge wrote, for the command's closing line and the benchmarks."""

    out_dir: Path
    tensors: int
    shards: int
    bytes_written: int
    seconds: float


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5GiB', '123' (bytes) → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise MergeError(f"shard size: cannot parse {text!r} (try 500MB or 2GB)") from None
    if unit not in units or value <= 0:
        raise MergeError(f"shard size: cannot parse {text!r} (try 500MB or 2GB)")
    return int(value * units[unit])
