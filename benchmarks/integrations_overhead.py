"""What the integrations cost with the instruments off: a framework's training run with
trainlab's callback holding only the stall doctor ÷ the same run without it, side by side.

- PyTorch Lightning: an MLP 64-32-32-10 on the digits, batches of 32, SGD η = 0.05, ``--updates``
  updates, ``lightning.Trainer`` with no logger, progress bar, checkpointing or model summary (the
  framework's own bookkeeping only), against the same with
  ``trainlab.integrations.lightning.TrainlabCallback(None, StallDoctor(), loss_fn=...)``.
- Hugging Face: a 2-layer GPT-2 of width 64 and vocabulary 128 built from its config, random
  token sequences the model can learn (sequences of 32, batches of 8), ``transformers.Trainer`` with ``report_to=[]`` and no
  saving, against the same with ``trainlab.integrations.hf.TrainlabCallback(doctor=StallDoctor())``.

Runs alternate (bare, callback, bare, …) ``--repeats`` times in this one process; each repeat's
ratio is against the bare run beside it, and the table shows the median and the range. One
thread. Target (issue 14): ≤ 1.05. The doctor's events during the timed runs are counted: a
healthy run should have none (an event would be treatment, not overhead).

    python benchmarks/integrations_overhead.py [--updates 1000] [--repeats 9] [--only lightning|hf]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import trainlab as tl
from trainlab.train import StallDoctor

BATCH, LR = 32, 0.05


def lightning_case(updates: int) -> tuple[Callable[[], float], Callable[[], tuple[float, int]]]:
    import lightning as L

    from trainlab.integrations.lightning import TrainlabCallback

    train, _ = tl.data.load_digits(seed=0)

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tl.nn.mlp(64, [32, 32], 10, seed=0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    def fit(callbacks: list[Any]) -> float:
        torch.manual_seed(0)
        loader = DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
        trainer = L.Trainer(max_steps=updates, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks)
        start = time.perf_counter()
        trainer.fit(Classifier(), loader)
        return time.perf_counter() - start

    def watched() -> tuple[float, int]:
        doctor = StallDoctor()
        return fit([TrainlabCallback(None, doctor, loss_fn=F.cross_entropy)]), len(doctor.events)

    return (lambda: fit([])), watched


def hf_case(updates: int) -> tuple[Callable[[], float], Callable[[], tuple[float, int]]]:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from trainlab.integrations.hf import TrainlabCallback

    # learnable sequences (each an arithmetic progression mod 128, its stride 1-3), so the loss keeps
    # falling: a healthy run, where the doctor only watches (random tokens plateau at once, and a
    # stall would be treated — that is treatment, not overhead)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 128, (512, 1), generator=gen)
    strides = torch.randint(1, 4, (512, 1), generator=gen)
    tokens = (starts + strides * torch.arange(32)) % 128
    data = [{"input_ids": t, "labels": t} for t in tokens]
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32)

    def fit(callbacks: list[Any]) -> float:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, max_steps=updates, per_device_train_batch_size=8,
                                     learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                                     use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
            trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start

    def watched() -> tuple[float, int]:
        doctor = StallDoctor()
        return fit([TrainlabCallback(doctor=doctor)]), len(doctor.events)

    return (lambda: fit([])), watched


CASES = {"lightning": ("PyTorch Lightning, digits MLP", lightning_case),
         "hf": ("Hugging Face Trainer, tiny GPT-2", hf_case)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--only", choices=sorted(CASES), default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, 1 thread, {args.updates} updates per run, {args.repeats} alternating repeats\n")
    print("| framework | bare (s, median) | doctor callback (s, median) | ÷ bare (median of repeats) | range |"
          " doctor events | target |")
    print("|---|---|---|---|---|---|---|")
    for key, (title, case) in CASES.items():
        if args.only and key != args.only:
            continue
        try:
            bare, watched = case(args.updates)
        except ImportError as e:
            print(f"| {title} | not installed: {e} | | | | | |")
            continue
        bare()  # warm-up: imports, first-call costs
        times: list[float] = []
        watched_times: list[float] = []
        events = 0
        for _ in range(args.repeats):
            times.append(bare())
            seconds, n = watched()
            watched_times.append(seconds)
            events += n
        ratios = [w / b for w, b in zip(watched_times, times)]
        print(f"| {title} | {statistics.median(times):.3f} | {statistics.median(watched_times):.3f} |"
              f" {statistics.median(ratios):.3f} | {min(ratios):.3f}–{max(ratios):.3f} | {events} | ≤ 1.05 |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
