"""spqrkit: SpQR compression of Hugging Face causal LMs.

Importing spqrkit registers the "spqrkit" quantization method with transformers, so that
`AutoModelForCausalLM.from_pretrained(DIR)` loads compressed checkpoints; `spqrkit.load(DIR)` does the same
without transformers' loading machinery. `spqrkit.fuse_projections(model)` then runs each block's input-sharing
linears (q/k/v, gate/up) as one layer, for inference; `spqrkit.unfuse_projections(model)` undoes it (before saving).
"""

__version__ = "0.1.0"

from .format.checkpoint import save_checkpoint, verify_checkpoint  # noqa: E402
from .format.hf_quantizer import register as _register_with_transformers  # noqa: E402
from .format.spec import FORMAT_VERSION, FormatError  # noqa: E402
from .loading import load  # noqa: E402
from .models.fusion import fuse_projections, unfuse_projections  # noqa: E402
from .modules.linear import SpQRLinear  # noqa: E402

_register_with_transformers()

__all__ = ["FORMAT_VERSION", "FormatError", "SpQRLinear", "fuse_projections", "load", "save_checkpoint",
           "unfuse_projections", "verify_checkpoint"]
