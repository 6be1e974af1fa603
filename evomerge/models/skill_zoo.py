"""The skill zoo: a small Llama base and experts trained here on CPU, for the quickstart.

Built on the lessons of docs/design.md §8: word-level tokens, skills the base already holds weakly
(trained briefly on every skill) and experts that sharpen one skill each (and forget the
others), so that merging has something to compose and the search a gap to close.

The skills and their items come from `skill_data`. Experts: ``math`` (add), ``rev``, ``sort``
and ``lang_b`` (tr + sort_b). Every skill has a search split and a held-out test split (lm-eval
tasks written by `skill_tasks`), scored by exact match (greedy, teacher-forced) and by the
probability of the whole answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomerge.atomic import directory_atomic
from evomerge.models.safetensors_io import ShardWriter
from evomerge.models.skill_data import SKILLS, VOCAB, items
from evomerge.models.skill_tasks import write_skill_tasks

EXPERTS = {"math": ("add",), "rev": ("rev",), "sort": ("sort",), "lang_b": ("tr", "sort_b")}
SEQ_LEN = 9  # the longest prompt + answer (REV: 6 + 4), less the one not predicted from
ZOO_VERSION = 1


@dataclass(frozen=True)
class ZooSettings:
    """Model size and training schedule of the base and the experts."""

    hidden: int = 128
    layers: int = 4
    intermediate: int = 384
    heads: int = 4
    batch: int = 128
    # every skill weakly (docs/design.md §8: experts sharpen, they do not create)
    base_steps: int = 75
    base_lr: float = 1e-3
    # one skill to >= 90%, the others falling back: small enough steps that task vectors
    # still add up (at 6e-4 the experts forget everything and no merge composes)
    expert_steps: int = 150
    expert_lr: float = 3e-4
    eval_items: int = 1500
    seed: int = 0


def llama_config(s: ZooSettings):
    """The zoo's Llama shape (the skill_lora zoo trains the same base)."""
    # transformers is imported on use, here and below: it takes seconds, and a module that
    # imports this one for its constants or `format_scores` needs none of it
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(VOCAB), hidden_size=s.hidden, num_hidden_layers=s.layers,
                       intermediate_size=s.intermediate, num_attention_heads=s.heads,
                       num_key_value_heads=s.heads, max_position_embeddings=32,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=3, dtype="float32", architectures=["LlamaForCausalLM"])


def _batch(pairs: list[tuple[list[str], list[str]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (padded) and the mask of answer positions to predict (shifted by one)."""
    ids = torch.full((len(pairs), SEQ_LEN + 1), VOCAB.index("<pad>"), dtype=torch.long)
    mask = torch.zeros((len(pairs), SEQ_LEN), dtype=torch.bool)
    for i, (q, a) in enumerate(pairs):
        toks = [VOCAB.index(t) for t in q + a]
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, len(q) - 1: len(q) + len(a) - 1] = True
    return ids, mask


def train_skills(model, skills: tuple[str, ...], steps: int, lr: float, batch: int,
                 seed: int) -> None:
    """Train on freshly drawn items of `skills` (answers only in the loss)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        per = [batch // len(skills)] * len(skills)
        pairs = [p for sk, n in zip(skills, per, strict=True)
                 for p in items(sk, n, int(rng.integers(2**31)))]
        ids, mask = _batch(pairs)
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def exact_match(model, skill: str, n: int = 1500, seed: int = 10_000) -> float:
    """Teacher-forced greedy exact match on `n` items (what lm-eval's `acc` measures)."""
    ids, mask = _batch(items(skill, n, seed))
    pred = model(ids[:, :-1]).logits.argmax(-1)
    ok = (pred == ids[:, 1:]) | ~mask
    return float(ok.all(dim=1).float().mean())


def save_model(model, out: Path) -> None:
    """The model as safetensors, its config and the word-level tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    planned = [(k, v.dtype, tuple(v.shape)) for k, v in state.items()]
    writer = ShardWriter(out / "model.safetensors", planned)
    for k, v in state.items():
        writer.write(k, v)
    writer.close()
    cfg = model.config.to_dict()
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    write_tokenizer(out)


def write_tokenizer(out: Path) -> None:
    """The zoo's word-level tokenizer, saved as transformers reads it."""
    # seconds to import; see llama_config
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>", pad_token="<pad>").save_pretrained(out)


def train_base(s: ZooSettings, out: Path, log: Callable[[str], None], start: float
               ) -> tuple[Any, dict[str, float]]:
    """The zoo's base (every skill, weakly), saved to `out`, and its exact match per skill;
    the LoRA zoo trains the same one."""
    from transformers import LlamaForCausalLM  # seconds to import; see llama_config

    torch.manual_seed(s.seed)
    base = LlamaForCausalLM(llama_config(s))
    train_skills(base, SKILLS, s.base_steps, s.base_lr, s.batch, s.seed)
    save_model(base, out)
    scores = {k: exact_match(base, k) for k in SKILLS}
    log(f"base trained ({time.perf_counter() - start:.0f} s): " + format_scores(scores))
    return base, scores


def build_skill_zoo(out: str | Path, settings: ZooSettings | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train the base and the experts, write them and the lm-eval tasks under `out`.

    Written into a temporary sibling and renamed into place, so an interrupted build leaves
    nothing that looks finished; `zoo.json` records the settings and each model's exact
    match on every skill's held-out items.
    """
    from transformers import LlamaForCausalLM  # seconds to import; see llama_config

    s = settings or ZooSettings()
    out = Path(out)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        with directory_atomic(out) as tmp:
            base, base_scores = train_base(s, tmp / "base", log, start)
            scores = {"base": base_scores}
            for i, (name, skills) in enumerate(EXPERTS.items()):
                expert = LlamaForCausalLM(llama_config(s))
                expert.load_state_dict(base.state_dict())
                train_skills(expert, skills, s.expert_steps, s.expert_lr, s.batch, s.seed + 1 + i)
                save_model(expert, tmp / name)
                scores[name] = {k: exact_match(expert, k) for k in SKILLS}
                log(f"{name} expert trained ({time.perf_counter() - start:.0f} s): "
                    + format_scores(scores[name]))
            write_skill_tasks(tmp / "tasks", s.eval_items, final_dir=out / "tasks")
            (tmp / "zoo.json").write_text(json.dumps({
                "version": ZOO_VERSION, "settings": s.__dict__, "experts": EXPERTS,
                "exact_match_test": scores,
                "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)
    return {name: out / name for name in ["base", *EXPERTS]} | {"tasks": out / "tasks"}


def format_scores(scores: dict[str, float]) -> str:
    """Per-skill scores as one log line ("add 0.91, rev 0.12, …")."""
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items())


def zoo_ready(out: str | Path) -> bool:
    """A finished zoo of this version is there."""
    meta = Path(out) / "zoo.json"
    try:
        return json.loads(meta.read_text()).get("version") == ZOO_VERSION
    except (OSError, ValueError):
        return False
