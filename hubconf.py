"""torch.hub entry points: ``torch.hub.load("OWNER/sedensenet", "se_densenet121", num_classes=2)``.

Every preset of ``sedensenet.list_models()`` is an entry point taking ``create_model``'s keyword arguments.
"""

import os
import sys

dependencies = ["torch", "torchvision", "safetensors"]

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from sedensenet.models.registry import PRESETS, create_model  # noqa: E402


def _entry(name):
    def build(**kwargs):
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{PRESETS[name].description}. Keyword arguments: see sedensenet.create_model."
    return build


for _name in PRESETS:
    globals()[_name] = _entry(_name)
