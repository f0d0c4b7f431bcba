"""Image data for training and pruning: CIFAR-10/100 python versions and image-folder trees,
decoded to uint8 tensors (cached), with validation splits and batched augmentation.

The package is split by job: `load` picks a loader, `cifar` reads the python archives,
`folders` lists and decodes image trees (`decode`, `cache`, `memory`), `split` holds out
validation images and `augmentation` augments batches.
"""

from .augmentation import augment, augment_pad, to_float
from .cache import CACHE_MAGIC
from .cifar import (
    ARCHIVE,
    BATCH_DIR,
    BATCH_FILES,
    CLASSES,
    MD5,
    SIZE,
    TRAIN_BATCHES,
    URL,
    default_data_root,
)
from .dataset import CIFAR10, ImageData
from .folders import IMAGE_SUFFIXES
from .load import LAYOUTS, load_cifar10, load_images
from .split import split_validation, subset, validation_split

PAD = augment_pad(SIZE)

__all__ = [
    "ARCHIVE",
    "BATCH_DIR",
    "BATCH_FILES",
    "CACHE_MAGIC",
    "CIFAR10",
    "CLASSES",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MD5",
    "PAD",
    "SIZE",
    "TRAIN_BATCHES",
    "URL",
    "ImageData",
    "augment",
    "augment_pad",
    "default_data_root",
    "load_cifar10",
    "load_images",
    "split_validation",
    "subset",
    "to_float",
    "validation_split",
]
