"""DenseNet / SE-DenseNet models: blocks, the network, presets and weight loading."""

from sedensenet.models.densenet import (
    DenseBlock,
    DenseLayer,
    DenseNet,
    DenseNetConfig,
    Transition,
    count_parameters,
    set_fast,
)
from sedensenet.models.registry import PRESETS, create_model, get_preset, list_models, model_config
from sedensenet.models.se import SqueezeExcite, make_divisible

__all__ = [
    "PRESETS",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "DenseNetConfig",
    "SqueezeExcite",
    "Transition",
    "count_parameters",
    "create_model",
    "get_preset",
    "list_models",
    "make_divisible",
    "model_config",
    "set_fast",
]
