"""Write examples/tutorial.ipynb and examples/tutorial.zh-CN.ipynb from one list of cells, without outputs.

Both notebooks share every code cell; only the prose differs (English, and Chinese for the seed tutorial's own
readers). Edit the cells here and run ``python tools/make_notebooks.py``; tests/test_notebooks.py executes both
and checks that their code cells are equal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Each cell: ("md", English, Chinese) or ("code", source).
CELLS: list[tuple[str, ...]] = [
    (
        "md",
        """# SE-DenseNet, the tutorial in a notebook

This notebook follows the Keras tutorial this project grew from, step by step: build DenseNet-201 with a
Squeeze-and-Excitation (SE) layer, look at its summary, load a folder of images with a seeded 80/20 split,
fit it with Adam, plot the accuracy and loss curves, and predict an image. Then what the tutorial did not have:
a confusion matrix, Grad-CAM heat-maps, and converting the tutorial's Keras weights.

It runs offline on a CPU in a few minutes, on the built-in faces data (scikit-image's LFW subset: 100 faces,
100 non-faces). Install with `pip install "sedensenet[notebook]"` for the live progress bar.""",
        """# SE-DenseNet：笔记本版教程

本笔记本逐步重现本项目起源的那篇 Keras 教程：搭建带 Squeeze-and-Excitation（SE，通道注意力）层的
DenseNet-201，查看模型摘要，按固定随机种子把图片文件夹划分为 80/20 的训练集与验证集，用 Adam 训练，
画出准确率和损失曲线，再预测一张图片。之后是原教程没有的内容：混淆矩阵、Grad-CAM 热力图，以及把教程的
Keras 权重转换过来。

全程离线、在 CPU 上几分钟即可跑完，使用内置的人脸数据（scikit-image 的 LFW 子集：100 张人脸，100 张非人脸）。
安装 `pip install "sedensenet[notebook]"` 即可看到实时进度条。""",
    ),
    ("code", "import sedensenet\n\nsedensenet.__version__"),
    (
        "md",
        """## 1. Build the model and look at its summary

The tutorial calls `DenseNet201(input_shape=[224, 224, 3], classes=2)` and `model.summary()`. The preset
`keras_se_densenet201` is exactly that network: one SE layer of 16 units after the last dense block, BatchNorm
epsilon 1.001e-5. The summary lists it by stage, with parameters and multiply-accumulates at 224x224.""",
        """## 1. 搭建模型，查看摘要

教程调用 `DenseNet201(input_shape=[224, 224, 3], classes=2)` 和 `model.summary()`。预设
`keras_se_densenet201` 就是同一个网络：最后一个稠密块之后接一个 16 个单元的 SE 层，BatchNorm 的
epsilon 为 1.001e-5。摘要按阶段列出各部分的输出形状、参数量，以及 224x224 输入下的乘加次数。""",
    ),
    (
        "code",
        'model = sedensenet.create_model("keras_se_densenet201", num_classes=2)\n'
        "sedensenet.summary(model, input_size=224)",
    ),
    (
        "md",
        """## 2. Load a folder of images, split 80/20 with a seed

Like Keras' `image_dataset_from_directory`, the data is a folder with one sub-folder per class; classes are
the sorted folder names. `builtin:faces` is written out as such a folder once; use your own folder the same way.
Every file is checked first, and the split is stratified and seeded, so it is the same every time.""",
        """## 2. 加载图片文件夹，按随机种子划分 80/20

与 Keras 的 `image_dataset_from_directory` 一样，数据是一个文件夹，每个类别一个子文件夹，类别名按文件夹名
排序。`builtin:faces` 会先被写成这样一个文件夹；换成你自己的文件夹，用法完全相同。每个文件都会先被检查，
划分按类别分层并固定随机种子，所以每次都一样。""",
    ),
    (
        "code",
        "from sedensenet.data import resolve_data, scan_folder\n\n"
        'folder = resolve_data("builtin:faces")\n'
        "splits = scan_folder(folder, val_split=0.2, seed=123)\n"
        "splits.classes, splits.counts()",
    ),
    (
        "md",
        """## 3. Fit with Adam

