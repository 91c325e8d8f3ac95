"""spqrkit's version, at the bottom of the layers: the checkpoint writer records it; `spqrkit.__version__` is it."""

__version__ = "0.1.0"
