"""Triton kernels. Each has a plain-torch reference beside the code that uses it, and is tested against it."""
