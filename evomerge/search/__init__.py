"""Search controllers behind one ask/tell protocol (docs/design.md §5)."""
