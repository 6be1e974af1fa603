"""The controller registry: every controller's settings model, as one tagged union the config
validates `controller:` against (docs/design.md §5). A new controller is its module (the
controller and its `ControllerSpec` subclass with `build`) plus one entry here."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from evomerge.search.cmaes import CMAESSpec
from evomerge.search.m2n2 import M2N2Spec
from evomerge.search.optuna_search import OptunaSpec
from evomerge.search.protocol import ControllerSpec
from evomerge.search.random_search import RandomSpec

CONTROLLERS: dict[str, type[ControllerSpec]] = {
    "m2n2": M2N2Spec,
    "cmaes": CMAESSpec,
    "random": RandomSpec,
    "optuna": OptunaSpec,
}

# the `controller:` block of a config: one of the registered settings models, chosen by kind
AnyControllerSpec = Annotated[Union[tuple(CONTROLLERS.values())],  # type: ignore[valid-type] # noqa: UP007
                              Field(discriminator="kind")]

# the keys each kind reads (its settings), for config checks and diffs
CONTROLLER_KEYS: dict[str, set[str]] = {
    kind: set(spec.model_fields) - {"kind"} for kind, spec in CONTROLLERS.items()}


def defaults_of_every_kind() -> dict[str, Any]:
    """Every controller's keys at their defaults: the shape a controller block had when one
    model held all kinds' keys, which config digests (and so existing runs) are computed on."""
    out: dict[str, Any] = {}
    for spec in CONTROLLERS.values():
        for name, info in spec.model_fields.items():
            if name != "kind":
                out.setdefault(name, info.default)
    return out


__all__ = ["CONTROLLERS", "CONTROLLER_KEYS", "AnyControllerSpec", "defaults_of_every_kind"]
