"""Peak memory of a merge is bounded by the tensors in flight, not by the model size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.models.tiny import llama_config, write_family

from .conftest import write_yaml

_WRAPPER = """
import resource, sys
from evomerge.cli import app
sys.argv = ["evomerge", *sys.argv[1:]]
try:
    app()
except SystemExit as exc:
    if exc.code:
        raise
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(*args: str) -> float:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True,
                         text=True, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("PEAK_KB")][0]
    return int(line.split()[1]) / 1024


def model_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


@pytest.mark.slow
def test_peak_rss_is_bounded_by_tensors_in_flight(zoo, tmp_path):
    # 96 layers of small tensors: ~76M parameters, 152 MB per bf16 model, 4 models read.
    cfg = llama_config(vocab_size=1024, hidden_size=256, num_layers=96, intermediate_size=688,
                       num_heads=4)
    big = write_family(tmp_path / "big", cfg, ["a", "b", "c"], dtype="bfloat16",
                       shard_size=64 * 1024**2)
    size = model_bytes(big["base"])
    assert size > 140e6

    def recipe(z, name):
        return write_yaml(tmp_path / f"{name}.yaml", {
            "method": "ties", "base": str(z["base"]),
            "sources": [{"model": str(z[k]), "parameters": {"weight": 0.4, "density": 0.5}}
                        for k in ("a", "b", "c")]})

    baseline = peak_rss_mb("merge", str(recipe(zoo, "small")), str(tmp_path / "small_out"))
    peak = peak_rss_mb("merge", str(recipe(big, "big")), str(tmp_path / "big_out"),
                       "--shard-size", "32MB")
    out_size = model_bytes(tmp_path / "big_out")
    assert abs(out_size - size) < 100_000  # same tensors; headers differ slightly
    growth = peak - baseline
    print(f"baseline {baseline:.0f} MB, peak {peak:.0f} MB, model {size / 1e6:.0f} MB x 4 read")
    # Holding one model (let alone four) would add >= 145 MB; the tensors in flight are ~25 MB.
    assert growth < 0.5 * size / 2**20, (baseline, peak)