`sedensenet.train` is the tutorial's `compile` + `fit`: Adam at learning rate 1e-3, sparse categorical
cross-entropy, accuracy on the validation split after every epoch. As with Keras' `fit`, `verbose=1` (the
default) shows a live progress bar and one line per epoch.

DenseNet-201 at 224 pixels needs a GPU to train in minutes; so that this notebook runs on a CPU, it trains a tiny
SE-DenseNet on 32x32 grayscale images. On a GPU, pass `model="keras_se_densenet201", image_size=224,
in_chans=3` for the tutorial's exact setting. Everything lands in a run folder (`runs/tutorial`): weights,
`history.csv`, the curves, the reports.""",
        """## 3. 用 Adam 训练

`sedensenet.train` 相当于教程里的 `compile` + `fit`：学习率 1e-3 的 Adam，稀疏分类交叉熵，每个 epoch 结束后
在验证集上计算准确率。和 Keras 的 `fit` 一样，`verbose=1`（默认）会显示实时进度条，并每个 epoch 输出一行。

224 像素的 DenseNet-201 要用 GPU 才能在几分钟内训练完；为了让本笔记本能在 CPU 上运行，这里在 32x32 的灰度图上
训练一个很小的 SE-DenseNet。在 GPU 上传入 `model="keras_se_densenet201", image_size=224, in_chans=3`
即为教程的原始设置。所有结果都保存在运行文件夹（`runs/tutorial`）中：权重、`history.csv`、曲线图和评估报告。""",
    ),
    (
        "code",
        """result = sedensenet.train(
    data=str(folder),
    model="se_densenet_tiny",
    image_size=32,
    in_chans=1,
    val_split=0.2,
    seed=123,
    optimizer="adam",
    lr=1e-3,
    batch_size=32,
    epochs=10,
    name="tutorial",
)""",
    ),
    (
        "md",
        """`verbose=0` trains silently, `verbose=2` writes only the per-epoch lines (for log files). Here, three more
epochs in silence: `resume` continues the same run folder from its last epoch.""",
        """`verbose=0` 静默训练，`verbose=2` 只输出每个 epoch 的那一行（适合写日志）。下面静默地再训练 3 个 epoch：
`resume` 从上次的最后一个 epoch 接着训练同一个运行文件夹。""",
    ),
    ("code", "result = sedensenet.train(resume=result.run_dir, epochs=13, verbose=0)"),
    (
        "md",
        """## 4. Plot the curves

The tutorial reads `history.history['accuracy' | 'val_accuracy' | 'loss' | 'val_loss']` and draws a 12x4 figure
of two panels. `result.history.history` holds the same lists; `result.plot()` draws the same figure (the dashed
line marks the best epoch, whose weights are kept) and `result.summary()` lists the epochs.""",
        """## 4. 画出曲线

教程读取 `history.history['accuracy' | 'val_accuracy' | 'loss' | 'val_loss']`，画一张 12x4 英寸、左右两幅子图的
图。`result.history.history` 里是同样的列表；`result.plot()` 画出同样的图（虚线标出最佳 epoch，保存的就是它的
权重），`result.summary()` 按 epoch 列出数值。""",
    ),
    ("code", "result.summary()"),
    ("code", "result.plot()"),
    (
        "md",
        """## 5. Predict an image

A run folder (or its `weights/best.safetensors`) is enough to predict: the checkpoint carries the class names
and the preprocessing. Here, the first and the last image of the validation split.""",
        """## 5. 预测图片

有运行文件夹（或其中的 `weights/best.safetensors`）就能预测：检查点里保存了类别名和预处理方式。
这里预测验证集中的第一张和最后一张图片。""",
    ),
    (
        "code",
        "images = [splits.val[0].path, splits.val[-1].path]\nsedensenet.predict(result.run_dir, images, top_k=2)",
    ),
    (
        "md",
        """`load_model` gives the network itself (a PyTorch module in eval mode), with its classes and checkpoint
