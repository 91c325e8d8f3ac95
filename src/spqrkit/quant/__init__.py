"""SpQR's method as pure tensor functions, `(W, H, config) -> QuantizedWeight`: no model, no file.

representation.py  QuantizedWeight, the in-memory SpQR representation of one linear, and its dequantization
minmax.py          min-max quantization primitives
hessian.py         the layer's Hessian from calibration inputs
solver.py          the SpQR / GPTQ / RTN solver, with plain-torch references of its inner steps
solver_triton.py   the solver's fused Triton kernels (CUDA), tested against those references
"""
