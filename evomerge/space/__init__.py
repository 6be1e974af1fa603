"""Genome ↔ recipe codecs: parameter space, data-flow space, their combination, flat vectors."""
