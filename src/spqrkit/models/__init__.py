"""Whole transformers models: the source model, the walk that quantizes it, and its compressed checkpoint.

source.py        the full-precision source model and tokenizer (a HF folder, a GGUF file or the default model)
families.py      model families as data: where the decoder blocks and their linears are
pipeline.py      the walk that quantizes a model block by block
fusion.py        fusing and unfusing a model's input-sharing projections
compressed.py    a model to and from a compressed checkpoint folder (`spqrkit.save_checkpoint`, `spqrkit.load`)
hf_quantizer.py  the "spqrkit" quantizer behind `AutoModelForCausalLM.from_pretrained(DIR)`
"""
