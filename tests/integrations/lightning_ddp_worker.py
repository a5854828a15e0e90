"""A Lightning fit with TrainlabCallback, for test_lightning's DDP test: ``python lightning_ddp_worker.py MODE OUT``.

MODE ``ddp``: ``strategy="ddp"``, two CPU processes (gloo; Lightning starts the second by running
this script again), 16 samples per rank per update, readings on the first 32 samples of each
rank's shard. MODE ``single``: one process, 32 samples per update, readings on the first 64
samples. The training loader deals the samples without shuffling (a ``DistributedSampler(...,
shuffle=False)`` of our own, since Lightning's would shuffle), so update ``k`` of both sees the
same 32 samples, and both read the same 64: the readings must agree. Each rank writes its
Monitor's readings to ``OUT/<MODE><rank>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lightning.pytorch as L
from lightning.pytorch.loggers import CSVLogger

from trainlab.instruments import Monitor
from trainlab.instruments.gradients import GradNorm, UpdateRatio
from trainlab.instruments.noise import GSNR, NoiseScale
from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability
from trainlab.instruments.units import Units
from trainlab.integrations.lightning import TrainlabCallback

STEPS, BATCH, SAMPLE, N = 20, 32, 64, 256


def squared_error(out, target):
    return ((out - target) ** 2).mean()


class Regression(L.LightningModule):
    def __init__(self, data: TensorDataset):
        super().__init__()
        self.data = data
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_error(self(x), y)

    def train_dataloader(self):
        world = self.trainer.world_size
        sampler = DistributedSampler(self.data, world, self.global_rank, shuffle=False) if world > 1 else None
        return DataLoader(self.data, batch_size=BATCH // world, sampler=sampler)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(4, 1, generator=gen, dtype=torch.float64))
    world = 2 if mode == "ddp" else 1
    monitor = Monitor(every=5, sample=SAMPLE // world, seed=0, instruments=[
        GradNorm(), UpdateRatio(), Units(), Sharpness(every=10), Stability(every=10), NoiseScale(every=10),
        GSNR(every=10), HessianTrace(every=20)])
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                        precision="64-true", max_steps=STEPS, logger=CSVLogger(out / mode, name="logs"),
                        callbacks=[TrainlabCallback(monitor, loss_fn=squared_error)], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Regression(TensorDataset(x, y)))
    readings = [{"step": r.step, "instrument": r.instrument, "value": r.value,
                 "batch_size": r.extra.get("batch_size"), "error": r.extra.get("error")}
                for r in monitor.history]
    (out / f"{mode}{trainer.global_rank}.json").write_text(json.dumps(readings))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
