"""spqrkit's version, at the bottom of the layers: the checkpoint writer records it and `spqrkit.__version__` shows it."""

__version__ = "0.1.0"
