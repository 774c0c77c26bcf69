"""Build the tutorial's Keras SE-DenseNet at a tiny size, train it a few steps and save every file format.

The Keras model is the tutorial's code (``densenet_se_keras_tutorial.txt``), with its line breaks restored and
two parameters added, ``growth_rate`` and ``init_filters`` (the tutorial hard-codes 32 and 64), so the fixture
stays small. Layer names and the order in which layers are created are exactly the tutorial's: Keras 3 weight
files key variables by layer type and creation order, so the order is part of the file format.

Outputs (``tests/fixtures/keras/`` by default):

- ``tf2_model.h5``          tf.keras 2 (``tf_keras``) ``model.save('m.h5')``: full model, optimizer state included
- ``tf2_weights.h5``        tf.keras 2 ``model.save_weights('w.h5')``
- ``tf2_model.keras``       tf.keras 2 ``model.save('m.keras')`` (a zip holding ``model.weights.h5``)
- ``k3_model.weights.h5``   Keras 3 ``model.save_weights('m.weights.h5')``
- ``k3_model.keras``        Keras 3 ``model.save('m.keras')``: Keras 3 refuses the tutorial's model as written (its SE
                            layer has no ``get_config``), so this one adds the ``get_config`` Keras' error asks for
- ``k3_blocks1211.weights.h5``  Keras 3 weights of the same model with blocks [1, 2, 1, 1] (another architecture)
- ``expected.npz``          ``inputs`` (uint8 NHWC images) and ``probs_<file name>`` (Keras' softmax on them)
- ``manifest.json``         what was written, by which versions, what could not be written and why

Keras 3's refused saves of the tutorial's model as written (``model.save`` to ``.keras`` and ``.h5``) are tried and
recorded in ``manifest.json`` under ``refused``.

Needs TensorFlow, tf-keras and h5py, which sedensenet itself never imports; use a separate environment::

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras h5py
    /tmp/tfenv/bin/python tools/make_keras_fixtures.py

``--example examples/keras_se_densenet_faces.weights.h5`` writes the notebooks' Keras file instead: the same
model trained on builtin:faces. It needs only Keras 3 (any backend; PyTorch's works)::

    python3 -m venv --system-site-packages /tmp/kenv && /tmp/kenv/bin/pip install keras scikit-image
    KERAS_BACKEND=torch /tmp/kenv/bin/python tools/make_keras_fixtures.py --example \\
        examples/keras_se_densenet_faces.weights.h5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

BLOCKS = [2, 2, 2, 2]
OTHER_BLOCKS = [1, 2, 1, 1]
GROWTH_RATE = 8
INIT_FILTERS = 16
IMAGE_SIZE = 32
CLASSES = 2
SEED = 1234


def tutorial_densenet(
    K: ModuleType,
    blocks: list[int],
    input_shape: list[int] | None = None,
    classes: int = 1000,
    growth_rate: int = 32,
    init_filters: int = 64,
    keras3: bool = False,
    se_get_config: bool = False,
) -> Any:
    """The tutorial's ``DenseNet(blocks, input_shape, classes)`` written against the Keras module ``K``.

    ``K`` is ``tf_keras`` (tf.keras 2.x, the tutorial's era) or ``keras`` (Keras 3). For Keras 3 the two edits
    its users must make are applied: no ``/`` in layer names, and ``x.shape`` instead of ``backend.int_shape``.
    ``se_get_config`` adds the ``get_config`` that Keras 3 asks for before it saves a whole model (``.keras``);
    it changes no weight and no layer name.
    """
    layers = K.layers
    sep = "_" if keras3 else "/"

    class Squeeze_excitation_layer(K.Model):  # noqa: N801 - the tutorial's class name decides the layer name
        def __init__(self, filter_sq):
            super().__init__()
            self.filter_sq = filter_sq
            self.avepool = K.layers.GlobalAveragePooling2D()

        def build(self, input_shape):
            self.dense1 = K.layers.Dense(self.filter_sq, activation="relu")
            self.dense2 = K.layers.Dense(input_shape[-1], activation="sigmoid")

        def call(self, inputs):
            squeeze = self.avepool(inputs)
            excitation = self.dense1(squeeze)
            excitation = self.dense2(excitation)
            excitation = K.layers.Reshape((1, 1, inputs.shape[-1]))(excitation)
            scale = inputs * excitation
            return scale

    if se_get_config:

        class Squeeze_excitation_layer(Squeeze_excitation_layer):  # noqa: N801
            def get_config(self):
                return {"filter_sq": self.filter_sq}

    def dense_block(x, blocks, name):
        for i in range(blocks):
            x = conv_block(x, growth_rate, name=name + "_block" + str(i + 1))
        return x

    def conv_block(x, growth_rate, name):
        bn_axis = 3
        x1 = layers.BatchNormalization(axis=bn_axis, epsilon=1.001e-5, name=name + "_0_bn")(x)
        x1 = layers.Activation("relu", name=name + "_0_relu")(x1)
        x1 = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=name + "_1_conv")(x1)
        x1 = layers.BatchNormalization(axis=bn_axis, epsilon=1.001e-5, name=name + "_1_bn")(x1)
        x1 = layers.Activation("relu", name=name + "_1_relu")(x1)
        x1 = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=name + "_2_conv")(x1)
        x = layers.Concatenate(axis=bn_axis, name=name + "_concat")([x, x1])
        return x

    def transition_block(x, reduction, name):
        bn_axis = 3
        x = layers.BatchNormalization(axis=bn_axis, epsilon=1.001e-5, name=name + "_bn")(x)
        x = layers.Activation("relu", name=name + "_relu")(x)
        channels = x.shape[bn_axis] if keras3 else K.backend.int_shape(x)[bn_axis]
        x = layers.Conv2D(int(channels * reduction), 1, use_bias=False, name=name + "_conv")(x)
        x = layers.AveragePooling2D(2, strides=2, name=name + "_pool")(x)
        return x

    img_input = layers.Input(shape=input_shape)
    bn_axis = 3
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)))(img_input)
    x = layers.Conv2D(init_filters, 7, strides=2, use_bias=False, name=f"conv1{sep}conv")(x)
    x = layers.BatchNormalization(axis=bn_axis, epsilon=1.001e-5, name=f"conv1{sep}bn")(x)
    x = layers.Activation("relu", name=f"conv1{sep}relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)))(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = dense_block(x, blocks[0], name="conv2")
    x = transition_block(x, 0.5, name="pool2")
    x = dense_block(x, blocks[1], name="conv3")
    x = transition_block(x, 0.5, name="pool3")
    x = dense_block(x, blocks[2], name="conv4")
    x = transition_block(x, 0.5, name="pool4")
    x = dense_block(x, blocks[3], name="conv5")
    x = Squeeze_excitation_layer(16)(x)
    x = layers.BatchNormalization(axis=bn_axis, epsilon=1.001e-5, name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(classes, activation="softmax", name="fc1000")(x)
    names = {(6, 12, 24, 16): "densenet121", (6, 12, 32, 32): "densenet169", (6, 12, 48, 32): "densenet201"}
    return K.Model(img_input, x, name=names.get(tuple(blocks), "densenet"))


def fixed_inputs(n: int = 4) -> np.ndarray:
    """Seeded uint8 images (N, H, W, 3): smooth gradients plus noise, so the classes get different scores."""
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / (IMAGE_SIZE - 1)
    images = []
    for i in range(n):
        base = 255 * np.stack([xx, yy, (xx + yy) / 2], -1)
        base = base if i % 2 == 0 else 255 - base
        noise = rng.normal(0, 40 + 20 * i, base.shape)
        images.append(np.clip(base + noise, 0, 255))
    return np.stack(images).astype(np.uint8)


def train(model: Any, steps: int = 80) -> None:
    """The tutorial's compile and a few Adam steps on seeded random images, so BN statistics move off 0/1."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(SEED + 1)
    x = rng.integers(0, 256, (8 * steps, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, (8 * steps,))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def try_save(label: str, path: Path, fn: Any, manifest: dict[str, Any]) -> bool:
    """Run one save call to ``path``; record the exception (type and message) in the manifest when Keras refuses."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - record whatever Keras raises
        Path(path).unlink(missing_ok=True)  # Keras may leave a partial file behind
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        manifest["refused"][label] = f"{type(e).__name__}: {message[:200]}"
        print(f"  {label}: Keras refused: {manifest['refused'][label]}", file=sys.stderr)
        if os.environ.get("FIXTURE_DEBUG"):
            traceback.print_exc()
        return False
    manifest["written"].append(label)
    print(f"  {label}: written")
    return True


def make_tf2(out: Path, inputs: np.ndarray, probs: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """tf.keras 2.x (tf_keras): full-model .h5, save_weights .h5 and a .keras archive, all from one trained model."""
    import tf_keras as K

    K.utils.set_random_seed(SEED)
    model = tutorial_densenet(K, BLOCKS, [IMAGE_SIZE, IMAGE_SIZE, 3], CLASSES, GROWTH_RATE, INIT_FILTERS)
    train(model)
    p = model.predict(inputs.astype("float32"), verbose=0)
    manifest["versions"]["tf_keras"] = K.__version__
    for name, save in (
        ("tf2_model.h5", model.save),
        ("tf2_weights.h5", model.save_weights),
        ("tf2_model.keras", model.save),
    ):
        if try_save(name, out / name, lambda save=save, name=name: save(out / name), manifest):
            probs[name] = p


def make_keras3(out: Path, inputs: np.ndarray, probs: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Keras 3: the tutorial model's weights file, its refused whole-model saves, and the get_config variant's."""
    import keras as K

    manifest["versions"]["keras"] = K.__version__
    shape = [IMAGE_SIZE, IMAGE_SIZE, 3]
    K.utils.set_random_seed(SEED + 2)
    model = tutorial_densenet(K, BLOCKS, shape, CLASSES, GROWTH_RATE, INIT_FILTERS, keras3=True)
    train(model)
    p = model.predict(inputs.astype("float32"), verbose=0)
    for name, save in (
        ("k3_model.weights.h5", model.save_weights),
        ("k3_refused.keras", model.save),  # expected to be refused: the SE layer has no get_config
        ("k3_refused.h5", model.save),
    ):
        if try_save(name, out / name, lambda save=save, name=name: save(out / name), manifest):
            probs[name] = p

    # The same architecture with the get_config Keras 3 asks for: now model.save('m.keras') works.
    K.utils.set_random_seed(SEED + 3)
    model = tutorial_densenet(K, BLOCKS, shape, CLASSES, GROWTH_RATE, INIT_FILTERS, keras3=True, se_get_config=True)
    train(model)
    name = "k3_model.keras"
    if try_save(name, out / name, lambda: model.save(out / name), manifest):
        probs[name] = model.predict(inputs.astype("float32"), verbose=0)

    # Another architecture (blocks [1, 2, 1, 1]) for the shape-disagreement errors.
    K.utils.set_random_seed(SEED + 4)
    other = tutorial_densenet(K, OTHER_BLOCKS, shape, CLASSES, GROWTH_RATE, INIT_FILTERS, keras3=True)
    train(other)
    name = "k3_blocks1211.weights.h5"
    if try_save(name, out / name, lambda: other.save_weights(out / name), manifest):
        probs[name] = other.predict(inputs.astype("float32"), verbose=0)


def faces_rgb() -> tuple[np.ndarray, np.ndarray]:
    """builtin:faces as the tutorial's pipeline sees it: RGB uint8, IMAGE_SIZE (bilinear), face=0, non_face=1."""
    from PIL import Image
    from skimage.data import lfw_subset

    gray = np.rint(np.asarray(lfw_subset()) * 255).clip(0, 255).astype(np.uint8)  # (200, 25, 25): 100 faces first
    resized = [np.asarray(Image.fromarray(g).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for g in gray]
    images = np.repeat(np.stack(resized)[..., None], 3, axis=-1)
    return images, np.repeat([0, 1], 100)


def make_example(path: Path, epochs: int = 20) -> None:
    """``examples/``' Keras file: the tutorial's model (Keras 3, ``save_weights``) trained on builtin:faces.

    Keras 3 runs on any backend, so this needs only ``pip install keras`` beside PyTorch
    (``KERAS_BACKEND=torch``). The notebooks convert it and predict faces with it; it is not a test fixture.
    """
    import keras as K

    K.utils.set_random_seed(SEED + 10)
    model = tutorial_densenet(K, BLOCKS, [IMAGE_SIZE, IMAGE_SIZE, 3], CLASSES, GROWTH_RATE, INIT_FILTERS, keras3=True)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = faces_rgb()
    history = model.fit(x.astype("float32"), y, batch_size=32, epochs=epochs, shuffle=True, verbose=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    print(f"{path}: Keras {K.__version__} ({K.backend.backend()}), accuracy {history.history['accuracy'][-1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/keras")
    parser.add_argument("--example", type=Path, help="write only the notebooks' example file here (Keras 3 alone)")
    args = parser.parse_args(argv)
    if args.example:
        make_example(args.example)
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    manifest: dict[str, Any] = {
        "versions": {"tensorflow": tf.__version__},
        "config": {
            "blocks": BLOCKS,
            "other_blocks": OTHER_BLOCKS,
            "growth_rate": GROWTH_RATE,
            "init_filters": INIT_FILTERS,
            "image_size": IMAGE_SIZE,
            "classes": CLASSES,
            "se_units": 16,
        },
        "written": [],
        "refused": {},
    }
    inputs = fixed_inputs()
    probs: dict[str, np.ndarray] = {}
    make_tf2(out, inputs, probs, manifest)
    make_keras3(out, inputs, probs, manifest)
    arrays = {"inputs": inputs, **{"probs_" + k: v.astype("float32") for k, v in probs.items()}}
    np.savez(out / "expected.npz", **arrays)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, p in probs.items():
        print(f"{name}: probabilities\n{np.round(p, 4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
