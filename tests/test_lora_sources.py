"""PEFT LoRA adapters as merge sources (issue 25, part 1), checked against peft itself: a
merge with `base+adapter` sources equals the same merge of peft's `merge_and_unload` models,
in place and on disk, and bad adapters are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.merge.directory import merge_to_directory
from evomerge.merge.errors import MergeError
from evomerge.merge.inplace import CandidateBuilder
from evomerge.merge.options import MergeOptions
from evomerge.models.safetensors_io import SafetensorsFile
from evomerge.recipe import Recipe
from evomerge.recipe_file import load_recipe

peft = pytest.importorskip("peft")  # lm-eval's hf extra brings it

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _adapter(base: Path, out: Path, seed: int, config: object) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft.get_peft_model(model, config).save_pretrained(out)


@pytest.fixture(scope="module")
def adapters(zoo, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters over the zoo's base (random factors, as after training), and the
    full models peft's merge_and_unload makes of them."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    out: dict[str, Path] = {}
    for name, seed, extra in (("x", 1, {}), ("y", 2, {"use_rslora": True,
                                                       "alpha_pattern": {"v_proj": 32}})):
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                              init_lora_weights=False, **extra)
        _adapter(zoo["base"], root / name, seed, cfg)
        model = AutoModelForCausalLM.from_pretrained(zoo["base"], dtype=torch.float32)
        merged = peft.PeftModel.from_pretrained(model, root / name).merge_and_unload()
        merged.save_pretrained(root / f"{name}_full")
        for f in Path(zoo["base"]).iterdir():  # the tokenizer files
            if "token" in f.name and not (root / f"{name}_full" / f.name).exists():
                shutil.copy(f, root / f"{name}_full" / f.name)
        out[name], out[f"{name}_full"] = root / name, root / f"{name}_full"
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        sf = SafetensorsFile(f)
        out.update({n: sf.read(n) for n in sf.entries})
        sf.close()
    return out


def _recipe(base: Path, sources: list[str]) -> Recipe:
    return Recipe.from_dict({"method": "task_arithmetic", "base": str(base),
                             "parameters": {"weight": [0.7, 0.4]},
                             "sources": [{"model": s} for s in sources], "dtype": "float32"})


@pytest.mark.smoke  # on the newest mlflow / peft too (.ci/run step 3)
def test_an_adapter_merge_equals_merging_peft_merge_and_unload_models(zoo, adapters,
                                                                        tmp_path):
    base = zoo["base"]
    via_adapters = _recipe(base, [f"{base}+{adapters['x']}", f"{base}+{adapters['y']}"])
    via_full = _recipe(base, [str(adapters["x_full"]), str(adapters["y_full"])])
    merge_to_directory(via_adapters, tmp_path / "a", MergeOptions())
    merge_to_directory(via_full, tmp_path / "f", MergeOptions())
    a, f = _tensors(tmp_path / "a"), _tensors(tmp_path / "f")
    assert a.keys() == f.keys()
    touched = 0
    for name in a:
        torch.testing.assert_close(a[name], f[name], rtol=0, atol=2e-6)
        touched += any(t in name for t in TARGETS)
    assert touched >= 3 * len(TARGETS)  # three layers, every target
    # the same merge built in place: factors resident, not full copies of the sources
    live = {}
    for key, recipe, refs in (("adapters", via_adapters, via_adapters.sources),
                              ("full", via_full, via_full.sources)):
        builder = CandidateBuilder(str(base), [s.model for s in refs], dtype="float32")
        model = builder.build(recipe)
        live[key] = ({n: p.detach().clone() for n, p in model.state_dict().items()},
                     builder.resident_bytes)
        builder.close()
    for name, t in live["full"][0].items():
        torch.testing.assert_close(live["adapters"][0][name], t, rtol=0, atol=2e-6)
    assert live["adapters"][1] < 0.6 * live["full"][1]  # base + factors vs base + 2 models


def test_mergekit_yaml_and_recipes_take_base_plus_adapter(zoo, adapters, tmp_path):
    base = zoo["base"]
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
        "models": [{"model": f"{base}+{adapters['x']}", "parameters": {"weight": 0.7}},
                   {"model": f"{base}+{adapters['y']}", "parameters": {"weight": 0.4}}]}))
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump({
        "method": "task_arithmetic", "base": str(base), "dtype": "float32",
        "parameters": {"weight": [0.7, 0.4]},
        "sources": [{"model": str(base), "adapter": str(adapters["x"])},
                    {"model": str(base), "adapter": str(adapters["y"])}]}))
    mk, ours = load_recipe(tmp_path / "mk.yaml"), load_recipe(tmp_path / "ours.yaml")
    assert [s.model for s in mk.sources] == [s.model for s in ours.sources]
    merge_to_directory(mk, tmp_path / "out", MergeOptions())
    from evomerge.mergekit_yaml import mergekit_text

    text = yaml.safe_load(mergekit_text(ours, tmp_path / "out"))
    back = [m["model"] for m in text["models"]]
    assert all("+" in m for m in back)  # each part made relative on its own
    assert (tmp_path / "out" / back[0].split("+")[1] / "adapter_config.json").resolve() \
        == (adapters["x"] / "adapter_config.json").resolve()


def test_bad_adapters_are_named(zoo, zoo_bf16, adapters, tmp_path):
    base = zoo["base"]

    def merge(adapter: Path, on: Path = base) -> None:
        recipe = _recipe(on, [f"{on}+{adapter}", f"{on}+{adapters['x']}"])
        merge_to_directory(recipe, tmp_path / "out", MergeOptions(overwrite=True))

    bare = tmp_path / "bare"
    shutil.copytree(adapters["x"], bare)
    (bare / "adapter_config.json").unlink()
    with pytest.raises(MergeError, match=r"sources\[0\].model: .*bare: no adapter_config.json"):
        merge(bare)
    ia3 = tmp_path / "ia3"
    _adapter(base, ia3, 3, peft.IA3Config(target_modules=["k_proj", "down_proj"],
                                          feedforward_modules=["down_proj"]))
    with pytest.raises(MergeError, match="peft_type 'IA3' is not a LoRA adapter"):
        merge(ia3)
    dora = tmp_path / "dora"
    shutil.copytree(adapters["x"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(MergeError, match="use_dora is set"):
        merge(dora)
    # an adapter trained on the three-layer base, over a two-layer model
    other = zoo_bf16["a"]
    with pytest.raises(MergeError, match="the adapter is for another base model"):
        merge(adapters["x"], other)
    assert not (tmp_path / "out").exists()  # nothing half-written
    # on the command line, a mergekit config whose adapter directory is missing (mergekit's
    # structured form, {model, lora})
    from typer.testing import CliRunner

    from evomerge.cli import app

    (tmp_path / "mk.yml").write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": {"model": {"path": str(base)}, "lora": {"path": "./adaptrs/x"}},
                    "parameters": {"weight": 0.5}}]}))
    res = CliRunner().invoke(app, ["merge", str(tmp_path / "mk.yml"), str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "sources[0].model (its adapter): './adaptrs/x' is not a model directory" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_a_search_over_adapters_scores_what_a_search_over_merged_models_scores(
        zoo, tasks_dir, adapters, tmp_path):
    from evomerge.run.search_run import SearchRun

    from .test_merge_search import log_lines, merge_config, write_config

    base = str(zoo["base"])
    runs = {}
    for kind, sources in (
            ("adapters", [{"model": base, "adapter": str(adapters["x"])},
                          f"{base}+{adapters['y']}"]),
            ("full", [str(adapters["x_full"]), str(adapters["y_full"])])):
        data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=4,
                            space={"kind": "ps", "method": "task_arithmetic", "groups": 2})
        data["task"]["sources"] = sources
        SearchRun.create(write_config(tmp_path / f"{kind}.yaml", data), tmp_path / kind).run()
        runs[kind] = log_lines(tmp_path / kind)
    for a, f in zip(runs["adapters"], runs["full"], strict=True):
        assert a["genome"] == f["genome"] and a["status"] == f["status"] == "ok"
        assert a["objectives"] == pytest.approx(f["objectives"], abs=1e-6)


def test_a_mistyped_adapter_entry_in_a_search_config_is_named(zoo, tasks_dir, tmp_path):
    from evomerge.errors import ConfigError
    from evomerge.search_config import load_config

    from .test_merge_search import merge_config, write_config

    data = merge_config(zoo, tasks_dir, {"kind": "random"})
    data["task"]["sources"] = [str(zoo["a"]), {"model": str(zoo["base"]), "adaptr": "x"}]
    with pytest.raises(ConfigError, match=r"task.sources: \[1\]: a model reference, or "
                                          r"\{model: base, adapter: dir\}.*got keys adaptr, "
                                          "model"):
        load_config(write_config(tmp_path / "c.yaml", data))
