"""Image folders in, checked and split samples and tensors out; the built-in demo sets.

The data package knows nothing of models or training: it turns a folder (or ``"builtin:NAME"``) into
:class:`DataSplits` and :class:`ImageFolderDataset` objects that the engine wraps in data loaders.
"""

from sedensenet.data.builtin import BUILTIN, default_cache_dir, is_builtin, resolve_data, write_builtin
from sedensenet.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    DataError,
    ImageFolderDataset,
    ImageRejected,
    Sample,
    check_image,
    decode_image,
    image_to_tensor,
    load_image,
    open_checked,
)
from sedensenet.data.scan import (
    IMG_EXTENSIONS,
    DataSplits,
    Skipped,
    find_classes,
    is_image_file,
    scan_folder,
    write_skipped_csv,
)
from sedensenet.data.transforms import (
    AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    compute_mean_std,
    image_channels,
    normalize_batch,
)

__all__ = [
    "AUGMENTS",
    "BUILTIN",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "DataError",
    "DataSplits",
    "ImageFolderDataset",
    "ImageRejected",
    "Sample",
    "Skipped",
    "build_transforms",
    "check_image",
    "compute_mean_std",
    "decode_image",
    "default_cache_dir",
    "find_classes",
    "image_channels",
    "image_to_tensor",
    "is_builtin",
    "is_image_file",
    "load_image",
    "normalize_batch",
    "open_checked",
    "resolve_data",
    "scan_folder",
    "write_builtin",
    "write_skipped_csv",
]
