"""Model references: local directories and Hugging Face hub ids (optionally `repo@revision`).

Torch-free, so recipes can use it. Resolving turns a reference into a directory on this
machine; `portable_ref` turns it back into something another machine can use (a path relative
to an output directory, or a hub id pinned to the snapshot it was read from), so written
outputs never carry this machine's absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path


class SourceError(ValueError):
    """A source model that cannot be opened or does not fit the merge."""


def split_revision(ref: str) -> tuple[str, str | None]:
    """'org/name@rev' → ('org/name', 'rev'); anything without one '@' keeps revision None."""
    if ref.count("@") == 1:
        repo, rev = ref.split("@")
        if repo and rev:
            return repo, rev
    return ref, None


def split_adapter(ref: str) -> tuple[str, str | None]:
    """'base+adapter' (mergekit's syntax for a LoRA adapter over its base) → the two parts;
    a reference without '+', or an existing path that contains one, → (ref, None)."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return ref, None
    base, adapter = ref.rsplit("+", 1)
    if not base or not adapter:
        return ref, None
    return base, adapter


def join_adapter(base: str, adapter: str | None) -> str:
    """The single reference `split_adapter` splits."""
    return f"{base}+{adapter}" if adapter else base


def is_hub_id(ref: str) -> bool:
    """Looks like 'org/name' (with an optional '@revision'), not a path."""
    repo, _ = split_revision(ref)
    return not repo.startswith((".", "/", "~")) and repo.count("/") == 1


def missing_local(ref: str, where: str, dirs: list[Path]) -> str | None:
    """The error for a reference that is plainly a local path (it starts with '.', '/' or
    '~', is not shaped like 'org/name', or its first folder exists here) but names no
    directory: the field, the paths tried and, when a neighbour is close, a suggestion. None
    when `ref` exists or could be a hub id (those go to the cache lookup)."""
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else [d / p for d in dirs]
    if any(c.exists() for c in candidates):
        return None
    first = Path(split_revision(ref)[0]).parts[0] if ref else ""
    if is_hub_id(ref) and not any((d / first).is_dir() for d in dirs):
        return None
    import difflib

    tried = list(dict.fromkeys(str(c.resolve()) for c in candidates))
    hint = ""
    for c in candidates:
        if c.parent.is_dir():
            near = difflib.get_close_matches(c.name, [x.name for x in c.parent.iterdir()
                                                      if x.is_dir()], n=1)
            if near:
                hint = f"; did you mean {str(Path(ref).parent / near[0])!r}?"
                break
    return f"{where}: {ref!r} is not a model directory (tried {', '.join(tried)}){hint}"


def resolve_model_ref(ref: str, allow_download: bool = False) -> Path:
    """A local directory as is; otherwise a hub repo id (`org/name` or `org/name@revision`)
    looked up in the local HF cache, downloaded only when `allow_download` is set."""
    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise SourceError(f"{ref}: is a file; a source must be a model directory")
    if not is_hub_id(ref):
        raise SourceError(f"{ref}: no such model directory")
    repo, revision = split_revision(ref)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise SourceError(f"{ref}: not a local directory and huggingface_hub is missing") from None
    try:
        return Path(snapshot_download(repo, revision=revision,
                                      local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        raise SourceError(
            f"{ref}: not a local directory and not in the local Hugging Face cache; to fetch it "
            "from the hub, allow downloads (`evomerge merge --allow-download`, or "
            "`allow_download: true` in a search config)"
        ) from None
    except Exception as exc:  # network errors, unknown repo, gated repo
        raise SourceError(f"{ref}: could not resolve as a Hugging Face repo: {exc}") from None


def cache_snapshot(path: str | Path) -> tuple[str, str] | None:
    """(repo id, commit) when `path` is a snapshot folder of the HF cache
    (…/models--org--name/snapshots/<commit>), else None."""
    p = Path(path)
    repo_dir = p.parent.parent.name
    if p.parent.name != "snapshots" or not repo_dir.startswith("models--"):
        return None
    return repo_dir[len("models--"):].replace("--", "/", 1), p.name


def hub_pin(ref: str) -> str | None:
    """`org/name@commit` for a hub id found in the local cache (nothing is downloaded), or
    for a path inside the cache; None for anything else."""
    snap = cache_snapshot(ref) if Path(ref).is_absolute() else None
    if snap is None and is_hub_id(ref) and not Path(ref).expanduser().exists():
        try:
            snap = cache_snapshot(resolve_model_ref(ref))
        except SourceError:
            return None
    return f"{snap[0]}@{snap[1]}" if snap else None


def portable_ref(ref: str, written: str | None = None, relative_to: Path | None = None) -> str:
    """`ref` as another machine can read it: a hub id pinned to its cached revision; a local
    directory relative to `relative_to` (when given), else as the user wrote it. Each part of
    a `base+adapter` reference is converted on its own."""
    base, adapter = split_adapter(ref)
    if adapter is not None:
        wb, wa = split_adapter(written) if written else (None, None)
        return join_adapter(portable_ref(base, wb, relative_to),
                            portable_ref(adapter, wa, relative_to))
    pin = hub_pin(ref)
    if pin is not None:
        return pin
    if not Path(ref).expanduser().is_dir():
        return written or ref  # a hub id not in the cache, or a path that is gone
    if relative_to is not None:
        return os.path.relpath(Path(ref).expanduser().resolve(), relative_to.resolve())
    return written or ref
