"""One benchmark configuration in its own process, driven by ``bench.py`` over stdin/stdout (JSON lines).

Protocol: started with one JSON argument (the spec), the worker builds its model and batch, runs the
warm-up steps and prints ``{"ready": ...}``; then each ``step`` line runs one step and answers its seconds;
``done`` answers the peak memory and exits. Only the standard library is imported up front, so the Keras
peer can run under an interpreter that has TensorFlow and no PyTorch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

SE_UNITS = 16  # the tutorial's SE layer: Dense(16) and Dense(C)


def rss_mb() -> float:
    """Resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_densenet(spec: dict[str, Any]) -> Any:
    """The model a spec names, as a torch module (train mode)."""
    from torch import nn

    kind = spec["kind"]
    if kind.startswith("ours"):
        from sedensenet import create_model
        from sedensenet.models import DenseBlock
        from sedensenet.models.densenet import set_fast

        model = create_model(
            spec.get("model", "keras_se_densenet121"), num_classes=spec.get("num_classes", 2),
            memory_efficient=spec.get("memory_efficient", False),
        )  # fmt: skip
        set_fast(model, not spec.get("reference", False))
        for module in model.modules():
            if isinstance(module, DenseBlock) and "fast_block" in spec:
                module.fast = spec["fast_block"]
        return model
    if kind == "twin":
        me = spec.get("memory_efficient", False)
        return twin(spec["model"], num_classes=spec.get("num_classes", 2), memory_efficient=me)
    from sedensenet.models import SqueezeExcite

    if kind in ("torchvision", "torchvision_me"):
        import torchvision

        model = torchvision.models.densenet121(num_classes=2, memory_efficient=kind == "torchvision_me")
    elif kind == "timm":
        import timm

        model = timm.create_model("densenet121", num_classes=2)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    # The tutorial's SE (16 units) right before norm5, as in sedensenet's keras_se_densenet121.
    children = list(model.features.named_children())
    index = [name for name, _ in children].index("norm5")
    channels = model.features.norm5.num_features
    children.insert(index, ("se_head", SqueezeExcite(channels, rd_channels=SE_UNITS)))
    model.features = nn.Sequential(OrderedDict(children))
    return model


def twin(preset: str, *, num_classes: int, memory_efficient: bool) -> Any:
    """torchvision's DenseNet built to the topology of one of our presets (SE left out: the twin of a plain preset).

    For the CIFAR stem (one 3x3 convolution, stride 1) conv0 becomes that convolution and norm0, relu0 and pool0
    become identities, so the parameter count equals ours (769,162 for DenseNet-BC-100 with 10 classes; keeping
    norm0 would add its 48).
    """
    import torchvision
    from torch import nn

    from sedensenet.models import get_preset

    settings = get_preset(preset).settings
    model = torchvision.models.DenseNet(
        growth_rate=settings["growth_rate"], block_config=tuple(settings["block_config"]),
        num_init_features=settings["num_init_features"], bn_size=settings.get("bn_size", 4),
        num_classes=num_classes, memory_efficient=memory_efficient,
    )  # fmt: skip
    if settings.get("stem") == "cifar":
        features = model.features
        features.conv0 = nn.Conv2d(3, settings["num_init_features"], kernel_size=3, padding=1, bias=False)
        features.norm0, features.relu0, features.pool0 = nn.Identity(), nn.Identity(), nn.Identity()
    return model


