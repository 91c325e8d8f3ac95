"""spqrkit: SpQR compression of Hugging Face causal LMs."""

__version__ = "0.1.0"

