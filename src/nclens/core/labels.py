"""Label functions for :func:`nclens.measure` (``labels_fn=``): where the classes of a batch come from.

A label function is called as ``labels_fn(inputs, labels)`` with the batch's model inputs (a tensor or
a dict such as ``{"input_ids", "attention_mask"}``) and the labels the batch carried (``None`` when it
had none) and returns the class of every sample — (B,) — or of every token — (B, T), for layers
measured with ``tokens="all"``. Entries equal to ``ignore_index`` (−100, the Hugging Face convention)
are not counted.

:func:`next_token` is the class of causal language modelling (Wu & Papyan 2024, "Linguistic
Collapse"): the class of position t is the token at t + 1, so K is the number of distinct next tokens
and the classifier is the LM head (``lm_head.weight``, one row per vocabulary entry).

Example:
    >>> import torch
    >>> from nclens.core.labels import next_token
    >>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    >>> mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    >>> next_token()({"input_ids": ids, "attention_mask": mask}, None)
    tensor([[   6,    7, -100, -100],
            [   9, -100, -100, -100]])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["next_token", "from_key", "IGNORE_INDEX"]

#: Label value that is never counted (Hugging Face's ``ignore_index``).
IGNORE_INDEX = -100


def next_token(
    *,
    input_key: str = "input_ids",
    mask_key: str = "attention_mask",
    pad_token_id: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Callable[[Any, Any], Tensor]:
    """Labels for causal LMs: the class of position t is token t + 1 (B, T); padding is ignored.

    The last position of every sequence, and every position whose *next* token is padding (attention
    mask 0, or equal to ``pad_token_id`` when given), get ``ignore_index``. Use with ``tokens="all"``
    on the layer that feeds the LM head (``layers=[LayerSpec("lm_head", tokens="all")]``).

    Args:
        input_key: the key of the token ids when the inputs are a dict (a bare tensor is the ids).
        mask_key: the key of the attention mask (1 = real token), if present.
        pad_token_id: a token id that also marks padding (for batches without a mask).
        ignore_index: the label of positions that have no next token.
    """

    def labels_fn(inputs: Any, labels: Any = None) -> Tensor:
        if isinstance(inputs, Mapping):
            if input_key not in inputs:
                raise KeyError(f"next_token() needs the inputs to hold {input_key!r}; they hold {sorted(inputs)}")
            ids, mask = inputs[input_key], inputs.get(mask_key)
        elif isinstance(inputs, Tensor):
            ids, mask = inputs, None
        else:
            raise TypeError(f"next_token() needs token ids (a tensor or a dict with {input_key!r}), got "
                            f"{type(inputs).__name__}")
        ids = torch.as_tensor(ids)
        if ids.ndim != 2 or ids.is_floating_point():
            raise ValueError(f"next_token() needs (batch, tokens) integer ids, got {ids.dtype} of shape "
                             f"{tuple(ids.shape)}")
        out = torch.full_like(ids, ignore_index, dtype=torch.long)
        out[:, :-1] = ids[:, 1:]
        valid = torch.ones_like(ids, dtype=torch.bool)
        if mask is not None:
            mask = torch.as_tensor(mask, device=ids.device)
            if mask.shape != ids.shape:
                raise ValueError(f"attention mask shape {tuple(mask.shape)} differs from the ids' {tuple(ids.shape)}")
            valid &= mask != 0
        if pad_token_id is not None:
            valid &= ids != pad_token_id
        keep = torch.zeros_like(valid)
        keep[:, :-1] = valid[:, :-1] & valid[:, 1:]  # this token is real and so is the next one
        return torch.where(keep, out, torch.full_like(out, ignore_index))

    labels_fn.__name__ = "next_token"
    return labels_fn


def from_key(key: str) -> Callable[[Any, Any], Tensor]:
    """Labels read from ``inputs[key]`` (for dict batches whose labels live under another key)."""

    def labels_fn(inputs: Any, labels: Any = None) -> Tensor:
        if not isinstance(inputs, Mapping) or key not in inputs:
            have = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise KeyError(f"from_key({key!r}): the batch inputs have no {key!r} (they have {have})")
        return torch.as_tensor(inputs[key])

    labels_fn.__name__ = f"from_key({key!r})"
    return labels_fn
