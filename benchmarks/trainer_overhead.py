"""Trainer time per epoch vs a hand-written PyTorch loop, side by side in one run.

Both sides train the same model (same initial weights), on the same data, in the same
batch order, with the same optimizer and loss (torch's fused cross-entropy, so the row
measures the Trainer, not a loss), and both track what a practitioner's loop tracks:
the running training loss and accuracy and one evaluation pass per epoch. The Trainer
additionally records gradient norms, learning rates and wall times, and (``run dir``
rows) writes metrics.jsonl, steps.jsonl and a checkpoint every epoch, with its progress
bar drawn to /dev/null.

Rounds alternate the two sides so that machine noise hits both; the ratio compares the
median epoch times. Runs on CUDA unchanged when a GPU is present.

    python benchmarks/trainer_overhead.py [--rounds 7] [--epochs 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

import trainlab as tl
from trainlab.train import Trainer
from trainlab.train.trainer import resolve_device


def hand_written_epochs(model, opt, x, y, x_test, y_test, batch_size, epochs, seed, record):
    """The loop a PyTorch user writes; returns the wall time of each epoch. With
    ``record``, it also keeps what the Trainer records per step: loss, gradient norm, lr."""
    gen = torch.Generator().manual_seed(seed)
    times, steps = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = perm[start:start + batch_size].to(x.device)
            xb, yb = x[idx], y[idx]
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if record:
                grads = [p.grad for p in model.parameters()]
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
                steps.append((loss.item(), norm, opt.param_groups[0]["lr"]))
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum()
        model.eval()
        with torch.no_grad():
            out = model(x_test)
            eval_loss = torch.nn.functional.cross_entropy(out, y_test).item()
            eval_acc = (out.argmax(1) == y_test).float().mean().item()
        _ = (loss_sum / len(x), int(correct) / len(x), eval_loss, eval_acc)
        times.append(time.perf_counter() - t0)
    return times


def trainer_epochs(model, opt, train, test, batch_size, epochs, seed, device, run_dir):
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        trainer = Trainer(model, opt, torch.nn.functional.cross_entropy, train, batch_size=batch_size, epochs=epochs,
                          eval_data=test, seed=seed, device=device, out=run_dir, progress=run_dir is not None)
        trainer.fit()
    return [r["seconds"] for r in trainer.history]


def compare(name, hidden, batch_size, args, device):
    train, test = tl.data.load_digits()
    x, y = (t.to(device) for t in train.tensors)
    x_test, y_test = (t.to(device) for t in test.tensors)
    rows = {"hand-written": [], "hand-written, same records": [], "Trainer": [], "Trainer + run dir": []}
    for r in range(args.rounds):
        for side in rows:
            model = tl.nn.mlp(64, hidden, 10, seed=r).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            if side.startswith("hand-written"):
                bs = len(x) if batch_size == "full" else batch_size
                times = hand_written_epochs(model, opt, x, y, x_test, y_test, bs, args.epochs, r,
                                            record=side.endswith("records"))
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    run_dir = os.path.join(tmp, "run") if side.endswith("run dir") else None
                    times = trainer_epochs(model, opt, train, test, batch_size, args.epochs, r, device, run_dir)
            rows[side] += times[1:]  # the first epoch includes one-off warm-up
    plain, same = (statistics.median(rows[k]) for k in ("hand-written", "hand-written, same records"))
    for side, times in rows.items():
        med = statistics.median(times)
        print(f"| {name} | {side} | {1e3 * med:.2f} | {med / plain:.3f} | {med / same:.3f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    n_train = len(tl.data.load_digits()[0])
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.epochs} epochs, digits ({n_train:,} training samples)\n")
    print("| case | loop | ms per epoch (median) | ratio to hand-written | ratio to hand-written, same records |")
    print("|---|---|---|---|---|")
    compare("MLP 64-32-10, batch 32", [32], 32, args, device)
    compare("MLP 64-256-256-10, batch 64", [256, 256], 64, args, device)
    compare("MLP 64-32-10, full batch", [32], "full", args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
