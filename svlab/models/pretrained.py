"""Loading wespeaker, SpeechBrain, 3D-Speaker and pyannote checkpoints: source from the keys,
config from the shapes.

Over 450 lines: one table of architectures (signature keys, configuration from the shapes,
renaming rules), read by one loader and inverted by :func:`export_state`; every part uses the
file-naming errors and the key reader defined here, so a split would only scatter the table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.torch_version import TorchVersion

from svlab import storage
from svlab.losses import AAMSoftmax
from svlab.models.registry import MODEL_FORMAT, build, from_saved

SOURCES = ("wespeaker", "speechbrain", "3d-speaker", "pyannote")
_PREFIXES = ("module.", "front.")
_PYANNOTE = "pyannote.audio"  # a pyannote checkpoint's own entry: versions, architecture


class PretrainedError(ValueError):
    """A file that is not a usable wespeaker / SpeechBrain / 3D-Speaker / pyannote / svlab
    checkpoint (names the file and the key)."""


class PyannoteRecord:
    """An inert stand-in for the pyannote.audio objects its checkpoints pickle (a task's
    ``Specifications``, the ``Problem`` and ``Resolution`` enums): the fields as plain data
    (``args`` for an enum's value), no pyannote code, no behaviour.

    >>> vars(PyannoteRecord(3))
    {'args': (3,)}
    """

    def __init__(self, *args: object) -> None:
        self.args = args


_PYANNOTE_STAND_INS = tuple(
    (PyannoteRecord, f"pyannote.audio.core.task.{name}")
    for name in ("Specifications", "Problem", "Resolution")
) + ((TorchVersion, "torch.torch_version.TorchVersion"),)


class Pretrained(NamedTuple):
    """What :func:`read_pretrained` gives: the model (eval mode), the AAM head it was trained
    with (wespeaker's ``projection.weight``; None if the file has none), the registry name and
    overrides that rebuild it (``svlab.models.build(name, **overrides)``), and its source."""

    model: nn.Module
    head: AAMSoftmax | None
    name: str
    overrides: dict
    source: str


def load_pretrained(path: str | os.PathLike, source: str | None = None) -> nn.Module:
    """The speaker encoder in a wespeaker ``avg_model.pt`` (ResNet, ECAPA-TDNN, CAM++), a
    SpeechBrain ``embedding_model.ckpt``, a 3D-Speaker state dict (CAM++ ``campplus_*.pt``,
    ERes2Net, ERes2NetV2), a pyannote.audio ``pytorch_model.bin`` (``WeSpeakerResNet34``) or an
    svlab model checkpoint, as an svlab model in eval mode.

    The toolkit (``source``: one of ``SOURCES``) and the architecture are
    recognised from the keys, the channel configuration is read from the tensor shapes, and
    ``module.`` / ``front.`` prefixes are stripped. wespeaker's CAM++ has 3D-Speaker's key
    names: a file with wespeaker's AAM head (``projection.weight``), or ``source="wespeaker"``,
    makes it wespeaker's. A pyannote checkpoint (PyTorch Lightning's layout) names its
    architecture in its ``pyannote.audio`` entry; it is read without pyannote's code, its
    pickled pyannote objects as inert :class:`PyannoteRecord` s, and any other pyannote model
    (segmentation ...) is refused by name. The model's ``front_end`` attribute names the
    features it was trained on (:func:`svlab.features.front_end_of`). Bad files raise
    :class:`PretrainedError` naming the file and the first offending key.

    >>> import tempfile, pathlib
    >>> from svlab.models import build
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "avg_model.pt"
    >>> net = build("resnet34_wespeaker", base_width=2, embed_dim=8)
    >>> torch.save(export_state(net), p)
    >>> model = load_pretrained(p); model.embed_dim, model.front_end
    (8, 'kaldi')
    >>> torch.save({"encoder.w": torch.ones(1)}, p); load_pretrained(p)
    Traceback (most recent call last):
    ...
    svlab.models.pretrained.PretrainedError: ...avg_model.pt: no known architecture has ...
    """
    return read_pretrained(path, source).model


def read_pretrained(path: str | os.PathLike, source: str | None = None) -> Pretrained:
    """:func:`load_pretrained`'s model with its head, registry name, overrides and source.

    >>> import tempfile, pathlib
    >>> from svlab.models import build
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "embedding_model.ckpt"
    >>> torch.save(export_state(build("ecapa_c1024_speechbrain", channels=8, scale=4,
    ...     mfa_channels=16, embed_dim=4)), p)
    >>> loaded = read_pretrained(p)
    >>> loaded.name, loaded.source, loaded.overrides["mfa_channels"], loaded.head
    ('ecapa_c1024_speechbrain', 'speechbrain', 16, None)
    """
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or None, got {source!r}")
    state = _read(path)
    if state.get("format") == MODEL_FORMAT:
        head = AAMSoftmax.from_weight(state.get("head"))
        model = from_saved(state, path)
        return Pretrained(model.eval(), head, state["model"], state["overrides"], "svlab")
    if _PYANNOTE in state:
        state, arch = _pyannote(state, path, source)
    else:
        state = _strip_prefixes(_tensors(state, path), path)
        arch = _detect(state, path, source)
    name, overrides = arch.config(_Keys(state, path))
    model = build(name, **overrides)
    head = _load(model, state, arch, name, path)
    return Pretrained(model.eval(), head, name, overrides, arch.source)


# ----------------------------------------------------------------------------- reading


def _read(path: Path) -> dict:
    # unreadable files: CheckpointError naming the file
    state = storage.load(path, stand_ins=_PYANNOTE_STAND_INS)
    if not isinstance(state, dict):
        raise PretrainedError(f"{path} is not a state dict: it holds a {type(state).__name__}")
    return state


def _tensors(state: dict, path: Path) -> dict:
    """``state`` itself if it maps names to tensors (a state dict)."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PretrainedError(
                f"{path} is not a state dict: {key!r} holds a {type(value).__name__}, not a tensor"
            )
    return state


