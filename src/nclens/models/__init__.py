"""Models with clean layer names for per-layer neural-collapse measurements: MLP, plain CNN, ResNet.

Example:
    >>> from nclens.models import MLP
    >>> MLP(64, 10, depth=2, width=16).linear_names()
    ['fc1', 'fc2', 'classifier']
"""

from nclens.models.cnn import CNN
from nclens.models.mlp import ACTIVATIONS, MLP, etf_like_matrix, linear_layer_names
from nclens.models.resnet import BasicBlock, ResNet, build_resnet, resnet18, resnet34

__all__ = [
    "ACTIVATIONS",
    "BasicBlock",
    "CNN",
    "MLP",
    "ResNet",
    "build_resnet",
    "etf_like_matrix",
    "linear_layer_names",
    "resnet18",
    "resnet34",
]
