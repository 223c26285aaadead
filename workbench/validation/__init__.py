"""Validation: splitters, overfitting statistics and promotion gates."""
