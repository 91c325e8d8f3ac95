"""The compressed SpQR checkpoint format (specification: docs/format.md).

spec.py        name, version, every stored tensor's dtype and shape
pack.py        plain-torch reference: bit packing, QuantizedWeight <-> stored tensors, dequantization
checkpoint.py  writing, verifying and reading checkpoint folders
describe.py    what a checkpoint holds (`spqrkit inspect`)
hf_quantizer.py  the transformers integration behind `AutoModelForCausalLM.from_pretrained(DIR)`
"""

from .spec import FORMAT_VERSION, QUANT_METHOD, FormatError

__all__ = ["FORMAT_VERSION", "QUANT_METHOD", "FormatError"]
