"""Packed storage of quantized models: bit-packed indices, per-layer codebooks, the fp32 rest."""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from svlab import checkpoint
from svlab.quant.quantize import (
    CodebookQuantizer,
    Patterns,
    bit_map,
    dequantize,
    latent_weight,
    quantizers,
)
from svlab.quant.uniform import levels_from

PACKED_FORMAT = "svlab-packed-v2"
CODEBOOK_ENTRY_BYTES = 4  # fp32 centroids; a uniform codebook is two fp32 numbers (low, step)


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in ``0 .. 2**bits - 1`` as a bit stream, most significant bit first: uint8.

    >>> pack_indices(torch.tensor([1, 2, 3, 0]), 2).tolist()  # 01 10 11 00
    [108]
    """
    flat = indices.detach().reshape(-1).cpu().numpy().astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(flat.copy())
    bitplanes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]
    return torch.from_numpy(np.packbits(bitplanes.reshape(-1)))


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The ``count`` integers that :func:`pack_indices` stored in ``packed``: int64.

    >>> unpack_indices(pack_indices(torch.tensor([5, 0, 7]), 3), 3, 3).tolist()
    [5, 0, 7]
    """
    data = packed.cpu().numpy()
    if bits == 8:
        return torch.from_numpy(data[:count].astype(np.int64))
    bitplanes = np.unpackbits(data, count=count * bits).reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, 8 - bits :] = bitplanes
    return torch.from_numpy(np.packbits(padded, axis=1)[:, 0].astype(np.int64))


def packed_layer_bytes(numel: int, bits: int, groups: int = 1, method: str = "kmeans") -> int:
    """Bytes of one quantized weight: ``ceil(numel * bits / 8)`` index bytes plus its codebooks.

    A k-means codebook is ``2**bits`` fp32 centroids; a uniform one is its low and step.

    >>> packed_layer_bytes(1000, 4), packed_layer_bytes(1000, 4, groups=10, method="uniform")
    (564, 580)
    """
    entries = 2**bits if method == "kmeans" else 2
    return math.ceil(numel * bits / 8) + groups * entries * CODEBOOK_ENTRY_BYTES


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def model_size(
    model: nn.Module,
    bits: int | Mapping[str, int | None] | None = None,
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
    include: Patterns = None,
    exclude: Patterns = None,
) -> int:
    """Bytes of the model's packed form: quantized weights as indices + codebooks, the rest as is.

    With ``bits`` None, the model as it is (its quantizers say what is quantized); otherwise the
    size ``quantize_model(model, bits, ...)`` would have, without clustering anything. Every
    parameter and buffer counts (BatchNorm statistics too), at its own element size.

    >>> net = nn.Sequential(nn.Linear(100, 10), nn.BatchNorm1d(10))
    >>> model_size(net)  # 1010 fp32 + 4 * 10 fp32 BatchNorm + an int64 num_batches_tracked
    4208
    >>> model_size(net, 4)  # 1000 4-bit indices + 16 fp32 centroids + the rest as above
    772
    """
    state = dequantize(model).state_dict() if bits is None else model.state_dict()
    if bits is None:
        layers = {
            name: (q.bits, q.codebook.shape[0], q.method) for name, q in quantizers(model).items()
        }
    else:
        if quantizers(model):
            raise ValueError("model_size(model, bits): give an fp32 model, or bits=None")
        layers = {
            name: (width, state[name].shape[0] if granularity == "channel" else 1, method)
            for name, width in bit_map(model, bits, include=include, exclude=exclude).items()
        }
    total = 0
    for key, tensor in state.items():
        if key in layers:
            total += packed_layer_bytes(tensor.numel(), *layers[key])
        else:
            total += _tensor_bytes(tensor)
    return total