def _strip_prefixes(state: dict, path: Path) -> dict:
    stripped = {}
    for key, value in state.items():
        new = key
        while new.startswith(_PREFIXES):
            new = new.split(".", 1)[1]
        if new in stripped:
            raise PretrainedError(f"{path}: {key!r} and another key both mean {new!r}")
        stripped[new] = value
    return stripped


class _Keys:
    """A state dict whose missing keys raise :class:`PretrainedError` naming the file."""

    def __init__(self, state: dict, path: Path) -> None:
        self.state, self.path = state, path

    def shape(self, key: str, dim: int) -> int:
        if key not in self.state:
            raise PretrainedError(f"{self.path}: key {key!r} is missing")
        shape = self.state[key].shape
        if dim >= len(shape):
            raise PretrainedError(f"{self.path}: {key!r} has shape {list(shape)}, too few axes")
        return shape[dim]

    def count(self, pattern: str) -> int:
        """How many distinct values the first group of ``pattern`` takes over the keys."""
        return len({m.group(1) for k in self.state if (m := re.fullmatch(pattern, k))})


# ----------------------------------------------------------------------------- architectures


class _Arch(NamedTuple):
    source: str
    description: str
    signature: tuple[str, ...]  # keys that identify it
    config: Callable[[_Keys], tuple[str, dict]]
    rules: tuple[tuple, ...]  # (toolkit key template, svlab key template[, 1x1 conv])
    marker: str = ""  # a key that tells it from another toolkit's with the same names


def _wespeaker_resnet(keys: _Keys) -> tuple[str, dict]:
    depths = tuple(keys.count(rf"layer{s}\.(\d+)\..*") for s in (1, 2, 3, 4))
    width = keys.shape("conv1.weight", 0)
    stats = keys.shape("seg_1.weight", 1) // 2
    feat_dim = stats // (8 * width) * 8
    overrides = dict(base_width=width, feat_dim=feat_dim, embed_dim=keys.shape("seg_1.weight", 0))
    if depths == (2, 2, 2, 2):
        return "resnet18_wespeaker", overrides
    return "resnet34_wespeaker", dict(overrides, depths=depths)


