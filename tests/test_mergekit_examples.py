"""mergekit's shipped example configs through both tools: the same YAML, the same model.

Each example in tests/data/mergekit_examples/ is one of mergekit's examples/*.yml with its
models swapped for the test zoo (header comments name the original). mergekit 0.1.5 (its
Python API, on CPU, offline) and `evomerge merge` each build it; the written tensors (names,
dtypes, values) and tokenizer files must agree. The examples say `dtype: float16` over float32
sources, so mergekit computes at float16: with --match-mergekit-precision evomerge must give
the very same bits; without it evomerge warns and merges in float32, and with the example's
dtype set to float32 both compute in float32 and agree within float rounding.

Runs only where the optional `mergekit` extra is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app

from .test_merge_cli import load_dir

pytest.importorskip("mergekit")
pytestmark = pytest.mark.mergekit

EXAMPLES = Path(__file__).parent / "data" / "mergekit_examples"
COMPARED = ["linear.yml", "ties.yml", "bio-merge.yml", "gradient-slerp.yml", "mega.yml",
            "orcamini-platy-44layer.yml"]
# mergekit's other shipped examples, and why they are not compared here
NOT_COMPARED = {
    "gpt2-small.yml": "a passthrough stack of GPT-2 layers; routes run Llama, Mistral, Qwen2 "
                      "and Gemma2-style decoders",
    "arcee_fusion.yml": "arcee_fusion is not an evomerge method (test_mergekit_import checks "
                        "that it is refused by name)",
    "chipalign.yml": "nuslerp is not an evomerge method (refused by name, as above)",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "merges.txt", "vocab.json",
                   "chat_template.jinja", "chat_template.json")


@pytest.fixture
def sides(zoo, tmp_path) -> dict[str, Path]:
    """A working directory per tool, each with zoo/{base,a,b,c} (what the examples name)."""
    out = {}
    for side in ("mergekit", "evomerge"):
        (tmp_path / side / "zoo").mkdir(parents=True)
        for k in ("base", "a", "b", "c"):
            (tmp_path / side / "zoo" / k).symlink_to(zoo[k])
        out[side] = tmp_path / side
    return out


def documents(name: str, **changes) -> list[dict]:
    docs = list(yaml.safe_load_all((EXAMPLES / name).read_text()))
    return [{**d, **changes} for d in docs]


def build(docs: list[dict], side: Path, tool: str, monkeypatch, *flags: str) -> Path:
    """Build every document (mergekit-mega style: each into its out_path) in `side`."""
    monkeypatch.chdir(side)
    out = side
    for i, doc in enumerate(docs):
        out = side / doc.get("out_path", f"merged{i}")
        if tool == "mergekit":
            from mergekit.config import MergeConfiguration
            from mergekit.io.tasks import LoaderCache
            from mergekit.merge import run_merge
            from mergekit.options import MergeOptions

            # mergekit caches loaders by model reference for the whole process: a relative
            # path would otherwise read another test's folder of the same name
            LoaderCache.loaders.clear()
            cfg = {k: v for k, v in doc.items() if k != "out_path"}  # mergekit-mega's key
            run_merge(MergeConfiguration.model_validate(cfg), str(out),
                      MergeOptions(write_model_card=False, quiet=True, random_seed=0))
        else:
            path = side / f"doc{i}.yml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            res = CliRunner().invoke(app, ["merge", str(path), str(out), *flags])
            assert res.exit_code == 0, res.output
    return out


def assert_same_model(ours: Path, theirs: Path, exact: bool) -> None:
    x, y = load_dir(ours), load_dir(theirs)
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype, (k, x[k].dtype, y[k].dtype)
        if exact:
            assert torch.equal(x[k], y[k]), (k, int((x[k] != y[k]).sum()), x[k].numel())
        else:
            assert torch.allclose(x[k].float(), y[k].float(), rtol=1e-5, atol=1e-6), (
                k, float((x[k].float() - y[k].float()).abs().max()))
    for name in TOKENIZER_FILES:
        a, b = ours / name, theirs / name
        assert a.exists() == b.exists(), name
        if b.exists():
            assert a.read_bytes() == b.read_bytes(), name


def differing_fraction(ours: Path, theirs: Path) -> float:
    x, y = load_dir(ours), load_dir(theirs)
    return sum(int((x[k] != y[k]).sum()) for k in x) / sum(x[k].numel() for k in x)


@pytest.mark.parametrize("name", COMPARED)
def test_example_matches_mergekit_bit_for_bit_at_its_precision(name, sides, monkeypatch):
    docs = documents(name)
    theirs = build(docs, sides["mergekit"], "mergekit", monkeypatch)
    ours = build(docs, sides["evomerge"], "evomerge", monkeypatch, "--match-mergekit-precision")
    assert_same_model(ours, theirs, exact=True)
    assert all(t.dtype == torch.float16 for t in load_dir(ours).values())


@pytest.mark.parametrize("name", COMPARED)
def test_example_in_float32_matches_mergekit(name, sides, monkeypatch, caplog):
    """Both compute in float32: equal within float rounding. Each merge of a multi-merge file
    reads mergekit's output of the one before (a TIES trim would turn a rounding difference
    in its inputs into a different selection)."""
    docs = documents(name, dtype="float32")
    build(docs, sides["mergekit"], "mergekit", monkeypatch)
    if (sides["mergekit"] / "models").exists():
        (sides["evomerge"] / "models").symlink_to(sides["mergekit"] / "models")
    for i, doc in enumerate(docs):
        with caplog.at_level(logging.WARNING, logger="evomerge"):
            ours = build([{**doc, "out_path": f"ours{i}"}], sides["evomerge"], "evomerge",
                         monkeypatch)
        assert "dtype" not in caplog.text  # nothing to warn about
        assert_same_model(ours, sides["mergekit"] / doc.get("out_path", f"merged{i}"),
                          exact=False)


@pytest.mark.parametrize("name", ["ties.yml", "linear.yml"])
def test_default_float32_merge_of_a_float16_example_is_warned(name, sides, monkeypatch,
                                                              caplog):
    """Without the flag evomerge keeps its float32 arithmetic, says why the weights differ
    from mergekit's, and names the key and the way to match."""
    docs = documents(name)
    theirs = build(docs, sides["mergekit"], "mergekit", monkeypatch)
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        ours = build(docs, sides["evomerge"], "evomerge", monkeypatch)
    assert "dtype: float16: mergekit" in caplog.text
    assert "--match-mergekit-precision" in caplog.text
    assert differing_fraction(ours, theirs) > 0  # what the warning is about


