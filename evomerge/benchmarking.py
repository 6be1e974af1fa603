"""What the benchmark and results scripts under `scripts/` share: the machine facts a report
opens with, the synthetic bf16 Llama family they merge (built once, cached), its mergekit
recipes, a memory-copy bandwidth for the floor, and scoring recipes on lm-eval tasks.

The scripts import this module like any other (`from evomerge import benchmarking`), so
each stays runnable as `python scripts/NAME.py` from any directory. Nothing in the package
imports it. Heavy imports (torch, transformers, the merge engine) happen inside the
functions, so a script's `--help` stays fast.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

METHODS = ("linear", "ties", "dare_ties")  # the recipes `write_recipes` writes
VARIANTS = ("a", "b", "c")  # the fine-tune-like models of a zoo, beside its `base`
ZOO_VERSION = 1


@dataclass
class Model:
    """Sizes of one zoo: the shape of the Llama the four models share."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    shard_size: int

    def key(self) -> dict[str, int]:
        """What a cached zoo's marker must match for it to be reused (sizes and zoo version)."""
        return {"zoo_version": ZOO_VERSION, **self.__dict__}


FULL = Model(vocab_size=32000, hidden_size=768, num_layers=8, intermediate_size=2048,
             num_heads=12, shard_size=100_000_000)
QUICK = Model(vocab_size=2000, hidden_size=128, num_layers=2, intermediate_size=344,
              num_heads=4, shard_size=500_000)


def count_params(model: Model) -> int:
    """Number of weights in one model of the zoo, for per-parameter rates in reports."""
    from evomerge.models.tiny import llama_config, parameter_shapes

    cfg = llama_config(vocab_size=model.vocab_size, hidden_size=model.hidden_size,
                       num_layers=model.num_layers, intermediate_size=model.intermediate_size,
                       num_heads=model.num_heads)
    total = 0
    for shape in parameter_shapes(cfg).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def build_zoo(root: Path, model: Model, name: str) -> dict[str, Path]:
    """`base`, `a`, `b`, `c` under root/name; reused when its marker matches `model`."""
    from evomerge.models.tiny import llama_config, write_family

    zoo = root / name
    marker = zoo / "COMPLETE.json"
    dirs = {n: zoo / n for n in ("base", *VARIANTS)}
    if marker.exists() and json.loads(marker.read_text()) == model.key():
        print(f"zoo: reusing {zoo}", flush=True)
        return dirs
    print(f"zoo: building {zoo} ...", flush=True)
    t = time.perf_counter()
    shutil.rmtree(zoo, ignore_errors=True)
    cfg = llama_config(vocab_size=model.vocab_size, hidden_size=model.hidden_size,
                       num_layers=model.num_layers, intermediate_size=model.intermediate_size,
                       num_heads=model.num_heads)
    write_family(zoo, cfg, list(VARIANTS), dtype="bfloat16", shard_size=model.shard_size)
    marker.write_text(json.dumps(model.key()))  # last: a crash above leaves no marker
    print(f"zoo: built in {time.perf_counter() - t:.1f} s", flush=True)
    return dirs


def write_recipes(zoo: dict[str, Path], out: Path,
                  variants: Sequence[str] = VARIANTS) -> dict[str, Path]:
    """mergekit YAML for each of METHODS over `variants` of `zoo` (TIES and DARE-TIES on its
    `base`); the same file is given to both tools."""
    srcs = [str(zoo[v]) for v in variants]
    sparse = [{"model": s, "parameters": {"weight": 0.4, "density": 0.5}} for s in srcs]
    configs = {
        "linear": {"merge_method": "linear", "dtype": "bfloat16",
                   "models": [{"model": s, "parameters": {"weight": 0.34}} for s in srcs]},
        "ties": {"merge_method": "ties", "base_model": str(zoo["base"]), "dtype": "bfloat16",
                 "models": sparse},
        "dare_ties": {"merge_method": "dare_ties", "base_model": str(zoo["base"]),
                      "dtype": "bfloat16", "models": sparse},
    }
    paths = {}
    for method, cfg in configs.items():
        paths[method] = out / f"{method}.yaml"
        paths[method].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def copy_bandwidth(nbytes: int = 256 * 2**20, tries: int = 7) -> float:
    """Best memcpy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(tries):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def weight_bytes(d: Path) -> int:
    """Bytes of the safetensors files in a model folder, to measure data read or written."""
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def machine_info() -> list[str]:
    """Two report lines: CPU, cores, memory and OS; Python and library versions, with the
    checkout's `git describe` (`?` outside a git checkout)."""
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor() or "?")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent.parent)
    return [
        f"CPU: {cpu}, nproc {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()}), "
        f"{mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"(torch.get_num_threads {torch.get_num_threads()}), transformers "
        f"{version('transformers')}, mergekit {version('mergekit')}, evomerge "
        f"{version('evomerge')} (git {git.stdout.strip() or '?'})",
    ]


def score_recipes(zoo: Path, recipes: list[tuple[str, dict | Path]], tasks: list[str],
                  batch_size: int = 256) -> list[tuple[str, dict]]:
    """Each recipe built by `evomerge merge`'s engine (or a model directory as it is) and
    scored by lm-eval on `tasks` (files under zoo/tasks): {skill: acc}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluate.registry import build_evaluator
    from evomerge.evaluate.specs import LMEvalSpec
    from evomerge.merge.directory import merge_to_directory
    from evomerge.merge.options import MergeOptions
    from evomerge.recipe import Recipe

    spec = LMEvalSpec.model_validate({
        "name": "s", "kind": "lm_eval", "include_path": [str(zoo / "tasks")],
        "tasks": tasks, "heldout_tasks": tasks, "batch_size": batch_size})
    ev = build_evaluator(spec, "<results>")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in recipes:
            d = Path(tmp) / "m"
            if isinstance(r, Path):
                d = r
            else:
                merge_to_directory(Recipe.from_dict(r), d, MergeOptions(overwrite=True))
            model = AutoModelForCausalLM.from_pretrained(d, dtype="float32").eval()
            tok = AutoTokenizer.from_pretrained(d)
            m = ev.evaluate(model, tok, "heldout").metrics
            out.append((name, {t.rsplit("_", 1)[0]: m[f"{t}/acc"] for t in tasks}))
            print(f"scored {name}: {out[-1][1]}", flush=True)
    return out


def write_results(out: Path, text: str) -> None:
    """Write a results file's generated part, keeping the `## Reading` a person wrote below
    it in the file already there."""
    old = out.read_text() if out.exists() else ""
    reading = old[old.index("## Reading"):] if "## Reading" in old else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("\n" + reading if reading else ""))
    print(f"wrote {out}")


def worker_utilisation(lines: list[dict], workers: int) -> tuple[float, float]:
    """Busy time / (workers x span) from a trial log's `started` and `seconds`: over the
    steady state (first start to last start: after that no candidate is left to give an
    idle worker) and over the whole run (the drain included)."""
    t0, t_last = min(x["started"] for x in lines), max(x["started"] for x in lines)
    t_end = max(x["started"] + x["seconds"] for x in lines)

    def busy(until: float) -> float:
        return sum(max(0.0, min(x["started"] + x["seconds"], until) - x["started"])
                   for x in lines)

    return busy(t_last) / (workers * (t_last - t0)), busy(t_end) / (workers * (t_end - t0))

