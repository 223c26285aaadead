"""Quant workbench: the library behind the research and trading notebooks."""

__version__ = "0.1.0"
