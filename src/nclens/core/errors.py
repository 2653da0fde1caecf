"""The exceptions and warnings nclens raises by design, in one place.

* :class:`NotFittedError` — a fitted object (scikit-learn's contract: ``fit`` returns ``self``, fitted
  attributes end in ``_``) used before ``fit``. One class for every such object (probes, heads,
  preprocessors, OOD scorers).
* :class:`UndefinedMetricError` — a metric that has no value for these statistics (class means that
  coincide, a class with fewer samples than the metric needs, a scatter mode that lacks what the
  metric needs). :func:`nclens.core.metrics.compute_metrics` turns it into NaN plus one
  :class:`UndefinedMetricWarning` under ``on_undefined="nan"``, or lets it propagate under
  ``on_undefined="raise"``.

Both errors subclass :class:`ValueError`, so ``except ValueError`` keeps working.

Example:
    >>> from nclens.core.errors import UndefinedMetricError
    >>> issubclass(UndefinedMetricError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["NotFittedError", "UndefinedMetricError", "UndefinedMetricWarning", "check_fitted"]


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit`` (as scikit-learn's ``NotFittedError``)."""


class UndefinedMetricError(ValueError):
    """A metric has no value for the given statistics; the message says why.

    Attributes:
        metric: the metric's name, when known.
    """

    def __init__(self, message: str, metric: str | None = None) -> None:
        super().__init__(message)
        self.metric = metric


class UndefinedMetricWarning(UserWarning):
    """Issued once per call when undefined metrics were reported as NaN (``on_undefined="nan"``)."""


def check_fitted(obj: object, attribute: str, how: str = "fit(...)") -> None:
    """Raise :class:`NotFittedError` unless ``obj`` has the fitted ``attribute`` (not ``None``).

    Example:
        >>> class Probe:
        ...     weight_ = None
        >>> check_fitted(Probe(), "weight_")
        Traceback (most recent call last):
        ...
        nclens.core.errors.NotFittedError: this Probe is not fitted yet; call fit(...) first
    """
    if getattr(obj, attribute, None) is None:
        raise NotFittedError(f"this {type(obj).__name__} is not fitted yet; call {how} first")
