"""Tensor arithmetic of the merge methods, knowing nothing of recipes (docs/design.md §3):
`float32` computes every method chunk by chunk in float32 (exact top-k by radix select);
`mergekit_16bit` repeats mergekit's arithmetic at a 16-bit compute dtype. The method
registry (`evomerge.merge_methods`) calls them; they import only torch."""
