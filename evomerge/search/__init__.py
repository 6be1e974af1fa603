"""Search controllers behind one ask/tell protocol (DESIGN §5)."""
