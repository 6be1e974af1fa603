"""Evaluators against independent computations, on a tiny model built by the test fixtures and
task files written here (lm-eval runs offline on them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from evomerge.evaluate.base import EvaluatorError, ForwardTimer
from evomerge.evaluate.registry import build_evaluator
from evomerge.evaluate.specs import EvaluatorSpec


def spec(**data):
    return TypeAdapter(EvaluatorSpec).validate_python(data)


@pytest.fixture(scope="module")
def lm(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(zoo["a"]).eval()
    return model, AutoTokenizer.from_pretrained(zoo["a"])


def _next_word(model, tok, text: str) -> str:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        nxt = int(model(ids).logits[0, -1].argmax())
    return tok.convert_ids_to_tokens(nxt)


def _loglik(model, tok, ctx: str, cont: str) -> float:
    c, w = tok(ctx)["input_ids"], tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([c + w])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return float(sum(logp[len(c) - 1 + i, t] for i, t in enumerate(w)))


def write_tasks(root: Path, model, tok, n: int = 24) -> dict[str, Path]:
    """A multiple-choice task and a generation task (exact match) with search and test twins;
    half the generation targets are the model's own greedy answer, so the expected
    per-sample exact match is known."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("search", "test"):
        mc, gen = [], []
        for i in range(n):
            a, b, c = (int(x) for x in rng.integers(4, 200, 3))
            mc.append({"q": f"w{a} w{a + 1}", "choices": [f"w{b}", f"w{c}", f"w{a + 2}"],
                       "label": int(rng.integers(3))})
            prompt = f"w{c} w{b} w{a}"
            answer = _next_word(model, tok, prompt) if i % 2 == 0 else "w3"
            gen.append({"q": prompt, "answer": answer})
        for name, rows in (("mc", mc), ("gen", gen)):
            path = root / f"{name}_{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            files[f"{name}_{split}"] = path
    for split in ("search", "test"):
        (root / f"mc_{split}.yaml").write_text(f"""task: mc_{split}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {files[f'mc_{split}']}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
        (root / f"gen_{split}.yaml").write_text(f"""task: gen_{split}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {files[f'gen_{split}']}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
generation_kwargs:
  until: ["</s>"]
  max_gen_toks: 1
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return files


@pytest.fixture(scope="module")
def tasks(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    files = write_tasks(root, *lm)
    return root, files


@pytest.mark.smoke
def test_lm_eval_multiple_choice_and_generation_match_independent_scoring(lm, tasks):
    model, tok = lm
    root, files = tasks
    ev = build_evaluator(spec(name="skills", kind="lm_eval", include_path=[str(root)],
                              tasks=["mc_search", str(root / "gen_search.yaml")],
                              heldout_tasks=["mc_test", "gen_test"]))
    assert {"mc_search/acc", "mc_search/p_correct", "gen_search/exact_match"} <= \
        set(ev.metrics())
    for split, suffix in (("search", "search"), ("heldout", "test")):
        out = ev.evaluate(model, tok, split)
        rows = [json.loads(x) for x in files[f"mc_{suffix}"].read_text().splitlines()]
        lls = np.array([[_loglik(model, tok, r["q"], " " + c) for c in r["choices"]]
                        for r in rows])
        acc = (lls.argmax(1) == [r["label"] for r in rows]).astype(np.float32)
        z = np.exp(lls - lls.max(1, keepdims=True))
        p = z[np.arange(len(rows)), [r["label"] for r in rows]] / z.sum(1)
        # held-out results come back under the search tasks' names
        np.testing.assert_array_equal(out.samples["mc_search/acc"], acc)
        np.testing.assert_allclose(out.samples["mc_search/p_correct"], p, rtol=1e-4)
        assert out.metrics["mc_search/acc"] == pytest.approx(acc.mean())
        em = out.samples["gen_search/exact_match"]
        np.testing.assert_array_equal(em[0::2], 1.0)  # the model's own greedy answers
        assert out.metrics["gen_search/exact_match"] == pytest.approx(em.mean())
        if split == "search":  # the anchor rung: chosen documents of one task only
            some = ev.evaluate(model, tok, split, items={"mc_search/acc": [7, 2, 5],
                                                         "mc_search/p_correct": [0, 7]})
            assert set(some.samples) >= {"mc_search/acc", "mc_search/p_correct"}
            assert "gen_search/exact_match" not in some.samples
            np.testing.assert_array_equal(some.samples["mc_search/acc"], acc[[7, 2, 5]])
            np.testing.assert_allclose(some.samples["mc_search/p_correct"], p[[0, 7]],
                                       rtol=1e-4)


@pytest.mark.smoke
def test_lm_eval_split_by_fraction_and_options_pass_through(lm, tasks):
    model, tok = lm
    root, _ = tasks
    ev = build_evaluator(spec(name="mc", kind="lm_eval", include_path=[str(root)],
                              tasks=["mc_search"], heldout_fraction=0.25,
                              options={"num_fewshot": 2, "limit": 5}))
    s, h = ev.evaluate(model, tok, "search"), ev.evaluate(model, tok, "heldout")
    assert len(s.samples["mc_search/acc"]) == 5 and len(h.samples["mc_search/acc"]) == 5
    full = build_evaluator(spec(name="mc", kind="lm_eval", include_path=[str(root)],
                                tasks=["mc_search"], heldout_fraction=0.25))
    assert len(full.evaluate(model, tok, "search").samples["mc_search/acc"]) == 18
    assert len(full.evaluate(model, tok, "heldout").samples["mc_search/acc"]) == 6
    # two-shot prompts differ from zero-shot ones: the option reached lm-eval
    p2 = ev.evaluate(model, tok, "search").samples["mc_search/p_correct"]
    p0 = full.evaluate(model, tok, "search").samples["mc_search/p_correct"][:5]
    assert not np.allclose(p2, p0)
    # a multi-fidelity rung scores the leading share of the split's documents, the same ones
    whole = full.evaluate(model, tok, "search").samples["mc_search/p_correct"]
    rung = full.evaluate(model, tok, "search", fraction=0.25).samples["mc_search/p_correct"]
    assert len(rung) == 5  # ceil(0.25 x 18)
    np.testing.assert_allclose(rung, whole[:5], rtol=1e-5)
    assert len(ev.evaluate(model, tok, "search", 0.5).samples["mc_search/acc"]) == 3  # of 5


def test_lm_eval_task_objects_are_built_once(lm, tasks, monkeypatch):
    from lm_eval.tasks import TaskManager

    model, tok = lm
    root, _ = tasks
    ev = build_evaluator(spec(name="mc", kind="lm_eval", include_path=[str(root)],
                              tasks=["mc_search"], heldout_fraction=0.5))
    calls = []
    monkeypatch.setattr(TaskManager, "_load_spec",
                        lambda self, s: calls.append(s) or pytest.fail("rebuilt a task"))
    ev.evaluate(model, tok, "search")
    ev.evaluate(model, tok, "heldout")
    assert calls == []


@pytest.mark.parametrize("bad, match", [
    ({"tasks": ["nope_task"]}, "tasks\\[0\\]: 'nope_task' is not a known lm-eval task"),
    ({"tasks": ["missing/dir/task.yaml"]}, "tasks\\[0\\]: task file missing/dir/task.yaml"),
    ({"options": {"num_fewshots": 1}}, "options.num_fewshots: not an argument"),
    ({"options": {"use_cache": "x"}}, "options.use_cache: set by evomerge"),
    ({"include_path": ["/no/such/dir"]}, "include_path\\[0\\]"),
])
def test_lm_eval_bad_specs_name_the_field(tasks, bad, match):
    root, _ = tasks
    data = {"name": "e", "kind": "lm_eval", "include_path": [str(root)],
            "tasks": ["mc_search"], "heldout_fraction": 0.5, **bad}
    with pytest.raises(EvaluatorError, match=match):
        build_evaluator(spec(**data), "cfg.yaml")


def test_perplexity_matches_the_models_own_loss(lm, tmp_path):
    model, tok = lm
    docs = [" ".join(f"w{(i * 7 + j * 3) % 300}" for j in range(5 + i)) for i in range(8)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ev = build_evaluator(spec(name="ppl", kind="perplexity", data=str(data),
                              heldout_fraction=0.25, batch_size=3, max_length=6))
    out = ev.evaluate(model, tok, "search")
    nll, n = [], []
    for d in docs[:6]:
        ids = tok(d)["input_ids"]
        total = 0.0
        for s in range(0, len(ids) - 1, 5):  # windows of 6 tokens score 5 each
            w = torch.tensor([ids[s:s + 6]])
            with torch.no_grad():
                total += float(model(w, labels=w).loss) * (w.shape[1] - 1)
        nll.append(total)
        n.append(len(ids) - 1)
    np.testing.assert_allclose(out.samples["perplexity"], np.exp(-np.array(nll) / n), rtol=1e-4)
    assert out.metrics["perplexity"] == pytest.approx(math.exp(sum(nll) / sum(n)), rel=1e-4)
    assert len(ev.evaluate(model, tok, "heldout").samples["nll"]) == 2
    rung = ev.evaluate(model, tok, "search", fraction=0.5)  # a multi-fidelity rung
    np.testing.assert_allclose(rung.samples["perplexity"], out.samples["perplexity"][:3])


def test_classification_accuracy_matches_direct_scoring(lm, tmp_path):
    model, tok = lm
    rows = [{"text": f"w{i} w{i + 3}", "label": ["w10", "w20", "w30"][i % 3]} for i in range(12)]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = build_evaluator(spec(name="cls", kind="classification", data=str(data),
                              heldout_fraction=0.5, template="{text} w1"))
    out = ev.evaluate(model, tok, "search")
    labels = ["w10", "w20", "w30"]
    ll = np.array([[_loglik(model, tok, r["text"] + " w1", " " + lab) for lab in labels]
                   for r in rows[:6]])
    gold = np.array([labels.index(r["label"]) for r in rows[:6]])
    np.testing.assert_array_equal(out.samples["accuracy"], (ll.argmax(1) == gold))
    z = np.exp(ll - ll.max(1, keepdims=True))
    np.testing.assert_allclose(out.samples["p_label"], z[np.arange(6), gold] / z.sum(1),
                               rtol=1e-4)
    rung = ev.evaluate(model, tok, "search", fraction=0.3)  # ceil(0.3 x 6) = 2 items
    np.testing.assert_array_equal(rung.samples["accuracy"], out.samples["accuracy"][:2])
    # the anchor rung: chosen items per metric, in the order asked, scored as in full
    chosen = ev.evaluate(model, tok, "search", items={"accuracy": [4, 1], "p_label": [5]})
    np.testing.assert_array_equal(chosen.samples["accuracy"], out.samples["accuracy"][[4, 1]])
    np.testing.assert_allclose(chosen.samples["p_label"], out.samples["p_label"][[5]],
                               rtol=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1", "label": "w2"}\n{oops\n')
    with pytest.raises(EvaluatorError, match="bad.jsonl: line 2: not valid JSON"):
        build_evaluator(spec(name="c", kind="classification", data=str(bad)))


def test_user_callable_receives_the_live_model(lm, tmp_path):
    model, tok = lm
    (tmp_path / "my_eval.py").write_text(
        "def score(model, tokenizer, split, scale=1.0):\n"
        "    n = sum(p.numel() for p in model.parameters())\n"
        "    return {'size': n * scale, 'split_is_search': float(split == 'search')}, "
        "{'size': [0.5, 1.0]}\n")
    ev = build_evaluator(spec(name="u", kind="callable", function="my_eval:score",
                              python_path=[str(tmp_path)], metrics=["size"],
                              options={"scale": 2.0}))
    out = ev.evaluate(model, tok, "search")
    assert out.metrics["size"] == 2.0 * sum(p.numel() for p in model.parameters())
    assert out.metrics["split_is_search"] == 1.0
    np.testing.assert_array_equal(out.samples["size"], [0.5, 1.0])
    with pytest.raises(EvaluatorError, match="has no attribute 'nope'"):
        build_evaluator(spec(name="u", kind="callable", function="my_eval:nope",
                             python_path=[str(tmp_path)], metrics=["size"]))


def test_forward_timer_counts_model_calls(lm):
    model, _ = lm
    timer = ForwardTimer(model)
    with torch.no_grad():
        model(torch.tensor([[4, 5, 6]]))
        model(torch.tensor([[4, 5]]))
    timer.close()
    assert timer.calls == 2 and timer.seconds > 0
