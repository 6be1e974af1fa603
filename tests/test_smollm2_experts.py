"""The SmolLM2 experts' data, fine-tuning and zoo build. The real 135M fine-tunes take minutes
(scripts/smollm2_results.py runs them); here the same code trains a tiny Llama with a BPE
tokenizer trained on the fly, so the build, its resume and its task files are checked in CI."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.models import smollm2_experts as sx


def test_french_numbers_follow_the_spelling_rules():
    spelt = {0: "zéro", 16: "seize", 17: "dix-sept", 21: "vingt et un", 22: "vingt-deux",
             70: "soixante-dix", 71: "soixante et onze", 77: "soixante-dix-sept",
             80: "quatre-vingts", 81: "quatre-vingt-un", 91: "quatre-vingt-onze",
             99: "quatre-vingt-dix-neuf", 100: "cent", 101: "cent un",
             200: "deux cents", 280: "deux cent quatre-vingts", 342: "trois cent quarante-deux",
             999: "neuf cent quatre-vingt-dix-neuf"}
    assert {n: sx.french(n) for n in spelt} == spelt
    english = {0: "zero", 13: "thirteen", 40: "forty", 42: "forty-two", 100: "one hundred",
               342: "three hundred forty-two", 999: "nine hundred ninety-nine"}
    assert {n: sx.english(n) for n in english} == english
    for spell in (sx.french, sx.english):
        with pytest.raises(ValueError, match="1000"):
            spell(1000)
    # the French items ask in English words, so no digit is shared with the sums' prompts
    assert all(not any(c.isdigit() for c in q) for q, _ in sx.items("french", "test"))


def test_splits_are_fixed_disjoint_and_sized():
    for skill in ("add", "french"):
        splits = {s: sx.items(skill, s) for s in ("train", "search", "test")}
        prompts = {s: {q for q, _ in rows} for s, rows in splits.items()}
        assert len(prompts["test"]) == sx.SPLIT_SIZES["test"]
        assert len(prompts["search"]) == sx.SPLIT_SIZES["search"]
        assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["search"]
        assert not prompts["search"] & prompts["test"]
        assert sx.items(skill, "test") == splits["test"]  # the same on every call
    q, a = sx.items("add", "test")[0]
    x, y = (int(v) for v in q.removesuffix(" =").split(" + "))
    assert a == f" {x + y}"
    # the cross-domain items ask for the held-out sums in French, and have nothing to train on
    cross = sx.items("add_french", "test")
    assert [a for _, a in cross] == [f" {sx.french(int(a))}" for _, a in sx.items("add", "test")]
    with pytest.raises(ValueError, match="no training split"):
        sx.items("add_french", "train")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny Llama and a byte-level BPE tokenizer trained on the items' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny") / "base"
    text = [q + a for skill in ("add", "french", "add_french") for split in ("search", "test")
            for q, a in sx.items(skill, split)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, tie_word_embeddings=True,
                      eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def test_fine_tuning_teaches_the_answers_and_exact_match_is_lm_evals_acc(tiny_base):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = LlamaForCausalLM.from_pretrained(tiny_base)
    rows = sx.items("add", "search")[:40]

    def answer_loss() -> float:
        ids, mask, labels = sx._batch(tok, rows)
        with torch.no_grad():
            return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)

    before = answer_loss()
    sx.fine_tune(model, tok, "add", sx.ExpertSettings(steps=30, lr=3e-3, batch=16))
    assert answer_loss() < before - 1.0  # the held-out answers got likelier
    # exact match, item by item without padding: every answer token the greedy choice
    by_hand = 0
    for q, a in rows:
        whole, start = sx.encode(tok, q, a)
        with torch.no_grad():
            pred = model(torch.tensor([whole])).logits[0, start - 1:-1].argmax(-1)
        by_hand += int(pred.tolist() == whole[start:])
    assert sx.exact_match(model, tok, rows, batch=7) == by_hand / len(rows)


def test_the_zoo_builds_resumes_and_writes_tasks_lm_eval_reads(tiny_base, tmp_path):
    settings = {"math": sx.ExpertSettings(steps=2, batch=4),
                "french": sx.ExpertSettings(steps=2, batch=4, seed=1)}
    logs: list[str] = []
    dirs = sx.build_experts(tmp_path, tiny_base, settings, log=logs.append)
    assert set(dirs) == {"base", "math", "french", "tasks"} and sx.experts_ready(tmp_path)
    meta = json.loads((tmp_path / "zoo.json").read_text())
    assert set(meta["exact_match_test"]) == {"base", "math", "french"}
    assert set(meta["exact_match_test"]["math"]) == set(sx.SKILLS)
    stamp = (tmp_path / "math" / "model.safetensors").stat().st_mtime_ns
    # a rerun (say after Ctrl-C during the second expert) reuses finished experts
    (tmp_path / "zoo.json").unlink()
    sx.build_experts(tmp_path, tiny_base, settings, log=logs.append)
    assert (tmp_path / "math" / "model.safetensors").stat().st_mtime_ns == stamp
    assert any("reusing" in line for line in logs)
    # other settings retrain
    sx.build_experts(tmp_path, tiny_base, settings | {"math": sx.ExpertSettings(steps=3, batch=4)},
                     log=logs.append)
    assert (tmp_path / "math" / "model.safetensors").stat().st_mtime_ns != stamp

    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp_path / "tasks"))
    names = {f"{s}_{split}" for s in sx.SKILLS for split in sx.SPLIT_SIZES}
    assert names <= set(tm.all_tasks)
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "add_test.jsonl").open()]
    assert [(r["q"], r["a"]) for r in rows] == sx.items("add", "test")