def _wespeaker_ecapa(keys: _Keys) -> tuple[str, dict]:
    channels = keys.shape("layer1.conv.weight", 0)
    mfa = keys.shape("conv.weight", 0)
    block = "layer2.se_res2block"
    overrides = dict(
        channels=channels,
        feat_dim=keys.shape("layer1.conv.weight", 1),
        embed_dim=keys.shape("linear.weight", 0),
        scale=keys.count(rf"{block}\.1\.convs\.(\d+)\..*") + 1,
        se_channels=keys.shape(f"{block}.3.linear1.weight", 0),
        mfa_channels=mfa,
        attention_channels=keys.shape("pool.linear1.weight", 0),
        global_context=keys.shape("pool.linear1.weight", 1) == 3 * mfa,
    )
    return ("ecapa_c1024_wespeaker" if channels == 1024 else "ecapa_c512_wespeaker"), overrides


def _speechbrain_ecapa(keys: _Keys) -> tuple[str, dict]:
    n_blocks = keys.count(r"blocks\.(\d+)\.tdnn1\..*")
    layers = [f"blocks.{i}.tdnn1" for i in range(1, n_blocks + 1)]
    widths = [keys.shape("blocks.0.conv.conv.weight", 0)]
    widths += [keys.shape(f"{layer}.conv.conv.weight", 0) for layer in layers]
    kernels = [keys.shape("blocks.0.conv.conv.weight", 2)]
    kernels += [keys.shape(f"blocks.{i}.res2net_block.blocks.0.conv.conv.weight", 2)
                for i in range(1, n_blocks + 1)]  # fmt: skip
    kernels.append(keys.shape("mfa.conv.conv.weight", 2))
    mfa = keys.shape("mfa.conv.conv.weight", 0)
    uniform = len(set(widths)) == 1 and n_blocks == 3
    overrides = dict(
        channels=widths[0] if uniform else widths,
        feat_dim=keys.shape("blocks.0.conv.conv.weight", 1),
        embed_dim=keys.shape("fc.conv.weight", 0),
        scale=keys.count(r"blocks\.1\.res2net_block\.blocks\.(\d+)\..*") + 1,
        se_channels=keys.shape("blocks.1.se_block.conv1.conv.weight", 0),
        mfa_channels=mfa,
        attention_channels=keys.shape("asp.tdnn.conv.conv.weight", 0),
        global_context=keys.shape("asp.tdnn.conv.conv.weight", 1) == 3 * mfa,
    )
    if kernels != [5] + [3] * n_blocks + [1]:
        overrides["kernel_sizes"] = kernels
    return "ecapa_c1024_speechbrain", overrides


def _speakerlab_campplus(keys: _Keys) -> tuple[str, dict]:
    width = keys.shape("head.conv1.weight", 0)
    growth = keys.shape("xvector.block1.tdnnd1.cam_layer.linear_local.weight", 0)
    overrides = dict(
        feat_dim=keys.shape("xvector.tdnn.linear.weight", 1) // width * 8,
        embed_dim=keys.shape("xvector.dense.linear.weight", 0),
        head_width=width,
        head_blocks=tuple(keys.count(rf"head\.layer{s}\.(\d+)\..*") for s in (1, 2)),
        init_channels=keys.shape("xvector.tdnn.linear.weight", 0),
        growth_rate=growth,
        bn_size=keys.shape("xvector.block1.tdnnd1.linear1.weight", 0) // growth,
        dense_layers=tuple(keys.count(rf"xvector\.block{b}\.tdnnd(\d+)\..*") for b in (1, 2, 3)),
        kernel_size=keys.shape("xvector.block1.tdnnd1.cam_layer.linear_local.weight", 2),
    )
    return "campplus", overrides


def _wespeaker_campplus(keys: _Keys) -> tuple[str, dict]:
    return "campplus_wespeaker", _speakerlab_campplus(keys)[1]