def save_packed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write a quantized model compactly and atomically; ``name`` records its registry model.

    Layout: one uint8 stream of every quantized weight's bit-packed indices, one stream per
    dtype holding the codebooks (or uniform grids) and every other parameter and buffer, and a
    table of names, shapes and offsets (zlib-compressed JSON: the names repeat long prefixes,
    and uncompressed the table alone is 8% of a 4-bit tutorial ResNet's file). It is a
    ``torch.save`` file of tensors and plain values, so it loads with ``weights_only=True``.
    :func:`load_packed` reads it back to identical weights.

    >>> import tempfile, pathlib
    >>> from svlab.quant import quantize_model
    >>> net = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)), 4)
    >>> p = save_packed(net, pathlib.Path(tempfile.mkdtemp()) / "net.svq")
    >>> back = load_packed(p, nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)))
    >>> all(back[i].weight.equal(net[i].weight) for i in (0, 2))
    True
    """
    plain_state = dequantize(model).state_dict()
    layers, index_chunks = [], []
    streams: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def put(tensor: torch.Tensor) -> tuple[str, int]:
        dtype = str(tensor.dtype).removeprefix("torch.")
        flat = tensor.detach().reshape(-1).cpu()
        offset = sizes.get(dtype, 0)
        streams.setdefault(dtype, []).append(flat)
        sizes[dtype] = offset + flat.numel()
        return dtype, offset

    index_offset = 0
    for layer_name, quantizer in quantizers(model).items():
        latent = latent_weight(model, layer_name)
        packed = pack_indices(quantizer.indices(latent), quantizer.bits)
        index_chunks.append(packed)
        if quantizer.method == "uniform":
            _, codebook_offset = put(quantizer.grid.float())
        else:
            _, codebook_offset = put(quantizer.levels().float())
        layers.append(
            {
                "name": layer_name,
                "shape": list(latent.shape),
                "bits": quantizer.bits,
                "method": quantizer.method,
                "groups": int(quantizer.codebook.shape[0]),
                "learn_codebook": bool(quantizer.codebook.requires_grad),
                "index_offset": index_offset,
                "index_bytes": packed.numel(),
                "codebook_offset": codebook_offset,
            }
        )
        index_offset += packed.numel()
    quantized_names = {layer["name"] for layer in layers}
    dense = []
    for key, tensor in plain_state.items():
        if key in quantized_names:
            continue
        dtype, offset = put(tensor)
        dense.append({"name": key, "shape": list(tensor.shape), "dtype": dtype, "offset": offset})
    return checkpoint.save(
        path,
        {
            "format": PACKED_FORMAT,
            "model": name,
            "overrides": dict(overrides or {}),
            "table": _compress_table({"layers": layers, "dense": dense}),
            "indices": torch.cat(index_chunks)
            if index_chunks
            else torch.zeros(0, dtype=torch.uint8),
            "streams": {dtype: torch.cat(chunks) for dtype, chunks in streams.items()},
        },
    )


def _compress_table(table: dict) -> torch.Tensor:
    """A JSON-able table as zlib-compressed UTF-8 bytes in a uint8 tensor."""
    text = json.dumps(table, separators=(",", ":")).encode()
    return torch.frombuffer(bytearray(zlib.compress(text, 9)), dtype=torch.uint8)


def _read(path: Path) -> dict:
    try:
        packed = checkpoint.load(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable packed model (truncated or corrupt): {err}"
        ) from err
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path} is not a packed svlab model (format {PACKED_FORMAT!r})")
    try:
        packed.update(json.loads(zlib.decompress(packed.pop("table").numpy().tobytes())))
    except (zlib.error, ValueError) as err:
        raise ValueError(f"{path}: the layer table is corrupt: {err}") from err
    total = sum(layer["index_bytes"] for layer in packed["layers"])
    if packed["indices"].numel() != total:
        raise ValueError(
            f"{path}: index stream holds {packed['indices'].numel()} bytes, the table {total}"
        )
    return packed


def _check_fits(path: Path, packed: dict, template: dict[str, torch.Tensor]) -> None:
    """The file's names and shapes must be exactly the template model's."""
    stored = {entry["name"]: tuple(entry["shape"]) for entry in packed["layers"] + packed["dense"]}
    expected = {key: tuple(tensor.shape) for key, tensor in template.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(stored) & set(expected) if stored[k] != expected[k])
    if missing or unexpected or wrong:
        details = [
            f"{key} is {stored[key]} in the file, {expected[key]} in the model" for key in wrong
        ]
        raise ValueError(
            f"{path} holds another model: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape "
            f"{details[:3]}"
        )


def load_packed(path: str | os.PathLike, model_or_name: nn.Module | str) -> nn.Module:
    """Rebuild a quantized model from :func:`save_packed`'s file.

    ``model_or_name`` is an fp32 model of the same architecture (not changed; a quantized copy
    is returned) or a registry name, built with the overrides recorded in the file. A truncated
    file, or one of another model, raises ``ValueError`` naming the file and what differs.

    >>> load_packed("/no/such.svq", "resnet34")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at /no/such.svq
    """
    path = Path(path)
    packed = _read(path)
    if isinstance(model_or_name, str):
        from svlab.models import build

        if packed["model"] is None:
            raise ValueError(f"{path} records no model name; pass a model instead of a name")
        if packed["model"] != model_or_name:
            raise ValueError(f"{path} holds a {packed['model']!r} model, not {model_or_name!r}")
        model = build(model_or_name, **packed["overrides"])
    else:
        model = dequantize(model_or_name)
    template = model.state_dict()
    _check_fits(path, packed, template)
    streams = packed["streams"]

    def take(dtype: str, offset: int, shape: list[int]) -> torch.Tensor:
        count = math.prod(shape)
        stream = streams.get(dtype)
        if stream is None or offset + count > stream.numel():
            raise ValueError(f"{path}: the {dtype} stream is shorter than its table says")
        return stream[offset : offset + count].reshape(shape)

    state = {e["name"]: take(e["dtype"], e["offset"], e["shape"]) for e in packed["dense"]}
    built = []
    for layer in packed["layers"]:
        groups, bits, shape = layer["groups"], layer["bits"], layer["shape"]
        quantizer = CodebookQuantizer(groups, bits, layer["method"], layer["learn_codebook"])
        with torch.no_grad():
            if layer["method"] == "uniform":
                quantizer.grid.copy_(take("float32", layer["codebook_offset"], [groups, 2]))
                grid = quantizer.grid
                quantizer.codebook.copy_(levels_from(grid[:, 0], grid[:, 1], 2**bits))
            else:
                quantizer.codebook.copy_(
                    take("float32", layer["codebook_offset"], [groups, 2**bits])
                )
        start = layer["index_offset"]
        chunk = packed["indices"][start : start + layer["index_bytes"]]
        indices = unpack_indices(chunk, bits, math.prod(shape)).reshape(groups, -1)
        state[layer["name"]] = quantizer.codebook.detach().gather(1, indices).reshape(shape)
        built.append((layer["name"], quantizer))
    model.load_state_dict({key: state[key] for key in template})
    for layer_name, quantizer in built:
        module_name, _, attr = layer_name.rpartition(".")
        module = model.get_submodule(module_name)
        quantizer.to(getattr(module, attr).device)
        parametrize.register_parametrization(module, attr, quantizer)
    return model