details; `print(trained)` would list every layer.""",
        """`load_model` 返回网络本身（处于 eval 模式的 PyTorch 模块），并带有类别和检查点信息；
`print(trained)` 会列出每一层。""",
    ),
    ("code", "trained = sedensenet.load_model(result.run_dir)\ntrained"),
    (
        "md",
        """## 6. Beyond the tutorial: confusion matrix

`evaluate` scores a checkpoint on a labelled folder (here the same validation split the run held out) and writes
the reports: metrics, per-class table, confusion matrices, the most confidently wrong images.""",
        """## 6. 教程之外：混淆矩阵

`evaluate` 在带标签的文件夹上评估检查点（这里用的是训练时留出的同一个验证集），并写出报告：各项指标、
按类别的表格、混淆矩阵，以及模型最自信却判错的图片。""",
    ),
    (
        "code",
        'report = sedensenet.evaluate(result.run_dir, folder, split="val", output=result.run_dir / "eval_val")\nreport',
    ),
    (
        "code",
        "from IPython.display import Image\n\n"
        'Image(filename=str(result.run_dir / "eval_val" / "confusion_matrix.png"))',
    ),
    (
        "md",
        """## 7. Grad-CAM: where the model looks

Grad-CAM weights the last dense block's channels by the gradient of the predicted class: red regions pushed
the prediction most.""",
        """## 7. Grad-CAM：模型在看哪里

Grad-CAM 用预测类别的梯度给最后一个稠密块的各通道加权：红色区域对预测的贡献最大。""",
    ),
    (
        "code",
        "from sedensenet.explain import explain_images\n\n"
        'cams = explain_images(result.run_dir, images, result.run_dir / "explain")\n'
        "Image(filename=str(cams.grid))",
    ),
    (
        "md",
        """## 8. Convert the tutorial's Keras weights

If you trained the tutorial's Keras model, its weights file converts without TensorFlow. The file beside this
notebook is the tutorial's model at a small size (growth rate 8, blocks [2, 2, 2, 2]), saved by Keras 3 with
`model.save_weights` after training on all 200 faces images (`tools/make_keras_fixtures.py --example`), so the
scores below are on images it has seen. Keras does not store class names: give them in label order (the sorted
folder names). The converted model takes the raw 0..255 pixels the Keras model was trained on.""",
        """## 8. 转换教程的 Keras 权重

如果你训练过教程里的 Keras 模型，它的权重文件无需 TensorFlow 就能转换。本笔记本旁边的文件是缩小版的教程模型
（growth rate 8，blocks [2, 2, 2, 2]），用全部 200 张人脸数据训练后由 Keras 3 的 `model.save_weights` 保存
（`tools/make_keras_fixtures.py --example`），所以下面的预测用的是它见过的图片。Keras 不保存类别名：请按标签顺序
（即排序后的文件夹名）给出。转换后的模型与 Keras 模型一样，直接接收 0..255 的原始像素值。""",
    ),
    (
        "code",
        """from sedensenet.keras_convert import convert_keras_file

converted = convert_keras_file(
    "keras_se_densenet_faces.weights.h5",
    "keras_faces.safetensors",
    model="keras_se_densenet121",
    classes=["face", "non_face"],
    image_size=32,
)
keras_model = sedensenet.load_model(converted)
keras_model""",
    ),
    ("code", "sedensenet.predict(keras_model, images, top_k=2)"),
]


def notebook(language: str) -> nbformat.NotebookNode:
    """The notebook in ``language`` (``en`` or ``zh-CN``): the shared code cells and that language's prose."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, *text in CELLS:
        if kind == "code":
            nb.cells.append(nbformat.v4.new_code_cell(text[0]))
        else:
            nb.cells.append(nbformat.v4.new_markdown_cell(text[0] if language == "en" else text[1]))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating changes nothing unless a cell changes
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES)
    args = parser.parse_args(argv)
    for language, name in (("en", "tutorial.ipynb"), ("zh-CN", "tutorial.zh-CN.ipynb")):
        path = args.out / name
        nbformat.write(notebook(language), path)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