def _eres2net_blocks(keys: _Keys) -> dict:
    """What ERes2Net and ERes2NetV2 share: widths, depths, the blocks' base width and scale."""
    m = keys.shape("conv1.weight", 0)
    widths = [keys.shape(f"layer{s}.0.convs.0.weight", 0) for s in (1, 2, 3, 4)]
    fits = (w for w in range(1, 1025) if all(m * 2**s * w // 64 == widths[s] for s in range(4)))
    base_width = next(fits, None)
    if base_width is None:
        raise PretrainedError(f"{keys.path}: the blocks' widths {widths} fit no base width")
    return dict(
        embed_dim=keys.shape("seg_1.weight", 0),
        m_channels=m,
        depths=tuple(keys.count(rf"layer{s}\.(\d+)\..*") for s in (1, 2, 3, 4)),
        base_width=base_width,  # the smallest that gives these widths
        scale=keys.count(r"layer1\.0\.convs\.(\d+)\..*"),
        two_emb_layer="seg_2.weight" in keys.state,
    )


def _speakerlab_eres2net(keys: _Keys) -> tuple[str, dict]:
    overrides = _eres2net_blocks(keys)
    feat_dim = keys.shape("seg_1.weight", 1) // (32 * overrides["m_channels"]) * 8
    return "eres2net", dict(feat_dim=feat_dim, **overrides)


def _speakerlab_eres2netv2(keys: _Keys) -> tuple[str, dict]:
    overrides = _eres2net_blocks(keys)
    expansion = keys.shape("layer1.0.conv3.weight", 0) // overrides["m_channels"]
    feat_dim = keys.shape("seg_1.weight", 1) // (16 * overrides["m_channels"] * expansion) * 8
    return "eres2netv2", dict(feat_dim=feat_dim, expansion=expansion, **overrides)


def _pyannote_resnet(keys: _Keys) -> tuple[str, dict]:
    _, overrides = _wespeaker_resnet(keys)
    depths = tuple(keys.count(rf"layer{s}\.(\d+)\..*") for s in (1, 2, 3, 4))
    return "resnet34_pyannote", dict(overrides, depths=depths)


# Each rule pairs a key template of the toolkit with svlab's: ``{p}`` is a parameter or buffer
# name, other placeholders are integers, ``{i-1}`` is one less than the toolkit's ``{i}``; a
# third element True marks a 1x1 convolution the toolkit stores for svlab's linear layer.
_WESPEAKER_RESNET = (
    ("conv1.weight", "stem.0.0.weight"),
    ("bn1.{p}", "stem.0.1.{p}"),
    ("layer{s}.{b}.conv1.weight", "stages.{s-1}.{b}.branch.0.0.weight"),
    ("layer{s}.{b}.bn1.{p}", "stages.{s-1}.{b}.branch.0.1.{p}"),
    ("layer{s}.{b}.conv2.weight", "stages.{s-1}.{b}.branch.2.0.weight"),
    ("layer{s}.{b}.bn2.{p}", "stages.{s-1}.{b}.branch.2.1.{p}"),
    ("layer{s}.{b}.shortcut.0.weight", "stages.{s-1}.{b}.shortcut.0.weight"),
    ("layer{s}.{b}.shortcut.1.{p}", "stages.{s-1}.{b}.shortcut.1.{p}"),
    ("seg_1.{p}", "embedding.{p}"),
)
_WESPEAKER_ECAPA = (
    ("layer1.conv.{p}", "stem.conv.{p}"),
    ("layer1.bn.{p}", "stem.bn.{p}"),
    *(
        (f"layer{{k}}.se_res2block.{i}.{m}.{{p}}", f"blocks.{{k-2}}.branch.{i}.{m}.{{p}}")
        for i in (0, 2)
        for m in ("conv", "bn")
    ),
    ("layer{k}.se_res2block.1.convs.{j}.{p}", "blocks.{k-2}.branch.1.convs.{j}.conv.{p}"),
    ("layer{k}.se_res2block.1.bns.{j}.{p}", "blocks.{k-2}.branch.1.convs.{j}.bn.{p}"),
    ("layer{k}.se_res2block.3.linear1.{p}", "blocks.{k-2}.branch.3.gate.0.{p}"),
    ("layer{k}.se_res2block.3.linear2.{p}", "blocks.{k-2}.branch.3.gate.2.{p}"),
    ("conv.{p}", "mfa.{p}"),
    ("pool.linear1.{p}", "pool.attention.0.{p}"),
    ("pool.linear2.{p}", "pool.attention.2.{p}"),
    ("bn.{p}", "bn.{p}"),
    ("linear.{p}", "embedding.{p}"),
)
_SB_TDNN = (("conv.conv.{p}", "conv.{p}"), ("norm.norm.{p}", "bn.{p}"))
_SPEECHBRAIN_ECAPA = (
    *((f"blocks.0.{src}", f"stem.{dst}") for src, dst in _SB_TDNN),
    *(
        (f"blocks.{{i}}.{t}.{src}", f"blocks.{{i-1}}.{t}.{dst}")
        for t in ("tdnn1", "tdnn2")
        for src, dst in _SB_TDNN
    ),
    *(
        (f"blocks.{{i}}.res2net_block.blocks.{{j}}.{src}", f"blocks.{{i-1}}.res2.convs.{{j}}.{dst}")
        for src, dst in _SB_TDNN
    ),
    ("blocks.{i}.se_block.conv1.conv.{p}", "blocks.{i-1}.se.gate.0.{p}", True),
    ("blocks.{i}.se_block.conv2.conv.{p}", "blocks.{i-1}.se.gate.2.{p}", True),
    ("blocks.{i}.shortcut.conv.{p}", "blocks.{i-1}.shortcut.{p}"),
    *((f"mfa.{src}", f"mfa.{dst}") for src, dst in _SB_TDNN),
    *((f"asp.tdnn.{src}", f"pool.tdnn.{dst}") for src, dst in _SB_TDNN),
    ("asp.conv.conv.{p}", "pool.conv.{p}"),
    ("asp_bn.norm.{p}", "bn.{p}"),
    ("fc.conv.{p}", "embedding.{p}", True),
)
_SAME_KEYS = ()  # no renaming: svlab names the modules as the toolkit does

_ARCHS = (  # the first whose signature keys are all there (and marker, without source) wins
    _Arch("3d-speaker", "3D-Speaker ERes2Net",
          ("conv1.weight", "layer1_downsample.weight", "fuse_mode12.local_att.0.weight",
           "seg_1.weight"), _speakerlab_eres2net, _SAME_KEYS),
    _Arch("3d-speaker", "3D-Speaker ERes2NetV2",
          ("conv1.weight", "layer3_ds.weight", "fuse34.local_att.0.weight", "seg_1.weight"),
          _speakerlab_eres2netv2, _SAME_KEYS),
    _Arch("wespeaker", "wespeaker ResNet (BasicBlock, one embedding layer)",
          ("conv1.weight", "seg_1.weight"), _wespeaker_resnet, _WESPEAKER_RESNET),
    _Arch("wespeaker", "wespeaker ECAPA-TDNN", ("layer1.conv.weight", "linear.weight"),
          _wespeaker_ecapa, _WESPEAKER_ECAPA),
    _Arch("speechbrain", "SpeechBrain ECAPA_TDNN", ("blocks.0.conv.conv.weight", "fc.conv.weight"),
          _speechbrain_ecapa, _SPEECHBRAIN_ECAPA),
    _Arch("wespeaker", "wespeaker CAM++", ("head.conv1.weight", "xvector.tdnn.linear.weight"),
          _wespeaker_campplus, _SAME_KEYS, marker="projection.weight"),
    _Arch("3d-speaker", "3D-Speaker CAM++", ("head.conv1.weight", "xvector.tdnn.linear.weight"),
          _speakerlab_campplus, _SAME_KEYS),
)  # fmt: skip
# pyannote.audio checkpoints name their class: the ones svlab loads, by class name
_PYANNOTE_ARCHS = {
    "WeSpeakerResNet34": _Arch("pyannote", "pyannote.audio WeSpeakerResNet34",
                               ("conv1.weight", "seg_1.weight"), _pyannote_resnet,
                               _WESPEAKER_RESNET),
}  # fmt: skip
# pyannote's WeSpeakerResNet34 front end as svlab's "kaldi" fbank computes it
_PYANNOTE_FBANK = dict(
    sample_rate=16000, num_channels=1, num_mel_bins=80, frame_length=25, frame_shift=10,
    round_to_power_of_two=True, snip_edges=True, dither=0.0, window_type="hamming",
    use_energy=False, fbank_centering_span=None,
)  # fmt: skip


def _detect(state: dict, path: Path, source: str | None) -> _Arch:
    for arch in _ARCHS:
        if (
            (source is None or arch.source == source)
            and all(k in state for k in arch.signature)
            and (not arch.marker or source is not None or arch.marker in state)
        ):
            return arch
    first = next(iter(state), None)
    known = "; ".join(f"{a.description}: {', '.join(a.signature)}" for a in _ARCHS)
    where = f" of {source}" if source else ""
    raise PretrainedError(
        f"{path}: no known architecture{where} has the key {first!r} (a known one has: {known})"
    )


def _pyannote(checkpoint: dict, path: Path, source: str | None) -> tuple[dict, _Arch]:
    """The state dict and architecture of a pyannote.audio checkpoint, which names its model's
    class; its front-end settings, if saved, must be those of svlab's kaldi fbank."""
    if source not in (None, "pyannote"):
        raise PretrainedError(f"{path} is a pyannote.audio checkpoint, not one of {source}")
    entry = checkpoint[_PYANNOTE].get("architecture") if isinstance(
        checkpoint[_PYANNOTE], dict) else None  # fmt: skip
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str)
                                              for k in ("module", "class")):  # fmt: skip
        raise PretrainedError(f"{path}: its {_PYANNOTE!r} entry names no architecture")
    module, name = entry["module"], entry["class"]
    if name not in _PYANNOTE_ARCHS:
        parts = module.split(".")
        kind = parts[3] if parts[:3] == ["pyannote", "audio", "models"] and len(parts) > 3 else ""
        what = f"a pyannote.audio {name}{f' ({kind})' if kind else ''} checkpoint ({module})"
        if kind == "embedding":
            raise PretrainedError(f"{path} is {what}: of pyannote's speaker encoders svlab "
                                  f"loads {', '.join(_PYANNOTE_ARCHS)}")  # fmt: skip
        raise PretrainedError(f"{path} is {what}, not a speaker encoder")
    settings = checkpoint.get("hyper_parameters") or {}
    for key, expected in _PYANNOTE_FBANK.items():
        if key in settings and settings[key] != expected:
            raise PretrainedError(
                f"{path}: its front end has {key}={settings[key]!r}; svlab's kaldi fbank, "
                f"pyannote's default, has {key}={expected!r}"
            )
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise PretrainedError(f"{path}: the pyannote checkpoint has no 'state_dict'")
    resnet = {}
    for key, value in _tensors(state, path).items():
        if not key.startswith("resnet."):
            raise PretrainedError(f"{path}: key {key!r} is not in {name}'s ResNet ('resnet.')")
        resnet[key.removeprefix("resnet.")] = value
    return resnet, _PYANNOTE_ARCHS[name]


