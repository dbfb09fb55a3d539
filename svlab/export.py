"""ONNX export of svlab models, quantized weights kept as bit-packed indices and codebooks.

Over 450 lines: one pipeline read top to bottom (compress each weight, trace, rewrite the
graph, check it bit for bit, write atomically, run in onnxruntime), whose parts are only
meaningful together.

How the file is made
--------------------
A copy of the model with each quantized weight replaced by its value is traced by PyTorch's
TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs onnxscript) with
constant folding off, which also keeps the exporter from folding BatchNorm into the
convolutions: every weight stays an initializer named as in ``model.state_dict()``. The graph
is then edited with the ``onnx`` package: each quantized weight's initializer is replaced by
the compressed form :func:`compressed_weights` gives and a subgraph of standard operators that
rebuilds the exact tensor under the same name.

- The ``b``-bit indices are the bit stream of :func:`svlab.quant.packed.pack_indices`, padded to
  whole groups of 8 indices (``b`` bytes each). The graph reads each group's bytes as one
  int64 (Cast, then MatMul with the powers of 256: onnxruntime's int64 ReduceSum is not exact
  past 2**53, which 7-bit groups reach), splits it into 8 indices (Div by powers of ``2**b``,
  Mod ``2**b``) and drops the padding (Slice); 8-bit indices are the bytes themselves (Cast).
- The codebook, one row per tensor or per output channel, is stored as it is for k-means; as
  each row's lowest level and step for uniform quantization (the graph computes
  ``low + i * step``, the float32 operations of :func:`svlab.quant.uniform.levels_from`); and
  as each group's magnitude ``a`` for a 1-bit weight, whose codebook is ``[-a, a]``.
- ``GatherElements(codebook, indices, axis=1)`` and a Reshape give the weight.

Every rebuilt weight is checked bit for bit against the model's before anything is written,
and a quantized weight that the traced graph does not hold as an initializer of exactly its
values is an error, never a silent fp32 copy. onnxruntime folds these constant subgraphs once
when it opens a session (its default), so inference then runs at fp32 speed on fp32 weights in
memory; with constant folding disabled they are rebuilt at every run.

The graph's input is ``fbank`` ``[batch, frames, feat_dim]`` (batch and frames dynamic), the
80-dim kaldi fbank of :func:`svlab.features.fbank` (16 kHz, mean CMN), which is not part of
the graph and is recorded in the file's metadata; its output is ``embedding``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from svlab import checkpoint
from svlab.quant.binarize import BINARY_FORMAT, Binarizer
from svlab.quant.kmeans import check_finite
from svlab.quant.packed import PACKED_FORMAT, load_packed, pack_indices
from svlab.quant.quantize import CodebookQuantizer, clone_model, quantize_model
from svlab.quant.uniform import levels_from

OPSET = 18
TRACE_FRAMES = 100
FRONT_END = "fbank [batch, frames, {}]: kaldi fbank of 16 kHz audio with mean CMN (svlab.features)"
EXPORTABLE = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class CompressedWeight:
    """One quantized weight as the ONNX file stores it: ``bits``-bit indices into codebooks.

    ``indices`` is ``[groups, m]`` (int64, one row per codebook); ``kind`` says what ``table``
    holds: ``"levels"`` the codebooks ``[groups, 2**bits]``, ``"grid"`` each row's lowest level
    and step ``[groups, 2]`` (uniform), ``"binary"`` each group's magnitude ``a`` ``[groups, 1]``
    (codebook ``[-a, a]``).

    >>> w = CompressedWeight((2, 2), 1, "binary", torch.tensor([[1, 0], [0, 0]]),
    ...                      torch.tensor([[0.5], [2.0]]))
    >>> w.weight().tolist(), w.packed().tolist()
    ([[0.5, -0.5], [-2.0, -2.0]], [128])
    """

    shape: tuple[int, ...]
    bits: int
    kind: str
    indices: torch.Tensor
    table: torch.Tensor

    def codebook(self) -> torch.Tensor:
        """The codebooks ``[groups, 2**bits]`` that the graph builds from ``table``."""
        if self.kind == "grid":
            return levels_from(self.table[:, 0], self.table[:, 1], 2**self.bits)
        if self.kind == "binary":
            return torch.cat([-self.table, self.table], dim=1)
        return self.table

    def weight(self) -> torch.Tensor:
        """The weight the graph rebuilds: each index replaced by its row's codebook entry."""
        return self.codebook().gather(1, self.indices).reshape(self.shape)

    def packed(self) -> np.ndarray:
        """The indices bit-packed (uint8), padded below 8 bits to whole groups of 8 indices."""
        stream = pack_indices(self.indices, self.bits).numpy()
        if self.bits == 8:
            return stream
        padded = np.zeros(math.ceil(self.indices.numel() / 8) * self.bits, dtype=np.uint8)
        padded[: stream.size] = stream
        return padded