TOKENIZER_CASES = {
    "chatml": {"chat_template": "chatml"},
    "jinja": {"chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                               "{% endfor %}"},
    "auto": {"chat_template": "auto"},
    "tokenizer_source_base": {"tokenizer_source": "base"},
    "tokenizer_model": {"tokenizer": {"source": "zoo/b"}},
    "tokenizer_union": {"tokenizer": {"source": "union"}, "chat_template": "alpaca"},
    "out_dtype": {"out_dtype": "bfloat16"},
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_tokenizer_chat_template_and_out_dtype_as_mergekit(case, dtype, sides, monkeypatch):
    docs = documents("ties.yml", dtype=dtype, **TOKENIZER_CASES[case])
    theirs = build(docs, sides["mergekit"], "mergekit", monkeypatch)
    flags = ("--match-mergekit-precision",) if dtype == "float16" else ()
    ours = build(docs, sides["evomerge"], "evomerge", monkeypatch, *flags)
    assert_same_model(ours, theirs, exact=dtype == "float16")
    if case == "out_dtype":
        assert all(t.dtype == torch.bfloat16 for t in load_dir(ours).values())
    if case in ("chatml", "jinja", "tokenizer_union"):
        assert (ours / "chat_template.jinja").exists()


def test_linear_with_a_base_model_merges_the_base_too(sides, monkeypatch):
    """mergekit's linear treats base_model as one more weighted input."""
    docs = documents("linear.yml", base_model="zoo/a", dtype="float32")
    theirs = build(docs, sides["mergekit"], "mergekit", monkeypatch)
    ours = build(docs, sides["evomerge"], "evomerge", monkeypatch)
    assert_same_model(ours, theirs, exact=False)


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_bf16_sources_without_dtype_match_with_the_flag(method, zoo_bf16, tmp_path,
                                                        monkeypatch, caplog):
    """No `dtype`: mergekit runs TIES (or task arithmetic, which has no density to read) in
    the sources' bfloat16; the flag does the same."""
    density = {"density": 0.4} if method == "ties" else {}
    cfg = {"merge_method": method, "base_model": str(zoo_bf16["base"]),
           "models": [{"model": str(zoo_bf16[k]), "parameters": {"weight": w, **density}}
                      for k, w in (("a", 0.7), ("b", 0.6))]}
    sides = {s: tmp_path / s for s in ("mergekit", "evomerge")}
    for d in sides.values():
        d.mkdir()
    theirs = build([cfg], sides["mergekit"], "mergekit", monkeypatch)
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        default = build([{**cfg, "out_path": "default"}], sides["evomerge"], "evomerge",
                        monkeypatch)
    assert "the sources are bfloat16" in caplog.text
    assert differing_fraction(default, theirs) > 0
    ours = build([cfg], sides["evomerge"], "evomerge", monkeypatch, "--match-mergekit-precision")
    assert_same_model(ours, theirs, exact=True)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(reason=r))
                                  for n, r in NOT_COMPARED.items()])
