"""PS+DFS (DESIGN §4): the DFS codec with a PS-merged model as model A.

The PS stage runs first and its best recipe is materialised to a model directory; that
directory is source 0 ("A": tokenizer, embeddings, final norm, head, start and end of every
route) and the other model is source 1. A Recipe cannot reference another recipe, so the PS
recipe that built source 0 is kept on the space (`ps_recipe`) for provenance, not in the
decoded recipes.
"""

from __future__ import annotations

from typing import Any

from evomerge.recipe import Recipe
from evomerge.space.dataflow import DataFlowSpace


class PSDFSSpace(DataFlowSpace):
    """DataFlowSpace over [(ps_model, ps_layers), (other, other_layers)]."""

    def __init__(
        self,
        ps_model: str,
        ps_layers: int,
        other: str,
        other_layers: int,
        ps_recipe: Recipe | None = None,
        **dataflow_options: Any,
    ) -> None:
        """`dataflow_options` are DataFlowSpace's: repeats, scale_mode, sigma, ranges."""
        if ps_recipe is not None and ps_recipe.route is not None:
            raise ValueError("ps_recipe: expected a parameter-merge recipe, got a route recipe")
        super().__init__([(ps_model, ps_layers), (other, other_layers)], **dataflow_options)
        self.ps_recipe = ps_recipe
