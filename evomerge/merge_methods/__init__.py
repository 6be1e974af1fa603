"""Merge methods, declared once each (docs/design.md §3): the registry every layer reads.

Every module of this package declares its methods with `register` (see
registry.MergeMethod); importing the package imports them all, so a new method is one new
module here. Registration order is the order recipes and error messages list methods in:
the built-in modules first, in `_FIRST` order (linear; the task-arithmetic family:
task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties; slerp), then
any other module, alphabetically. Torch-free, like every module here.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from evomerge.merge_methods.registry import (
    MergeInputs,
    MergeMethod,
    Param,
    by_mergekit_name,
    declared_params,
    get_method,
    registered,
)

_FIRST = ("params", "linear", "task_vectors", "slerp")
for _name in _FIRST + tuple(sorted({m.name for m in pkgutil.iter_modules(__path__)}
                                   - set(_FIRST))):
    import_module(f"{__name__}.{_name}")

METHODS: tuple[str, ...] = tuple(m.name for m in registered())
# parameter → the range every value must lie in (for the parameters that have one)
PARAM_RANGES: dict[str, tuple[float, float]] = {
    p.name: p.valid for p in declared_params() if p.valid is not None}
# parameter → the range a search gene spans (for the parameters a search can tune)
SEARCH_RANGES: dict[str, tuple[float, float]] = {
    p.name: p.search for p in declared_params() if p.search is not None}

__all__ = ["METHODS", "PARAM_RANGES", "SEARCH_RANGES", "MergeInputs", "MergeMethod", "Param",
           "by_mergekit_name", "declared_params", "get_method", "registered"]
