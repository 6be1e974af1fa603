"""Executors: where candidates are evaluated (docs/design.md §2.2). `base` is the seam;
`inline` and `ray_executor` implement it; `registry.make_executor` picks one from the
config."""
