"""Quadratic covariance bounds as Gram matrices of projected scores (:mod:`nclens.bounds.quadratic`)."""

from nclens.bounds.quadratic import *  # noqa: F403
from nclens.bounds.quadratic import __all__  # noqa: F401
