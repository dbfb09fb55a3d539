"""Training speaker-embedding models with AAM-softmax: config, heads, loop, resume, DDP, CLI.

``config`` (``TrainConfig``, TOML and ``--set``), ``schedule`` (learning rate), ``heads``
(the AAM head, imprinting, a saved model's head), ``crops`` (the crops a config asks for,
augmented or not), ``distributed`` (torchrun, global BatchNorm), ``state`` (resumable
checkpoints), ``loop`` (``train()``), ``cli`` (``svlab train``, quantization hooks). The crops
come from :class:`svlab.data.SpeakerCrops`.
"""

from svlab.data import SpeakerCrops
from svlab.train.cli import main, quantization_hooks, register_cli, train_recipe
from svlab.train.config import ConfigError, TrainConfig
from svlab.train.distributed import GlobalBatchNorm
from svlab.train.heads import SpeakerClassifier, imprint_head
from svlab.train.loop import TrainingError, TrainResult, train
from svlab.train.schedule import learning_rate

__all__ = [
    "ConfigError",
    "GlobalBatchNorm",
    "SpeakerClassifier",
    "SpeakerCrops",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "imprint_head",
    "learning_rate",
    "main",
    "quantization_hooks",
    "register_cli",
    "train",
    "train_recipe",
]
