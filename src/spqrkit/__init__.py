"""spqrkit: SpQR compression of Hugging Face causal LMs.

Importing spqrkit registers the "spqrkit" quantization method with transformers, so that
`AutoModelForCausalLM.from_pretrained(DIR)` loads compressed checkpoints; `spqrkit.load(DIR)` does the same
without transformers' loading machinery. `spqrkit.fuse_projections(model)` then runs each block's input-sharing
linears (q/k/v, gate/up) as one layer, for inference; `spqrkit.unfuse_projections(model)` undoes it (before saving).
"""

from .format.checkpoint import verify_checkpoint
from .format.spec import FORMAT_VERSION, FormatError
from .models.compressed import load, save_checkpoint
from .models.fusion import fuse_projections, unfuse_projections
from .models.hf_quantizer import register as _register_with_transformers
from .modules.linear import SpQRLinear
from .version import __version__

_register_with_transformers()

__all__ = ["FORMAT_VERSION", "FormatError", "SpQRLinear", "__version__", "fuse_projections", "load",
           "save_checkpoint", "unfuse_projections", "verify_checkpoint"]
