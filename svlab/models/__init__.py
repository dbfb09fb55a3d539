"""Speaker-embedding models by name: ``build("resnet34")``, ``available()``, ``register(name)``."""

from svlab.models.campplus import CAMPPlus
from svlab.models.dfresnet import DFResNet, InvertedBottleneck, dfresnet_stage
from svlab.models.ecapa import ECAPATDNN
from svlab.models.ecapa_sb import SpeechBrainECAPA
from svlab.models.eres2net import ERes2Net, ERes2NetV2
from svlab.models.pooling import ASTP, TSTP, make_pooling
from svlab.models.registry import arguments, available, build, count_parameters, register
from svlab.models.resnet import BasicBlock, FbankResNet, ResNet, bins_after, conv_bn, resnet_stage
from svlab.models.reversible import RevDFResNet, RevResNet  # registers rev_resnet18/34, ...
from svlab.models.wespeaker import (
    PyannoteResNet,
    WespeakerCAMPPlus,
    WespeakerECAPA,
    WespeakerResNet,
)

register("resnet18", depths=(2, 2, 2, 2))(ResNet)
register("resnet34", depths=(3, 4, 6, 3))(ResNet)
register("dfresnet56", depths=(3, 3, 9, 3))(DFResNet)
register("dfresnet110", depths=(3, 3, 27, 3))(DFResNet)
register("dfresnet233", depths=(3, 8, 63, 3))(DFResNet)
register("ecapa_c512", channels=512)(ECAPATDNN)
register("ecapa_c1024", channels=1024)(ECAPATDNN)
register("resnet18_wespeaker", depths=(2, 2, 2, 2))(WespeakerResNet)
register("resnet34_wespeaker", depths=(3, 4, 6, 3))(WespeakerResNet)
register("ecapa_c512_wespeaker", channels=512)(WespeakerECAPA)
register("ecapa_c1024_wespeaker", channels=1024)(WespeakerECAPA)
register("ecapa_c1024_speechbrain", channels=1024, mfa_channels=3072)(SpeechBrainECAPA)
register("campplus", embed_dim=192)(CAMPPlus)
register("campplus_wespeaker", embed_dim=512)(WespeakerCAMPPlus)
register("resnet34_pyannote", depths=(3, 4, 6, 3))(PyannoteResNet)
register("eres2net", m_channels=32, embed_dim=192)(ERes2Net)
register("eres2netv2", m_channels=64, embed_dim=192, base_width=26, scale=2, expansion=2)(
    ERes2NetV2
)

__all__ = [
    "ASTP",
    "TSTP",
    "BasicBlock",
    "CAMPPlus",
    "DFResNet",
    "ECAPATDNN",
    "ERes2Net",
    "ERes2NetV2",
    "FbankResNet",
    "InvertedBottleneck",
    "PyannoteResNet",
    "ResNet",
    "RevDFResNet",
    "RevResNet",
    "SpeechBrainECAPA",
    "WespeakerCAMPPlus",
    "WespeakerECAPA",
    "WespeakerResNet",
    "arguments",
    "available",
    "bins_after",
    "build",
    "conv_bn",
    "count_parameters",
    "load_pretrained",
    "dfresnet_stage",
    "make_pooling",
    "register",
    "resnet_stage",
]

from svlab.models.pretrained import load_pretrained  # noqa: E402
