"""Real datasets, read offline (stage 0 of the pipeline)."""

from rgm_ray.data.datasets import (
    DATASET_NAMES,
    DATASET_SHAPES,
    DatasetNotFoundError,
    ImageDataset,
    load_dataset,
)
from rgm_ray.data.idx import IDXFormatError, read_idx

__all__ = ["DATASET_NAMES", "DATASET_SHAPES", "DatasetNotFoundError", "IDXFormatError", "ImageDataset",
           "load_dataset", "read_idx"]
