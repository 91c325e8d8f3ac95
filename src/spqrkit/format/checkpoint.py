"""Writing, verifying and reading compressed checkpoint folders (docs/format.md, sections Files and Safety).

A folder holds config.json (the model config with `quantization_config`), safetensors shards in the Hugging Face
layout, the manifest `spqrkit_manifest.json` (format version, config, every quantized layer, every tensor with its
shard, dtype, shape and SHA-256, every shard with its size and SHA-256), the tokenizer and spqrkit's quantization
record. Reading goes through `verify_checkpoint` first: the safetensors headers are parsed here, byte-exact, so every
refusal names the file and the tensor; tensor data is only ever read by safetensors (no pickle).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import ConfigError, QuantConfig
from ..io_utils import atomic_folder
from ..version import __version__
from .spec import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    QUANT_METHOD,
    SHARD_INDEX_FILE,
    SINGLE_SHARD_FILE,
    SUPPORTED_FORMAT_VERSIONS,
    FormatError,
    dtype_from_name,
    dtype_name,
    layer_tensor_specs,
)

CONFIG_FILE = "config.json"
DEFAULT_MAX_SHARD_BYTES = 2 << 30
_HASH_BLOCK = 1 << 24
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


# ---------------------------------------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class LayerEntry:
    """One quantized linear as the manifest records it."""

    out_features: int
    in_features: int
    n_outliers: int
    bias: bool


@dataclass(frozen=True)
class TensorEntry:
    file: str
    dtype: str  # safetensors dtype name, e.g. "I32"
    shape: tuple[int, ...]
    sha256: str


@dataclass
class CheckpointInfo:
    """What a verified checkpoint folder holds (everything but tensor data)."""

    folder: Path
    format_version: int
    config: QuantConfig
    model_config: dict[str, Any]  # config.json
    layers: dict[str, LayerEntry]  # by module name
    tensors: dict[str, TensorEntry]  # by state-dict key
    shards: dict[str, dict[str, Any]]  # file name -> {"bytes", "sha256"}
    record: dict[str, Any] = field(default_factory=dict)  # the manifest itself

    @property
    def dense_keys(self) -> list[str]:
        """State-dict keys of tensors that are not part of a quantized layer's packed weight."""
        packed = packed_keys(self.layers, self.config)
        return [key for key in self.tensors if key not in packed]

    def tensor_bytes(self, key: str) -> int:
        entry = self.tensors[key]
        return math.prod(entry.shape) * torch.empty((), dtype=dtype_from_name(entry.dtype)).element_size()

    def layer_bytes(self, name: str) -> int:
        """Bytes of one quantized layer's packed tensors (its bias excluded)."""
        layer = self.layers[name]
        specs = layer_tensor_specs(layer.out_features, layer.in_features, self.config, layer.n_outliers)
        return sum(self.tensor_bytes(f"{name}.{suffix}") for suffix in specs)

    @property
    def files_bytes(self) -> int:
        return sum(shard["bytes"] for shard in self.shards.values())


def packed_keys(layers: Mapping[str, LayerEntry], config: QuantConfig) -> set[str]:
    """State-dict keys of the quantized layers' packed tensors (`{module name}.{suffix}`, docs/format.md)."""
    return {f"{name}.{suffix}" for name, layer in layers.items()
            for suffix in layer_tensor_specs(layer.out_features, layer.in_features, config, layer.n_outliers)}


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a compressed spqrkit checkpoint (by its config.json; nothing is verified)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        qc = json.loads(path.read_text()).get("quantization_config") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def quantization_config_dict(config: QuantConfig) -> dict[str, Any]:
    """The `quantization_config` entry of config.json."""
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "quant_config": config.to_dict()}


def check_format_version(version: Any, where: str) -> int:
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise FormatError(
            f"{where}: spqrkit format version {version!r} is not supported; this spqrkit {__version__} reads "
            f"version(s) {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}"
        )
    return version


