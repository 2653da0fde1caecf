"""``NeuralCollapseCallback`` for the Hugging Face ``transformers.Trainer`` (extra ``hf``).

At the end of every ``every_n_epochs``-th epoch every process measures its exact shard of the
training or evaluation dataset (rebuilt from the trainer's dataset, data collator and batch size
with :func:`nclens.core.distributed.shard_loader`), the statistics are all-reduced, and the metrics
``nc/<layer>/<metric>`` go through ``trainer.log`` — into ``trainer.state.log_history`` and every
``report_to`` integration (TensorBoard, W&B, ...). Attach it with :meth:`NeuralCollapseCallback.attach`
so that it can reach the trainer (a ``TrainerCallback`` is not given one); unattached, it measures the
dataloader the callback event passes and appends to ``state.log_history`` only.

Example::

    from nclens.integrations.hf import NeuralCollapseCallback
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=test)
    NeuralCollapseCallback(layers=["classifier"], dataloader="eval").attach(trainer)
    trainer.train()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nclens.integrations import require

transformers = require("transformers", "hf")

__all__ = ["NeuralCollapseCallback"]


class NeuralCollapseCallback(transformers.TrainerCallback):
    """Measure neural collapse of ``layers`` every ``every_n_epochs`` epochs of a ``transformers.Trainer``.

    Args:
        layers: as :func:`nclens.measure` (e.g. ``["classifier"]`` or ``"bert.encoder.layer.*"`` with ``tokens``).
        every_n_epochs: measure after epochs n, 2n, ...
        dataloader: ``"train"``, ``"eval"`` or a callable ``(trainer) -> loader``.
        prefix: logged names are ``f"{prefix}/{layer}/{metric}"``.
        measure_kwargs: passed to :func:`nclens.measure` (``tokens``, ``num_classes``, ``labels_fn``, ...).

    Attributes:
        history: long records ``{epoch, split, layer, metric, value}``; reports: ``{epoch: CollapseReport}``.
    """

    def __init__(
        self,
        layers: Any = None,
        *,
        every_n_epochs: int = 1,
        dataloader: str | Callable[[Any], Any] = "eval",
        prefix: str = "nc",
        **measure_kwargs: Any,
    ) -> None:
        from nclens.integrations._common import check_options

        check_options(every_n_epochs, dataloader, ("train", "eval"), "(trainer)", measure_kwargs)
        self.layers, self.every_n_epochs, self.dataloader, self.prefix = layers, every_n_epochs, dataloader, prefix
        self.measure_kwargs = measure_kwargs
        self.trainer: Any = None
        self.history: list[dict[str, Any]] = []
        self.reports: dict[int, Any] = {}

    def attach(self, trainer: Any) -> NeuralCollapseCallback:
        """Add this callback to ``trainer`` and let it log through ``trainer.log``; returns ``self``."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def _loader(self, kwargs: dict[str, Any]) -> Any:
        from torch.utils.data import DataLoader

        from nclens.core.distributed import rank, world_size
        from nclens.integrations._common import exact_loader

        if callable(self.dataloader):
            if self.trainer is None:
                raise ValueError("a callable dataloader needs the trainer: use "
                                 "NeuralCollapseCallback(...).attach(trainer)")
            return self.dataloader(self.trainer)
        if self.trainer is not None:
            t = self.trainer
            dataset = t.train_dataset if self.dataloader == "train" else t.eval_dataset
            if dataset is None:
                raise ValueError(f"NeuralCollapseCallback: the trainer has no {self.dataloader}_dataset")
            size = (t.args.per_device_train_batch_size if self.dataloader == "train"
                    else t.args.per_device_eval_batch_size)
            columns = getattr(t, "_remove_unused_columns", None)
            if callable(columns) and hasattr(dataset, "column_names"):
                dataset = columns(dataset, description="nclens")
            return exact_loader(DataLoader(dataset, batch_size=size, collate_fn=t.data_collator), rank(), world_size())
        loader = kwargs.get(f"{self.dataloader}_dataloader")
        if loader is None:
            raise ValueError(f"no {self.dataloader} dataloader in this callback event; attach the callback to the "
                             f"trainer (NeuralCollapseCallback(...).attach(trainer))")
        return loader

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:  # noqa: D102
        from nclens.core.measure import measure
        from nclens.integrations._common import flat_metrics

        epoch = int(round(state.epoch or 0))
        if epoch < 1 or epoch % self.every_n_epochs:
            return control
        device = next(model.parameters()).device
        report = measure(model, self._loader(kwargs), self.layers, device=device, progress=False,
                         distributed="auto", **self.measure_kwargs)
        split = self.dataloader if isinstance(self.dataloader, str) else "custom"
        self.reports[epoch] = report
        self.history += report.to_records(epoch=epoch, split=split)
        values = flat_metrics(report, self.prefix)
        if self.trainer is not None:
            self.trainer.log(values)
        else:
            state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})
        return control