def _torch_step(spec: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(step, sync, parameter count) for a PyTorch configuration."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec.get("tune_malloc"):
        from sedensenet.inference import tune_malloc

        tune_malloc()
    device = torch.device(spec["device"])
    model = _torch_densenet(spec).to(device)
    params = sum(p.numel() for p in model.parameters())
    fmt = torch.channels_last if spec.get("channels_last") else torch.contiguous_format
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    batch, size = spec["batch"], spec["size"]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if spec.get("amp") else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if spec["task"] == "train":
        run = torch.compile(model) if spec.get("compile") else model
        opt = torch.optim.Adam(model.parameters())

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            if amp is None:
                loss = F.cross_entropy(run(x), y)
            else:
                with amp:
                    loss = F.cross_entropy(run(x).float(), y)
            loss.backward()
            opt.step()

        return step, sync, params

    model.eval()
    backend = spec.get("backend", "plain")
    if backend == "plain":
        run = torch.compile(model) if spec.get("compile") else model
    else:
        from sedensenet.inference import describe, optimize_for_inference

        run = optimize_for_inference(model, example=x[:2], backend=backend)
        if describe(run) != backend:
            raise RuntimeError(f"backend {backend} fell back to {describe(run)}")

    def infer() -> None:
        with torch.inference_mode():
            if amp is None:
                run(x)
            else:
                with amp:
                    run(x)

    return infer, sync, params


def _keras_model(size: int) -> Any:
    """The tutorial's DenseNet-121 + SE(16) in Keras (keras.applications layout, BN epsilon 1.001e-5)."""
    import tensorflow as tf
    from tensorflow.keras import layers

    eps = 1.001e-5

    def conv_block(x: Any, name: str) -> Any:
        x1 = layers.BatchNormalization(axis=3, epsilon=eps, name=name + "_0_bn")(x)
        x1 = layers.Activation("relu")(x1)
        x1 = layers.Conv2D(128, 1, use_bias=False, name=name + "_1_conv")(x1)
        x1 = layers.BatchNormalization(axis=3, epsilon=eps, name=name + "_1_bn")(x1)
        x1 = layers.Activation("relu")(x1)
        x1 = layers.Conv2D(32, 3, padding="same", use_bias=False, name=name + "_2_conv")(x1)
        return layers.Concatenate(axis=3)([x, x1])

    def transition(x: Any, name: str) -> Any:
        x = layers.BatchNormalization(axis=3, epsilon=eps, name=name + "_bn")(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=name + "_conv")(x)
        return layers.AveragePooling2D(2, strides=2)(x)

    inputs = layers.Input(shape=(size, size, 3))
    x = layers.ZeroPadding2D(3)(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False)(x)
    x = layers.BatchNormalization(axis=3, epsilon=eps)(x)
    x = layers.Activation("relu")(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
    for b, blocks in enumerate((6, 12, 24, 16), start=2):
        for i in range(blocks):
            x = conv_block(x, f"conv{b}_block{i + 1}")
        if b != 5:
            x = transition(x, f"pool{b}")
    squeeze = layers.GlobalAveragePooling2D()(x)
    excite = layers.Dense(SE_UNITS, activation="relu")(squeeze)
    excite = layers.Dense(x.shape[-1], activation="sigmoid")(excite)
    x = layers.Multiply()([x, layers.Reshape((1, 1, x.shape[-1]))(excite)])
    x = layers.BatchNormalization(axis=3, epsilon=eps, name="bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def _keras_step(spec: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(step, sync, trainable parameter count) for the Keras peer: train_on_batch / predict_on_batch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = _keras_model(spec["size"])
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((spec["batch"], spec["size"], spec["size"], 3), dtype=np.float32)
    y = rng.integers(0, 2, spec["batch"])
    if spec["task"] == "train":
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return (lambda: model.train_on_batch(x, y)), (lambda: None), params
    return (lambda: model.predict_on_batch(x)), (lambda: None), params


def main() -> int:
    spec = json.loads(sys.argv[1])
    start = time.perf_counter()
    make = _keras_step if spec["kind"] == "keras" else _torch_step
    step, sync, params = make(spec)
    build_s = time.perf_counter() - start
    build_rss = rss_mb()
    start = time.perf_counter()
    for _ in range(spec["warmup"]):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    print(json.dumps({"ready": True, "build_s": build_s, "warmup_s": warmup_s, "params": params,
                      "build_rss_mb": build_rss}), flush=True)  # fmt: skip
    # "clock": "cpu" times a step by this process's CPU time: on a machine shared with other work a 1-thread step's
    # CPU time moves little while its wall time follows the load.
    clock = time.process_time if spec.get("clock") == "cpu" else time.perf_counter
    for line in sys.stdin:
        if line.strip() == "step":
            t = clock()
            step()
            sync()
            print(json.dumps({"t": clock() - t}), flush=True)
        else:
            break
    result = {"peak_rss_mb": peak_rss_mb()}
    if spec["device"] == "cuda" and spec["kind"] != "keras":
        import torch

        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
