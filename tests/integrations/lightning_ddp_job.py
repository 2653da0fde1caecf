"""A small Lightning job with nclens's NeuralCollapseCallback (run as a script by test_lightning.py).

python lightning_ddp_job.py OUT_DIR DEVICES — trains an MLP (float64) for 2 epochs on CPU (DDP with
gloo when DEVICES > 1), logs nc/<layer>/<metric> through a CSVLogger, saves the final weights.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(240) % 4
    x = torch.randn(240, 6, generator=g, dtype=torch.float64) + 2 * torch.randn(4, 6, generator=g,
                                                                                dtype=torch.float64)[y]
    return TensorDataset(x, y)


try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
except ImportError:  # the standalone package, or neither (then only data() is usable)
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.loggers import CSVLogger
    except ImportError:
        pl = CSVLogger = None

if pl is not None:

    class Module(pl.LightningModule):
        """An MLP trained with SGD; rank 0 saves its final weights and the callback's records."""

        def __init__(self, out_dir: str = "") -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
            self.out_dir = out_dir

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_train_end(self) -> None:
            if self.global_rank == 0 and self.out_dir:
                torch.save(self.net.state_dict(), os.path.join(self.out_dir, "weights.pt"))
                history = [c.history for c in self.trainer.callbacks if hasattr(c, "history")][0]
                torch.save(history, os.path.join(self.out_dir, "history.pt"))  # full float64 precision


def main(out_dir: str, devices: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    from nclens.integrations.lightning import NeuralCollapseCallback

    callback = NeuralCollapseCallback(layers=["net.0", "net.2"], every_n_epochs=1, nc4=True)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        precision="64-true", logger=CSVLogger(out_dir, name="csv", version=0), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[callback],
    )
    trainer.fit(Module(out_dir), DataLoader(data(), batch_size=30, shuffle=True))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
