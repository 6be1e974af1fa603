"""The parameters merge methods read, declared once (docs/design.md §3).

Declaration order is the parameter space's gene order (per-source ones first, then shared);
a method module that needs a new parameter declares it there with `declare_param`, after these.
Search ranges: lambda's and t's midpoints equal the method defaults, so the initial genome
(0.5 everywhere) starts from the untuned method there.
"""

from __future__ import annotations

from evomerge.merge_methods.registry import Param, declare_param

# per source
WEIGHT = declare_param(Param("weight", 1.0, search=(0.0, 1.0)))
DENSITY = declare_param(Param("density", 1.0, valid=(0.0, 1.0), search=(0.1, 1.0)))
GAMMA = declare_param(Param("gamma", 0.01, valid=(0.0, 1.0), search=(0.0, 0.1)))
# shared
T = declare_param(Param("t", 0.5, valid=(0.0, 1.0), search=(0.0, 1.0)))
LAMBDA = declare_param(Param("lambda", 1.0, search=(0.0, 2.0), opt_in=True))
NORMALIZE = declare_param(Param("normalize", False))
