"""`spqrkit inspect DIR`: what a compressed checkpoint holds, from its manifest and headers (no tensor is loaded)."""

from __future__ import annotations

import math
import os
from typing import Any

from .checkpoint import verify_checkpoint


def describe_checkpoint(folder: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Per-layer and total bits, outlier share, size on disk vs fp16, the config; JSON-ready.

    verify: also check every shard's SHA-256 (the format version, headers and shapes are always checked).
    """
    info = verify_checkpoint(folder, checksums=verify)
    config = info.config
    layers = []
    for name, layer in info.layers.items():
        numel = layer.out_features * layer.in_features
        share = layer.n_outliers / numel
        stored_bits = 8 * info.layer_bytes(name)
        layers.append({
            "name": name,
            "shape": [layer.out_features, layer.in_features],
            "n_outliers": layer.n_outliers,
            "outlier_share": share,
            "bits_per_param": stored_bits / numel,
            "paper_bits_per_param": config.paper_avg_bits(layer.in_features, share),
            "bytes": stored_bits // 8,
        })
    quantized_params = sum(row["shape"][0] * row["shape"][1] for row in layers)
    quantized_bytes = sum(row["bytes"] for row in layers)
    n_outliers = sum(row["n_outliers"] for row in layers)
    dense = info.dense_keys
    dense_params = sum(math.prod(info.tensors[key].shape) for key in dense)
    dense_bytes = sum(info.tensor_bytes(key) for key in dense)
    dense_dtypes = sorted({info.tensors[key].dtype for key in dense})
    shard_bytes = info.files_bytes
    folder_bytes = sum(p.stat().st_size for p in info.folder.iterdir() if p.is_file())
    fp16_bytes = 2 * (quantized_params + dense_params)
    paper_bits = sum(row["paper_bits_per_param"] * row["shape"][0] * row["shape"][1] for row in layers)
    return {
        "folder": str(info.folder),
        "format_version": info.format_version,
        "config": config.to_dict(),
        "checksums_verified": verify,
        "layers": layers,
        "totals": {
            "n_quantized_layers": len(layers),
            "quantized_params": quantized_params,
            "quantized_bytes": quantized_bytes,
            "avg_bits_per_param": 8 * quantized_bytes / max(quantized_params, 1),
            "avg_paper_bits_per_param": paper_bits / max(quantized_params, 1),
            "n_outliers": n_outliers,
            "outlier_share": n_outliers / max(quantized_params, 1),
            "dense_params": dense_params,
            "dense_bytes": dense_bytes,
            "dense_dtypes": dense_dtypes,
            "tensor_bytes": quantized_bytes + dense_bytes,
            "shard_bytes": shard_bytes,
            "folder_bytes": folder_bytes,
            "fp16_bytes": fp16_bytes,
            "shards_vs_fp16": shard_bytes / fp16_bytes,
        },
    }


def format_description(d: dict[str, Any], *, layers: bool = True) -> str:
    t = d["totals"]
    c = d["config"]
    lines = [
        f"{d['folder']}: spqrkit format version {d['format_version']}, checksums "
        + ("verified" if d["checksums_verified"] else "not checked"),
        "config: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "version"),
    ]
    if layers:
        width = max((len(row["name"]) for row in d["layers"]), default=4)
        lines.append(f"{'layer':<{width}}  {'shape':>12}  {'bits/param':>10}  {'Eq. 4':>6}  {'outliers':>9}")
        for row in d["layers"]:
            shape = "x".join(map(str, row["shape"]))
            lines.append(f"{row['name']:<{width}}  {shape:>12}  {row['bits_per_param']:>10.3f}  "
                         f"{row['paper_bits_per_param']:>6.3f}  {100 * row['outlier_share']:>8.3f}%")
    mb = 1 << 20
    lines += [
        f"quantized: {t['n_quantized_layers']} linears, {t['quantized_params']:,} params, "
        f"{t['avg_bits_per_param']:.3f} bits/param stored ({t['avg_paper_bits_per_param']:.3f} by Eq. 4), "
        f"outliers {100 * t['outlier_share']:.3f}%, {t['quantized_bytes'] / mb:.2f} MiB",
        f"dense: {t['dense_params']:,} params ({', '.join(t['dense_dtypes']) or '-'}), {t['dense_bytes'] / mb:.2f} MiB",
        f"on disk: shards {t['shard_bytes'] / mb:.2f} MiB, whole folder {t['folder_bytes'] / mb:.2f} MiB; "
        f"fp16 weights would be {t['fp16_bytes'] / mb:.2f} MiB (shards = {100 * t['shards_vs_fp16']:.1f}% of fp16)",
    ]
    return "\n".join(lines)

