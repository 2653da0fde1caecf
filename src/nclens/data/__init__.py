"""Embedded datasets, generators, real image datasets from local files and feature extraction
(no network at run time)."""

from nclens.data.embedded import Split, as_dataset, load_digits, load_mnist1d, stratified_split
from nclens.data.extract import TensorSource, extract_features, read_extracted
from nclens.data.gaussian import GaussianFeatures, expected_nc1, gaussian_features
from nclens.data.images import DatasetNotFoundError, ImageSet, class_balanced_indices, load_images, read_idx

__all__ = [
    "Split",
    "as_dataset",
    "load_digits",
    "load_mnist1d",
    "stratified_split",
    "GaussianFeatures",
    "expected_nc1",
    "gaussian_features",
    "DatasetNotFoundError",
    "ImageSet",
    "class_balanced_indices",
    "load_images",
    "read_idx",
    "TensorSource",
    "extract_features",
    "read_extracted",
]
