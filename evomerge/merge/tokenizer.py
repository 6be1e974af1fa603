"""The merged model's tokenizer, as mergekit 0.1.5 writes it.

With neither `tokenizer_source` nor `chat_template`, the tokenizer files of the base (else the
first source) are copied. Otherwise mergekit loads a tokenizer through transformers, sets the
chat template and saves it again; so does this module, so the files agree byte for byte.
A tokenizer source makes mergekit re-map every model's embedding rows onto the chosen
vocabulary; we build no such mapping, so the vocabularies must already agree (then mergekit's
mapping is the identity and the weights agree too) and anything else is refused.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from evomerge.merge.errors import MergeError
from evomerge.models.source import SourceError, SourceModel, resolve_model_ref
from evomerge.recipe import TOKENIZER_KEYWORDS, Recipe, chat_template_kind

# the files a model directory's tokenizer is copied as (with the donor's generation settings)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass
class TokenizerPlan:
    """What to write: files to copy from `donor`, or a loaded tokenizer to save."""

    donor: Path
    tokenizer: object | None = None  # a transformers tokenizer, when re-serialised

    def write(self, out: Path) -> None:
        """Put the tokenizer files into the output directory `out`."""
        if self.tokenizer is None:
            for name in TOKENIZER_FILES:
                if (self.donor / name).exists():
                    shutil.copyfile(self.donor / name, out / name)
            return
        self.tokenizer.save_pretrained(out)
        # not a tokenizer file, but the donor's generation settings belong with the model
        # (mergekit's re-serialising path leaves it behind; its copying path keeps it)
        if (self.donor / "generation_config.json").exists():
            shutil.copyfile(self.donor / "generation_config.json",
                            out / "generation_config.json")


def plan_tokenizer(recipe: Recipe, base: SourceModel | None, sources: list[SourceModel],
                   allow_download: bool = False) -> TokenizerPlan:
    """Check the tokenizer settings and load what they need, before any tensor is merged."""
    donor = (base or sources[0]).path
    if not recipe.tokenizer_source and not recipe.chat_template:
        return TokenizerPlan(donor)
    models = ([base] if base else []) + sources
    tok_dir = donor
    src = recipe.tokenizer_source
    if src and src not in TOKENIZER_KEYWORDS:
        try:
            tok_dir = resolve_model_ref(src, allow_download)
        except SourceError as exc:
            raise MergeError(f"tokenizer_source: {exc}") from None
    tokenizer = _load(tok_dir, "tokenizer_source" if src else "chat_template")
    if src:
        _check_shared_vocabulary(src, tokenizer, models)
    if recipe.chat_template:
        template = chat_template_text(recipe.chat_template, models)
        if template:
            tokenizer.chat_template = template
    return TokenizerPlan(donor, tokenizer)


def _load(path: Path, key: str):
    # transformers takes seconds to import: only a recipe that re-serialises pays for it
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # missing files, unknown tokenizer class, bad JSON
        raise MergeError(f"{key}: cannot load the tokenizer of {path}: {exc}") from None


def _check_shared_vocabulary(src: str, tokenizer, models: list[SourceModel]) -> None:
    vocab = tokenizer.get_vocab()
    for m in models:
        theirs = _load(m.path, "tokenizer_source").get_vocab()
        rows = m.config.get("vocab_size")
        if theirs != vocab or (isinstance(rows, int) and rows != len(vocab)):
            raise MergeError(
                f"tokenizer_source: {src}: {m.path} has a different vocabulary "
                f"({len(theirs)} tokens, vocab_size {rows}) from the tokenizer to write "
                f"({len(vocab)} tokens); mergekit would re-map the embedding rows onto it, "
                "which evomerge does not do (give every model the same tokenizer)"
            )


def chat_template_text(template: str, models: list[SourceModel]) -> str | None:
    """The Jinja text for mergekit's `chat_template`: the text itself, one of mergekit's
    built-in templates by name, or ('auto') the commonest template among the models."""
    kind = chat_template_kind(template)
    if kind == "jinja":
        return template
    if kind == "auto":
        found = []
        for m in models:
            t = _load(m.path, "chat_template").chat_template
            t = t.get("default") if isinstance(t, dict) else t
            if t:
                found.append(t.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    try:
        builtin = files("mergekit._data.chat_templates")
    except ModuleNotFoundError:
        raise MergeError(
            f"chat_template: {template!r} names one of mergekit's built-in templates, which "
            "are read from the mergekit package: install it (pip install 'evomerge[mergekit]') "
            "or give the template's Jinja text"
        ) from None
    path = builtin.joinpath(template + ".jinja")
    if not path.is_file():
        names = sorted(p.name.removesuffix(".jinja") for p in builtin.iterdir()
                       if p.name.endswith(".jinja"))
        raise MergeError(f"chat_template: {template!r} is neither one of mergekit's built-in "
                         f"templates ({', '.join(names)}) nor a Jinja template")
    return path.read_text()