def _template_regex(template: str) -> re.Pattern:
    """``"layer{s}.{b}.bn1.{p}"`` as a regex with a group per placeholder (offsets ignored)."""
    parts = re.split(r"\{(\w)(?:[+-]\d+)?\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{'[a-z_]+' if part == 'p' else '[0-9]+'})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


def _translate(key: str, source: str, target: str) -> str | None:
    """``key`` written by template ``source`` rewritten with template ``target``, or None."""
    match = _template_regex(source).fullmatch(key)
    if match is None:
        return None
    offsets = dict(re.findall(r"\{(\w)([+-]\d+)?\}", source))
    values = {
        name: value if name == "p" else int(value) - int(offsets.get(name) or 0)
        for name, value in match.groupdict().items()
    }

    def fill(m: re.Match) -> str:
        value = values[m[1]]
        return value if m[1] == "p" else str(value + int(m[2] or 0))

    return re.sub(r"\{(\w)([+-]\d+)?\}", fill, target)


def _rename(key: str, rules: tuple[tuple, ...], reverse: bool = False) -> tuple[str, bool] | None:
    """The key ``key`` maps to (svlab's, or the toolkit's when ``reverse``) and whether the
    toolkit stores it as a 1x1 convolution; None if no rule matches."""
    if not rules:
        return key, False
    for rule in rules:
        source, target = (rule[1], rule[0]) if reverse else (rule[0], rule[1])
        new = _translate(key, source, target)
        if new is not None:
            return new, len(rule) > 2
    return None


def _load(model: nn.Module, state: dict, arch: _Arch, name: str, path: Path) -> AAMSoftmax | None:
    """Copy ``state`` into ``model`` key by key; the head, if any, comes back separately."""
    target = model.state_dict()
    mapped, head = {}, None
    for key, value in state.items():
        if key == "projection.weight" and arch.source == "wespeaker":
            if value.dim() != 2 or value.shape[1] != model.embed_dim:
                raise PretrainedError(
                    f"{path}: 'projection.weight' has shape {list(value.shape)}, not "
                    f"[speakers, {model.embed_dim}] for the AAM head"
                )
            head = AAMSoftmax(model.embed_dim, value.shape[0])
            with torch.no_grad():
                head.weight.copy_(value)
            continue
        renamed = _rename(key, arch.rules)
        if renamed is None or renamed[0] not in target:
            raise PretrainedError(f"{path}: key {key!r} has no place in a {arch.description}")
        new, conv1x1 = renamed
        if value.shape != target[new].shape:
            if conv1x1 and value.shape == (*target[new].shape, 1):
                value = value.squeeze(-1)
            else:
                raise PretrainedError(
                    f"{path}: {key!r} has shape {list(value.shape)}, but {name} with the "
                    f"configuration read from the file expects {list(target[new].shape)}"
                )
        mapped[new] = value
    missing = [k for k in target if k not in mapped]
    if missing:
        raise PretrainedError(f"{path}: the {arch.description} lacks a tensor for {missing[0]!r}")
    model.load_state_dict(mapped)
    return head


# ----------------------------------------------------------------------------- writing


def export_state(model: nn.Module, head: AAMSoftmax | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights in its toolkit's key naming (the inverse of :func:`load_pretrained`):
    what the toolkit's own ``state_dict()`` would hold, with ``head`` as wespeaker's
    ``projection.weight`` (for pyannote's ResNet: what its ``resnet`` module's holds, the
    checkpoint's ``state_dict`` without the ``resnet.`` prefix). For stand-ins in the
    toolkits' formats, and for tests.

    >>> from svlab.models import build
    >>> state = export_state(build("resnet18_wespeaker", base_width=2, embed_dim=4),
    ...                      head=AAMSoftmax(4, 3))
    >>> [k for k in state if not k.startswith("layer")]  # doctest: +NORMALIZE_WHITESPACE
    ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var',
     'bn1.num_batches_tracked', 'seg_1.weight', 'seg_1.bias', 'projection.weight']
    """
    from svlab.models.campplus import CAMPPlus
    from svlab.models.ecapa_sb import SpeechBrainECAPA
    from svlab.models.eres2net import ERes2Net, ERes2NetV2
    from svlab.models.wespeaker import (
        PyannoteResNet,
        WespeakerCAMPPlus,
        WespeakerECAPA,
        WespeakerResNet,
    )

    rules = {WespeakerResNet: _WESPEAKER_RESNET, WespeakerECAPA: _WESPEAKER_ECAPA,
             SpeechBrainECAPA: _SPEECHBRAIN_ECAPA, PyannoteResNet: _WESPEAKER_RESNET,
             CAMPPlus: _SAME_KEYS, WespeakerCAMPPlus: _SAME_KEYS, ERes2Net: _SAME_KEYS,
             ERes2NetV2: _SAME_KEYS}.get(type(model))  # fmt: skip
    if rules is None:
        raise ValueError(f"{type(model).__name__} has no wespeaker, SpeechBrain, 3D-Speaker or "
                         "pyannote counterpart")
    no_head = (SpeechBrainECAPA, CAMPPlus, ERes2Net, ERes2NetV2, PyannoteResNet)
    if head is not None and type(model) in no_head:
        raise ValueError(f"{type(model).__name__}'s toolkit keeps its classifier in another file")
    state = {}
    for key, value in model.state_dict().items():
        new, conv1x1 = _rename(key, rules, reverse=True)
        state[new] = value.unsqueeze(-1) if conv1x1 and key.endswith("weight") else value
    if head is not None:
        state["projection.weight"] = head.weight.detach().clone()
    return state