# ---------------------------------------------------------------------------------------------------- writing
def write_checkpoint(
    out: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    layers: Mapping[str, LayerEntry],
    config: QuantConfig,
    hf_config: Any,
    *,
    generation_config: Any = None,
    tokenizer: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_files: Mapping[str, str] | None = None,
) -> CheckpointInfo:
    """Write a compressed checkpoint folder `out` (which must not exist; it appears only when complete).

    tensors: every tensor to store, by state-dict key, in the order to write: each quantized layer's packed tensors
        (`{module name}.{suffix}`, with the dtypes and shapes of `layer_tensor_specs`) and the dense tensors.
    layers: the quantized layers, by module name.
    hf_config: the model's transformers config; written as config.json with its `quantization_config` entry set
        (a copy is changed, not the object given).
    generation_config, tokenizer: written into the folder too when given (anything with `save_pretrained`).
    extra_files: more text files to write into the folder, by name.
    """
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    for name, layer in layers.items():
        specs = layer_tensor_specs(layer.out_features, layer.in_features, config, layer.n_outliers)
        for suffix, spec in specs.items():
            t = tensors.get(f"{name}.{suffix}")
            if t is None or t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                got = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise FormatError(f"{name}.{suffix}: {got}, but the format stores {spec.dtype} {list(spec.shape)}")
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    shards = _plan_shards(tensors, max_shard_bytes)

    with atomic_folder(out) as tmp:
        tensor_entries: dict[str, TensorEntry] = {}
        shard_entries: dict[str, dict[str, Any]] = {}
        for file, keys in shards.items():
            _write_safetensors({k: tensors[k] for k in keys}, tmp / file)
            digest, per_tensor, size = _hash_shard(tmp / file)
            shard_entries[file] = {"bytes": size, "sha256": digest}
            for key in keys:
                t = tensors[key]
                tensor_entries[key] = TensorEntry(file, dtype_name(t.dtype), tuple(t.shape), per_tensor[key])
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                     "weight_map": {key: entry.file for key, entry in tensor_entries.items()}}
            (tmp / SHARD_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

        hf_config = copy.deepcopy(hf_config)
        hf_config.quantization_config = quantization_config_dict(config)
        stored_dtype = _dense_float_dtype(tensors, packed_keys(layers, config))
        if stored_dtype is not None:
            hf_config.dtype = stored_dtype
        hf_config.save_pretrained(tmp)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for file, text in (extra_files or {}).items():
            (tmp / file).write_text(text)

        manifest = {
            "format": QUANT_METHOD,
            "format_version": FORMAT_VERSION,
            "spqrkit_version": __version__,
            "config": config.to_dict(),
            "layers": {name: vars(entry) for name, entry in layers.items()},
            "shards": shard_entries,
            "tensors": {key: {"file": e.file, "dtype": e.dtype, "shape": list(e.shape), "sha256": e.sha256}
                        for key, e in tensor_entries.items()},
        }
        # The manifest goes last: a folder whose manifest is present was written completely.
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        _default_permissions(tmp)
    return verify_checkpoint(out, checksums=False)


def _default_permissions(folder: Path) -> None:
    """The temporary folder (and the shards safetensors writes) are private; the checkpoint gets the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _dense_float_dtype(tensors: Mapping[str, torch.Tensor], packed: set[str]) -> torch.dtype | None:
    """The most common dtype of the floating-point tensors outside the packed layers (config.json's `dtype`)."""
    dtypes = [t.dtype for k, t in tensors.items() if k not in packed and t.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else None


def _plan_shards(tensors: Mapping[str, torch.Tensor], max_shard_bytes: int) -> dict[str, list[str]]:
    """Consecutive tensors fill a shard up to max_shard_bytes (a larger tensor gets a shard of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    if len(groups) == 1:
        return {SINGLE_SHARD_FILE: groups[0]}
    n = len(groups)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": keys for i, keys in enumerate(groups)}


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt", "spqrkit_format_version": str(FORMAT_VERSION)})


# ---------------------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class _HeaderTensor:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(path: Path) -> tuple[dict[str, _HeaderTensor], dict[str, str], int]:
    """(tensors, metadata, data start) of a safetensors file, every structural fault refused with file and tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: {size} bytes, too short for a safetensors header (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER_BYTES or 8 + n > size:
            raise FormatError(f"{path}: header length {n} does not fit the file's {size} bytes (truncated?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors = {}
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor {key!r} has a malformed header entry {entry!r}") from None
        element = dtype_from_name(dtype)
        if element is None:
            raise FormatError(f"{path}: tensor {key!r} has dtype {dtype!r}, which this format never stores")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FormatError(f"{path}: tensor {key!r} has a malformed shape {list(shape)}")
        nbytes = math.prod(shape) * torch.empty((), dtype=element).element_size()
        if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != nbytes or begin < 0:
            raise FormatError(f"{path}: tensor {key!r} ({dtype} {list(shape)}) has data offsets [{begin}, {end}], "
                              f"which do not span its {nbytes} bytes")
        tensors[key] = _HeaderTensor(dtype, shape, data_start + begin, data_start + end)
    cut = [key for key, t in tensors.items() if t.end > size]
    if cut:
        raise FormatError(f"{path}: the file ends at byte {size}, before the end of tensor(s) {', '.join(cut)} "
                          "(truncated: tensors cut off)")
    covered = sorted((t.begin, t.end) for t in tensors.values())
    position = data_start
    for begin, end in covered:
        if begin != position:
            raise FormatError(f"{path}: tensor data overlaps or leaves gaps at byte {position}")
        position = end
    if position != size:
        raise FormatError(f"{path}: {size - position} bytes follow the last tensor")
    return tensors, metadata, data_start


def _hash_shard(path: Path) -> tuple[str, dict[str, str], int]:
    """SHA-256 of the whole file and of each tensor's bytes, and the file size."""
    tensors, _, _ = read_safetensors_header(path)
    whole = hashlib.sha256()
    per_tensor = {}
    with open(path, "rb") as f:
        whole.update(f.read(min((t.begin for t in tensors.values()), default=path.stat().st_size)))
        for key, t in sorted(tensors.items(), key=lambda kv: kv[1].begin):
            h = hashlib.sha256()
            remaining = t.end - t.begin
            while remaining:
                block = f.read(min(_HASH_BLOCK, remaining))
                if not block:
                    raise FormatError(f"{path}: tensor {key!r} is cut short (truncated)")
                h.update(block)
                whole.update(block)
                remaining -= len(block)
            per_tensor[key] = h.hexdigest()
    return whole.hexdigest(), per_tensor, path.stat().st_size


# ---------------------------------------------------------------------------------------------------- verifying
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FormatError(f"{path}: missing; {what}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: not a JSON object")
    return data


def verify_checkpoint(folder: str | os.PathLike, *, checksums: bool = True) -> CheckpointInfo:
    """Check a checkpoint folder against its manifest and the format, before any tensor is loaded.

    Refuses, naming the file and, where one is at fault, the tensor: an unknown format version, a manifest that
    disagrees with config.json, a missing or resized shard, a safetensors header that disagrees with the manifest
    (names, dtypes, shapes), a quantized layer whose tensors do not have the shapes the format prescribes, and
    (with `checksums`) any byte that differs from what was written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} not found")
    config_path = folder / CONFIG_FILE
    model_config = _read_json(config_path, "not a Hugging Face model folder")
    qc = model_config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise FormatError(f"{config_path}: no quantization_config with quant_method {QUANT_METHOD!r}; "
                          "this is not a compressed spqrkit checkpoint")
    version = check_format_version(qc.get("format_version"), f"{config_path} (quantization_config.format_version)")
    manifest_path = folder / MANIFEST_FILE
    manifest = _read_json(manifest_path, "every spqrkit checkpoint has one; the folder is incomplete")
    check_format_version(manifest.get("format_version"), f"{manifest_path} (format_version)")
    if manifest.get("format_version") != version:
        raise FormatError(f"{manifest_path}: format version {manifest.get('format_version')} differs from "
                          f"{config_path}'s {version}")
    try:
        config = QuantConfig.from_dict(manifest["config"])
        if QuantConfig.from_dict(qc.get("quant_config") or {}) != config:
            raise FormatError(f"{manifest_path}: its config differs from {config_path}'s quantization_config")
        layers = {name: LayerEntry(int(e["out_features"]), int(e["in_features"]), int(e["n_outliers"]),
                                   bool(e["bias"])) for name, e in manifest["layers"].items()}
        tensors = {key: TensorEntry(e["file"], e["dtype"], tuple(e["shape"]), e["sha256"])
                   for key, e in manifest["tensors"].items()}
        shards = {file: {"bytes": int(e["bytes"]), "sha256": str(e["sha256"])}
                  for file, e in manifest["shards"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from None

    # Quantized layers: every tensor the format prescribes, with its dtype and shape.
    for name, layer in layers.items():
        try:
            specs = layer_tensor_specs(layer.out_features, layer.in_features, config, layer.n_outliers)
        except FormatError as exc:
            raise FormatError(f"{manifest_path}: layer {name}: {exc}") from None
        for suffix, spec in specs.items():
            key = f"{name}.{suffix}"
            entry = tensors.get(key)
            if entry is None:
                raise FormatError(f"{manifest_path}: tensor {key} of quantized layer {name} is missing")
            if dtype_from_name(entry.dtype) != spec.dtype or entry.shape != spec.shape:
                raise FormatError(
                    f"{manifest_path}: tensor {key} is {entry.dtype} {list(entry.shape)}, but format version "
                    f"{version} stores {dtype_name(spec.dtype)} {list(spec.shape)} for a "
                    f"[{layer.out_features}, {layer.in_features}] layer with {layer.n_outliers} outliers"
                )
    unknown_files = sorted({e.file for e in tensors.values()} - set(shards))
    if unknown_files:
        raise FormatError(f"{manifest_path}: tensors refer to shards {unknown_files} that it does not list")
    if len(shards) > 1:
        index = _read_json(folder / SHARD_INDEX_FILE, "a checkpoint of several shards needs its index")
        weight_map = index.get("weight_map")
        if weight_map != {key: e.file for key, e in tensors.items()}:
            raise FormatError(f"{folder / SHARD_INDEX_FILE}: its weight_map disagrees with {manifest_path}")

    for file, shard in shards.items():
        path = folder / file
        if Path(file).name != file:
            raise FormatError(f"{manifest_path}: shard name {file!r} is not a plain file name")
        if not path.is_file():
            raise FormatError(f"{path}: shard listed in {MANIFEST_FILE} is missing")
        size = path.stat().st_size
        expected = {key: e for key, e in tensors.items() if e.file == file}
        if size != shard["bytes"]:
            detail = ""
            try:
                read_safetensors_header(path)
            except FormatError as exc:
                detail = f"; {exc}"
            raise FormatError(f"{path}: {size} bytes, but {MANIFEST_FILE} records {shard['bytes']} "
                              f"({'truncated' if size < shard['bytes'] else 'extended'}){detail}")
        header, metadata, _ = read_safetensors_header(path)
        if metadata.get("spqrkit_format_version") != str(version):
            raise FormatError(f"{path}: header metadata says format version "
                              f"{metadata.get('spqrkit_format_version')!r}, the checkpoint {version}")
        for key in sorted(set(expected) | set(header)):
            if key not in header:
                raise FormatError(f"{path}: tensor {key} listed in {MANIFEST_FILE} is not in this shard")
            if key not in expected:
                raise FormatError(f"{path}: tensor {key} is not listed in {MANIFEST_FILE}")
            got, want = header[key], expected[key]
            if got.dtype != want.dtype or got.shape != want.shape:
                raise FormatError(f"{path}: tensor {key} is {got.dtype} {list(got.shape)} in the header, but "
                                  f"{MANIFEST_FILE} records {want.dtype} {list(want.shape)}")
        if checksums:
            digest, per_tensor, _ = _hash_shard(path)
            if digest != shard["sha256"]:
                bad = [key for key in sorted(per_tensor) if per_tensor[key] != expected[key].sha256]
                where = f"tensor(s) {', '.join(bad)}" if bad else "the header"
                raise FormatError(f"{path}: SHA-256 checksum mismatch in {where}: the file was modified or "
                                  "corrupted after it was written")
    return CheckpointInfo(folder, version, config, model_config, layers, tensors, shards, manifest)


# ---------------------------------------------------------------------------------------------------- reading
def load_tensors(info: CheckpointInfo, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every stored tensor of a verified checkpoint, by state-dict key, read with safetensors onto `device`."""
    tensors: dict[str, torch.Tensor] = {}
    for file in info.shards:
        tensors.update(load_file(str(info.folder / file), device=str(device)))
    return tensors