def _layer_name(key: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight (latent)``; other keys as they are."""
    return re.sub(r"(^|\.)parametrizations\.(\w+)\.original$", r"\1\2 (latent)", key)


def check_finite_state(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer holding NaN or infinity.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> net[1].running_var[0] = float("nan")
    >>> check_finite_state(net)
    Traceback (most recent call last):
    ...
    ValueError: 1.running_var holds 1 NaN / infinite value(s), e.g. at flat index 0
    """
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            check_finite(tensor, _layer_name(key))


def _compress(name: str, module: nn.Module, attr: str, method: nn.Module) -> CompressedWeight:
    latent = module.parametrizations[attr].original
    if latent.dtype != torch.float32:
        raise ValueError(f"{name} is {latent.dtype}; export a float32 model")
    weight = getattr(module, attr).detach()
    if isinstance(method, CodebookQuantizer):
        bits, levels = method.bits, method.levels().detach()
        indices = method.indices(latent)
        grid = method.grid
        if grid is not None and torch.equal(levels_from(grid[:, 0], grid[:, 1], 2**bits), levels):
            kind, table = "grid", grid.detach().clone()
        else:
            kind, table = "levels", levels.clone()
    else:
        rows = weight.reshape(method.groups, -1)
        bits, kind = 1, "binary"
        indices, table = (rows > 0).long(), rows.abs().amax(dim=1, keepdim=True)
    compressed = CompressedWeight(tuple(weight.shape), bits, kind, indices, table.float())
    if not torch.equal(compressed.weight(), weight):
        raise ValueError(f"{name}: its quantized values cannot be rebuilt exactly from a codebook")
    return compressed


def compressed_weights(model: nn.Module) -> dict[str, CompressedWeight]:
    """``{weight name: CompressedWeight}`` for every quantized or binarized weight of ``model``.

    Quantized weights must belong to Linear, Conv or ConvTranspose layers (an RNN's weights
    are laid out anew by ONNX) and carry one svlab quantizer or binarizer; anything else is a
    ``ValueError`` naming the weight.

    >>> from svlab.quant import quantize_model
    >>> net = quantize_model(nn.Sequential(nn.Linear(8, 4)), 2, method="uniform")
    >>> w = compressed_weights(net)["0.weight"]; w.bits, w.kind, w.weight().equal(net[0].weight)
    (2, 'grid', True)
    >>> compressed_weights(quantize_model(nn.LSTM(3, 2), 4))
    Traceback (most recent call last):
    ...
    ValueError: weight_ih_l0: a quantized weight of a ParametrizedLSTM cannot be exported ...
    """
    found = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for attr, chain in module.parametrizations.items():
                name = f"{module_name}.{attr}" if module_name else attr
                if not isinstance(module, EXPORTABLE):
                    raise ValueError(
                        f"{name}: a quantized weight of a {type(module).__name__} cannot be "
                        "exported (only Linear, Conv and ConvTranspose layers can)"
                    )
                kinds = [type(p).__name__ for p in chain]
                if len(chain) != 1 or not isinstance(chain[0], CodebookQuantizer | Binarizer):
                    raise ValueError(
                        f"{name}: parametrized by {kinds}; only one svlab quantizer "
                        "(CodebookQuantizer) or binarizer (Binarizer) can be exported"
                    )
                found[name] = _compress(name, module, attr, chain[0])
    return found


def _plain(model: nn.Module) -> nn.Module:
    """The model itself: every parametrized weight replaced by its value (model is changed)."""
    with torch.no_grad():
        for module in list(model.modules()):
            for attr in list(getattr(module, "parametrizations", {})):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def _trace(model: nn.Module, feat_dim: int, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    example = torch.randn(2, TRACE_FRAMES, feat_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        for message in ("You are using the legacy TorchScript", "The feature will be removed"):
            warnings.filterwarnings("ignore", message, DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["fbank"],
            output_names=["embedding"],
            dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


class _Graph:
    """Adds the unpacking subgraphs to a traced graph, sharing constants between layers."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
        self.nodes: list[onnx.NodeProto] = []
        self.replaced: dict[str, np.ndarray] = {}

    def constant(self, name: str, values: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(values, name)
            self.graph.initializer.append(self.initializers[name])
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def locate(self, name: str, weight: np.ndarray) -> str:
        """The initializer that holds the weight ``name`` (through Identity nodes), or by value."""
        target, seen = name, set()
        while target not in self.initializers and target in self.identity and target not in seen:
            seen.add(target)
            target = self.identity[target]
        if target in self.replaced or target in self.initializers:
            held = self.replaced.get(target)
            if held is None:
                held = numpy_helper.to_array(self.initializers[target])
            if held.shape == weight.shape and np.array_equal(held, weight):
                return target
            raise ValueError(f"{name}: the traced graph holds other values in {target!r}")
        for init_name, init in self.initializers.items():
            if tuple(init.dims) == weight.shape and init.data_type == TensorProto.FLOAT:
                if np.array_equal(numpy_helper.to_array(init), weight):
                    return init_name
        raise ValueError(f"{name}: no initializer of the traced graph holds this quantized weight")

    def indices(self, t: str, q: str, w: CompressedWeight) -> str:
        b = w.bits
        packed = self.constant(f"{t}::packed", w.packed())
        as_int = self.node("Cast", [packed], f"{q}/bytes", to=TensorProto.INT64)
        if b < 8:
            groups = self.constant(f"svlab::groups{b}", np.array([-1, b], dtype=np.int64))
            powers = self.constant(f"svlab::bytes{b}", 256 ** np.arange(b - 1, -1, -1)[:, None])
            shifts = self.constant(f"svlab::shifts{b}", 2 ** (b * np.arange(7, -1, -1)))
            levels = self.constant(f"svlab::levels{b}", np.array([2**b], dtype=np.int64))
            flat = self.constant("svlab::flat", np.array([-1], dtype=np.int64))
            zero = self.constant("svlab::zero", np.array([0], dtype=np.int64))
            count = self.constant(f"{q}/count", np.array([w.indices.numel()], dtype=np.int64))
            x = self.node("Reshape", [as_int, groups], f"{q}/groups")
            x = self.node("MatMul", [x, powers], f"{q}/words")
            x = self.node("Div", [x, shifts], f"{q}/shifted")
            x = self.node("Mod", [x, levels], f"{q}/digits")
            x = self.node("Reshape", [x, flat], f"{q}/padded")
            as_int = self.node("Slice", [x, zero, count], f"{q}/flat")
        rows = self.constant(f"{q}/rows", np.array(w.indices.shape, dtype=np.int64))
        return self.node("Reshape", [as_int, rows], f"{q}/indices")

    def codebook(self, t: str, q: str, w: CompressedWeight) -> str:
        table = w.table.numpy()
        if w.kind == "levels":
            return self.constant(f"{t}::codebook", table)
        if w.kind == "binary":
            magnitude = self.constant(f"{t}::magnitude", table)
            negative = self.node("Neg", [magnitude], f"{q}/negative")
            return self.node("Concat", [negative, magnitude], f"{q}/codebook", axis=1)
        k = 2**w.bits
        steps = self.constant(f"svlab::steps{k}", np.arange(k, dtype=np.float32)[None, :])
        low = self.constant(f"{t}::low", np.ascontiguousarray(table[:, :1]))
        step = self.constant(f"{t}::step", np.ascontiguousarray(table[:, 1:]))
        offsets = self.node("Mul", [steps, step], f"{q}/offsets")
        return self.node("Add", [low, offsets], f"{q}/codebook")

    def replace(self, name: str, w: CompressedWeight) -> None:
        weight = w.weight().numpy()
        target = self.locate(name, weight)
        if target in self.replaced:
            return
        self.graph.initializer.remove(self.initializers.pop(target))
        q = f"svlab/w{len(self.replaced)}"
        self.replaced[target] = weight
        codebook, indices = self.codebook(target, q, w), self.indices(target, q, w)
        gathered = self.node("GatherElements", [codebook, indices], f"{q}/gathered", axis=1)
        shape = self.constant(f"{q}/shape", np.array(w.shape, dtype=np.int64))
        self.node("Reshape", [gathered, shape], target)

    def finish(self) -> None:
        old = list(self.graph.node)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes + old)


def to_onnx(
    model: nn.Module, path: str | os.PathLike, *, feat_dim: int = 80, opset: int = OPSET
) -> Path:
    """Write ``model`` (fbank ``[B, T, feat_dim]`` -> embedding) as an ONNX file, atomically.

    Quantized (k-means or uniform, any bits, per tensor or per channel) and binarized weights
    are stored compressed (see the module docstring); an fp32 model is exported as it is, with
    a ``UserWarning`` that nothing is compressed. NaN or infinite values, a quantizer the file
    cannot hold or an unwritable ``path`` raise ``ValueError`` and leave ``path`` as it was.
    The model is not changed.

    >>> import tempfile, pathlib
    >>> from svlab.models import build
    >>> from svlab.quant import quantize_model, save_packed
    >>> net = quantize_model(build("resnet18", base_width=16, embed_dim=16), 4)
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> onnx_bytes = to_onnx(net, folder / "net.onnx").stat().st_size
    >>> svq_bytes = save_packed(net, folder / "net.svq").stat().st_size
    >>> onnx_bytes < 1.1 * svq_bytes
    True
    """
    path = Path(path)
    work = clone_model(model).cpu().eval()
    check_finite_state(work)
    compressed = compressed_weights(work)
    if not compressed:
        warnings.warn(
            f"{type(model).__name__} has no quantized or binarized weight: the ONNX file holds "
            "its fp32 weights, nothing is compressed",
            UserWarning,
            stacklevel=2,
        )
    proto = _trace(_plain(work), feat_dim, opset)
    graph = _Graph(proto.graph)
    for name, weight in compressed.items():
        graph.replace(name, weight)
    graph.finish()
    bits = {name: w.bits for name, w in compressed.items()}
    helper.set_model_props(
        proto,
        {
            "svlab.model": type(model).__name__,
            "svlab.input": FRONT_END.format(feat_dim),
            "svlab.output": "embedding [batch, embed_dim]",
            "svlab.bits": json.dumps(bits),
        },
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    checkpoint.atomic_write(path, lambda f: f.write(data))
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = 1, fold_constants: bool = True):
    """An onnxruntime CPU session for ``path``; ``threads`` for intra- and inter-op (None: ORT's).

    ``fold_constants=False`` disables onnxruntime's constant folding, so that a quantized
    graph rebuilds its weights at every run instead of once at load time.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> _ = to_onnx(quantize_model(nn.Sequential(nn.Linear(80, 4)), 3), p)
    >>> onnx_session(p).run(None, {"fbank": np.zeros((1, 5, 80), np.float32)})[0].shape
    (1, 5, 4)
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("running ONNX files needs onnxruntime: pip install onnxruntime") from err
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    disabled = [] if fold_constants else ["ConstantFolding"]
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def load_for_export(path: str | os.PathLike, bits: int | None = None, **options: str) -> nn.Module:
    """The model in a checkpoint (``svlab.checkpoint.save_model``) or packed ``.svq`` file.

    ``bits`` quantizes a checkpoint's fp32 model (``options``: ``method``, ``granularity`` of
    :func:`svlab.quant.quantize_model`); a packed file is already quantized.

    >>> load_for_export("/no/such.pt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at /no/such.pt
    """
    saved = checkpoint.load(path)
    kind = saved.get("format") if isinstance(saved, dict) else None
    if kind == checkpoint.MODEL_FORMAT:
        model = checkpoint.load_model(path)
        return model if bits is None else quantize_model(model, bits, **options)
    if kind == PACKED_FORMAT:
        if bits is not None:
            raise ValueError(f"{path} is already quantized; --bits applies to an fp32 checkpoint")
        if saved["model"] is None:
            raise ValueError(
                f"{path} records no model name: export it from Python with "
                "to_onnx(load_packed(path, model), ...)"
            )
        return load_packed(path, saved["model"])
    if kind == BINARY_FORMAT:
        raise ValueError(
            f"{path} is a 1-bit file, which records no architecture: export it from Python "
            "with to_onnx(load_binary(path, model), ...)"
        )
    raise ValueError(f"{path} is neither an svlab model checkpoint nor a packed .svq file")


def _run(args: argparse.Namespace) -> int:
    model = load_for_export(args.checkpoint, args.bits, method=args.method,
                            granularity=args.granularity)
    path = to_onnx(model, args.onnx)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if not args.check:
        return 0
    fbank = torch.randn(2, 300, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(fbank).numpy()
    got = onnx_session(path).run(None, {"fbank": fbank.numpy()})[0]
    difference = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"onnxruntime vs svlab, 2 x 300 frames: max relative difference {difference:.2e}")
    return 0 if difference <= 1e-5 else 1


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab export``: a checkpoint or packed model as an ONNX file.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> args = parser.parse_args(["export", "m.svq", "--onnx", "m.onnx"]); args.bits, args.check
    (None, False)
    """
    parser = subparsers.add_parser(
        "export",
        help="write a model checkpoint or packed .svq file as a compressed ONNX file",
        description="Write a model as ONNX (fbank [batch, frames, 80] in, embeddings out), "
        "its quantized weights kept as bit-packed indices and codebooks; --check compares "
        "onnxruntime's embeddings with svlab's.",
    )
    parser.add_argument("checkpoint", help="a model checkpoint (.pt) or a packed model (.svq)")
    parser.add_argument("--onnx", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--bits", type=int, choices=range(1, 9), metavar="{1..8}",
        help="quantize a checkpoint's fp32 model to this many bits first",
    )  # fmt: skip
    parser.add_argument("--method", default="kmeans", choices=["kmeans", "uniform"],
                        help="levels for --bits: k-means centroids or a uniform grid")
    parser.add_argument("--granularity", default="tensor", choices=["tensor", "channel"],
                        help="one set of levels per tensor or per output channel, for --bits")
    parser.add_argument(
        "--check", action="store_true", help="compare onnxruntime's embeddings with svlab's"
    )
    parser.set_defaults(func=_run)
