"""Data sources behind one protocol, registered by name."""
