"""Quantized modules that run compressed checkpoints."""

from .linear import SpQRLinear, reference_matmul, select_matmul

__all__ = ["SpQRLinear", "reference_matmul", "select_matmul"]