def test_example_not_compared(name):
    """Listed so the test report shows each shipped example left out, and why."""


def test_a_route_exports_to_a_passthrough_stack_mergekit_builds_the_same(sides, monkeypatch):
    """Route → `export-recipe --format mergekit` → mergekit builds what `evomerge merge`
    builds from the route; and the stack reads back as the same route."""
    from evomerge.mergekit_yaml import recipe_from_mergekit, recipe_to_mergekit
    from evomerge.recipe import Recipe

    hops = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 1), (0, 2)]
    route = {"method": "passthrough", "sources": [{"model": "zoo/a"}, {"model": "zoo/b"}],
             "route": [{"source": s, "layer": i} for s, i in hops]}
    recipe_file = sides["evomerge"] / "route.yml"
    recipe_file.write_text(yaml.safe_dump(route))
    monkeypatch.chdir(sides["evomerge"])  # zoo/a is the test zoo's, whatever the caller's cwd
    res = CliRunner().invoke(app, ["export-recipe", str(recipe_file), "--format", "mergekit"])
    assert res.exit_code == 0, res.output
    stack = yaml.safe_load(res.output)
    assert stack["merge_method"] == "passthrough"
    assert [s["sources"][0]["layer_range"] for s in stack["slices"]] == [[0, 1], [0, 2],
                                                                         [1, 2], [1, 3]]
    theirs = build([stack], sides["mergekit"], "mergekit", monkeypatch)
    ours = build([route], sides["evomerge"], "evomerge", monkeypatch)
    assert_same_model(ours, theirs, exact=True)
    recipe = Recipe.from_dict(route)
    assert recipe_from_mergekit(recipe_to_mergekit(recipe, source_dtype="float32")).route \
        == recipe.route


def test_scaled_routes_and_unsupported_stacks_are_refused_by_name(sides, monkeypatch):
    from evomerge.mergekit_yaml import recipe_from_mergekit
    from evomerge.recipe import RecipeError

    scaled = {"method": "passthrough", "sources": [{"model": "zoo/a"}],
              "route": [{"source": 0, "layer": 0}, {"source": 0, "layer": 2, "scale": 0.5}]}
    (sides["evomerge"] / "r.yml").write_text(yaml.safe_dump(scaled))
    monkeypatch.chdir(sides["evomerge"])  # zoo/a is the test zoo's, whatever the caller's cwd
    res = CliRunner().invoke(app, ["export-recipe", str(sides["evomerge"] / "r.yml"),
                                   "--format", "mergekit"])
    assert res.exit_code != 0 and "route[1].scale" in res.output
    base = documents("orcamini-platy-44layer.yml")[0]
    for change, needle in [
        ({"slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                                  {"model": "b", "layer_range": [0, 2]}]}]}, "exactly one"),
        # mergekit would scale the embeddings, final norm and head too (tests in
        # test_scaled_passthrough.py for scales a route takes)
        ({"slices": [{"sources": [{"model": "a", "layer_range": [0, 2],
                                   "parameters": {"scale": 0.5}}]}]},
         r"slices\[0\]\.sources\[0\]\.parameters\.scale: .*model\.embed_tokens\.weight"),
        ({"slices": [{"sources": [{"model": "a", "layer_range": [2, 1]}]}]}, "layer_range"),
        ({"models": [{"model": "a"}]}, "models"),
    ]:
        with pytest.raises(RecipeError, match=needle):
            recipe_from_mergekit({**base, **change}, "stack.yml")
