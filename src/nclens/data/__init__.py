"""Embedded datasets, generators and feature files (no network at run time)."""

from nclens.data.embedded import Split, as_dataset, load_digits, load_mnist1d, stratified_split
from nclens.data.gaussian import GaussianFeatures, expected_nc1, gaussian_features

__all__ = [
    "Split",
    "as_dataset",
    "load_digits",
    "load_mnist1d",
    "stratified_split",
    "GaussianFeatures",
    "expected_nc1",
    "gaussian_features",
]
