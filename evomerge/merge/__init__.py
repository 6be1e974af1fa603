"""Recipe → weights: per-tensor dispatch through the method registry, the two directory
writers (parameter merges, layer routes) and the two live-model builders (docs/design.md §3,
§4)."""
