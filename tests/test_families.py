"""The family table against the real module names and wiring of tiny random transformers models (offline)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from spqrkit.models.families import (
    FAMILIES,
    Family,
    Layout,
    UnsupportedModelError,
    block_layout,
    decoder_blocks,
    decoder_body,
    family_of,
    register_family,
)

_COMMON = dict(vocab_size=128, num_hidden_layers=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_ATTN = dict(hidden_size=64, num_attention_heads=4)

# Tiny configs per family and per wiring variant: hidden 64, 2 blocks, every out_features divisible by 16.
TINY_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(intermediate_size=128, num_key_value_heads=2, **_ATTN, **_COMMON),
    "mistral": lambda: transformers.MistralConfig(intermediate_size=128, num_key_value_heads=2, **_ATTN, **_COMMON),
    "qwen2": lambda: transformers.Qwen2Config(intermediate_size=128, num_key_value_heads=2, **_ATTN, **_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(intermediate_size=128, num_key_value_heads=2, head_dim=16, **_ATTN,
                                              **_COMMON),
    "gemma": lambda: transformers.GemmaConfig(intermediate_size=128, num_key_value_heads=2, head_dim=16, **_ATTN,
                                              **_COMMON),
    "phi": lambda: transformers.PhiConfig(intermediate_size=128, **_ATTN, **_COMMON),
    "phi3": lambda: transformers.Phi3Config(intermediate_size=128, **_ATTN, **_COMMON),
    "opt": lambda: transformers.OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **_ATTN, **_COMMON),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(intermediate_size=128, **_ATTN, **_COMMON),
    "gpt_neox-sequential": lambda: transformers.GPTNeoXConfig(intermediate_size=128, use_parallel_residual=False,
                                                              **_ATTN, **_COMMON),
    "falcon": lambda: transformers.FalconConfig(**_ATTN, **_COMMON),  # Falcon-7B wiring: parallel, one layer norm
    "falcon-sequential": lambda: transformers.FalconConfig(parallel_attn=False, **_ATTN, **_COMMON),
    "falcon-new": lambda: transformers.FalconConfig(new_decoder_architecture=True, num_kv_heads=2, **_ATTN,
                                                    **_COMMON),
    "falcon-new-1ln": lambda: transformers.FalconConfig(new_decoder_architecture=True, num_kv_heads=2,
                                                        num_ln_in_parallel_attn=1, **_ATTN, **_COMMON),
}


# Tiny models run fastest on one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(TINY_CONFIGS[kind]())
    return model.eval()


def _linear_inputs(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input of every linear of the first block, by name relative to the block, from a full model forward."""
    block = decoder_blocks(model)[0]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].clone()))
        for name, module in block.named_modules() if isinstance(module, nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_every_model_type_has_a_tiny_model() -> None:
    tested = {TINY_CONFIGS[kind]().model_type for kind in TINY_CONFIGS}
    assert tested == set(FAMILIES)


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_layout_covers_every_linear_of_a_block_once(kind: str) -> None:
    model = tiny_model(kind)
    layout = block_layout(model)
    assert len(layout.linear_names) == len(set(layout.linear_names))
    for block in decoder_blocks(model):
        linears = {name for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        assert set(layout.linear_names) == linears
    assert len(decoder_blocks(model)) == model.config.num_hidden_layers


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_shared_sets_read_one_input_and_stages_follow_data_flow(kind: str) -> None:
    model = tiny_model(kind)
    # Fresh norms are all identical (weight 1, bias 0), which would hide two norms feeding two different sets.
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                for p in module.parameters(recurse=False):
                    p.add_(0.1 * torch.randn_like(p))
    layout = block_layout(model)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    base = _linear_inputs(model, ids)

    # Sets of linears declared as sharing an input really see the same tensor; different sets see different ones.
    firsts = []
    for stage in layout.stages:
        for group in stage:
            for name in group[1:]:
                assert torch.equal(base[name], base[group[0]]), f"{kind}: {name} and {group[0]} differ"
            firsts.append(group[0])
    for i, a in enumerate(firsts):
        for b in firsts[i + 1:]:
            assert base[a].shape != base[b].shape or not torch.equal(base[a], base[b]), f"{kind}: {a} == {b}"

    # Perturbing a stage leaves the inputs of that stage and all earlier ones unchanged (no linear reads the output
    # of one in its own or a later stage) and changes the input of every set of the next stage (no set could move
    # to an earlier stage: each stage costs a pass over the calibration data).
    blocks = decoder_blocks(model)
    for s, stage in enumerate(layout.stages):
        saved = {name: blocks[0].get_submodule(name).weight.detach().clone() for group in stage for name in group}
        with torch.no_grad():
            for name in saved:
                blocks[0].get_submodule(name).weight.mul_(3.0)
        perturbed = _linear_inputs(model, ids)
        with torch.no_grad():
            for name, w in saved.items():
                blocks[0].get_submodule(name).weight.copy_(w)
        for earlier in layout.stages[: s + 1]:
            for group in earlier:
                for name in group:
                    assert torch.equal(perturbed[name], base[name]), f"{kind}: stage {s} changes the input of {name}"
        if s + 1 < len(layout.stages):
            for group in layout.stages[s + 1]:
                assert not torch.equal(perturbed[group[0]], base[group[0]]), f"{kind}: {group} could be earlier"


@pytest.mark.parametrize(
    "kind, shared",
    [
        ("llama", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")]),
        ("phi", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1")]),
        ("falcon", [("self_attention.query_key_value", "mlp.dense_h_to_4h")]),
        ("falcon-new-1ln", [("self_attention.query_key_value", "mlp.dense_h_to_4h")]),
    ],
)
def test_known_shared_inputs(kind: str, shared: list[tuple[str, ...]]) -> None:
    groups = [group for stage in block_layout(tiny_model(kind)).stages for group in stage]
    for group in shared:
        assert group in groups


@pytest.mark.parametrize("kind, n_stages, n_sets", [
    ("llama", 4, 4), ("opt", 4, 4), ("phi3", 4, 4), ("phi", 2, 3), ("falcon", 2, 3), ("falcon-sequential", 4, 4),
    ("falcon-new", 2, 4), ("gpt_neox", 2, 4), ("gpt_neox-sequential", 4, 4),
])
def test_layout_shape_per_wiring(kind: str, n_stages: int, n_sets: int) -> None:
    layout = block_layout(tiny_model(kind))
    assert len(layout.stages) == n_stages
    assert sum(len(stage) for stage in layout.stages) == n_sets


def test_falcon_new_architecture_from_config_alone() -> None:
    # Before a model is built, num_ln_in_parallel_attn may still be None; Falcon then uses two layer norms.
    config = transformers.FalconConfig(new_decoder_architecture=True, num_ln_in_parallel_attn=None)
    layout = FAMILIES["falcon"].layout(config)
    assert layout.stages[0] == (("self_attention.query_key_value",), ("mlp.dense_h_to_4h",))


def test_decoder_body_and_blocks() -> None:
    model = tiny_model("opt")
    body, attr = decoder_body(model)
    assert body is model.model.decoder and attr == "layers"
    assert decoder_blocks(model) is model.model.decoder.layers
    model = tiny_model("falcon")
    assert decoder_body(model) == (model.transformer, "h")


def test_unknown_model_type_is_a_clear_error() -> None:
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=128))
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported.*llama.*register_family"):
        family_of(model)


def test_register_family() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_family("llama", FAMILIES["llama"])
    family = Family(blocks="transformer.h", layouts=(Layout(stages=((("attn.c_attn",),),)),))
    register_family("gpt2-test-only", family)
    try:
        assert FAMILIES["gpt2-test-only"] is family
    finally:
        del FAMILIES["gpt2-test-only"]


def test_no_matching_layout_is_a_clear_error() -> None:
    family = Family(blocks="model.layers", layouts=(Layout(stages=(), when={"parallel_attn": True}),))
    with pytest.raises(UnsupportedModelError, match="no block layout"):
        family.layout(transformers.LlamaConfig())
