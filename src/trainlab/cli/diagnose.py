"""``trainlab diagnose RUN_DIR_OR_CHECKPOINT``: is the saved model at a critical point?"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from trainlab import curvature, distributed
from trainlab.errors import ConfigError
from trainlab.report import plots
from trainlab.train import checkpoint
from trainlab.train import run as run_mod


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="verdict, gradient norm, extreme eigenvalues and minimum ratio of a saved run",
        description="Rebuild a run's model from its config.toml and checkpoint.pt, then analyse the Hessian of the"
                    " training loss there: verdict (saddle, local minimum, ...), gradient norm, extreme eigenvalues,"
                    " minimum ratio (exact for small models, estimated from the spectral density for large ones)."
                    " Writes spectrum.png beside the checkpoint.")
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or its checkpoint.pt")
    p.add_argument("--k", type=int, default=20, help="eigenpairs at each end of the spectrum for large models (20)")
    p.add_argument("--density", action="store_true", help="also estimate and draw the spectral density")
    p.add_argument("--out", metavar="FILE", help="where to write the figure (default: spectrum.png in the run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    run_dir, ckpt = (path, path / "checkpoint.pt") if path.is_dir() else (path.parent, path)
    if not ckpt.exists():
        raise ConfigError(f"{str(path)!r} is not a run directory or checkpoint: {str(ckpt)!r} does not exist")
    if args.k < 1:
        raise ConfigError(f"--k {args.k} is not allowed; expected an integer >= 1")
    config = run_mod.saved_config(run_dir)
    parts = run_mod.build(config)
    parts.model.load_state_dict(checkpoint.load(ckpt, map_location="cpu")["model"])
    x, y = parts.train_data.tensors
    rank, world = distributed.rank(), distributed.world_size()
    data = (x[rank::world], y[rank::world])  # under torchrun each rank holds a shard; results are all-reduced
    d = curvature.diagnose(parts.model, parts.loss_fn, data, k=args.k)
    if rank != 0:
        if args.density:
            curvature.density(parts.model, parts.loss_fn, data)  # the collective products need every rank
        return 0
    print(f"{run_dir}: {config.model.name} {config.model.hidden} on {config.data.name}, training split"
          f" ({len(y):,} samples{f', {world} processes' if world > 1 else ''}), {config.train.loss}")
    print(d)
    values = d.eigenvalues
    show = min(5, len(values))
    print(f"  largest eigenvalues: {', '.join(f'{float(v):.4g}' for v in values[:show])}")
    print(f"  smallest eigenvalues: {', '.join(f'{float(v):.4g}' for v in values[-show:])}")
    grid = density = None
    if args.density:
        spectrum = curvature.density(parts.model, parts.loss_fn, data)
        grid, density = spectrum.grid.tolist(), torch.clamp(spectrum.density, min=1e-12).tolist()
    title = f"{'all' if d.exact else 'extreme'} eigenvalues: {d.verdict.replace('_', ' ')}"
    out = plots.save(plots.spectrum_figure(values.tolist(), title, grid, density), args.out or run_dir / "spectrum.png")
    print(f"wrote {out}")
    return 0
