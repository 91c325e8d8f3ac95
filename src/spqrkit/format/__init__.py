"""The compressed SpQR checkpoint format (specification: docs/format.md).

spec.py        name, version, every stored tensor's dtype and shape
pack.py        plain-torch reference: bit packing, QuantizedWeight <-> stored tensors, dequantization
checkpoint.py  writing, verifying and reading checkpoint folders (from tensors; no model)
describe.py    what a checkpoint holds (`spqrkit inspect`)
synthetic.py   random valid packed layers, for tests and benchmarks

The format imports nothing above quant/ (docs/architecture.md): saving a model, loading one (models/compressed.py)
and the transformers quantizer (models/hf_quantizer.py) sit above it and above modules/.
"""

from .spec import FORMAT_VERSION, QUANT_METHOD, FormatError

__all__ = ["FORMAT_VERSION", "QUANT_METHOD", "FormatError"]
