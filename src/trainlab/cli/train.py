"""``trainlab train``: train a model from a TOML run configuration."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from trainlab import distributed
from trainlab.integrations import tensorboard_dir
from trainlab.train import config as config_mod
from trainlab.train import interrupt, rundir
from trainlab.train import run as run_mod
from trainlab.train.doctor import StallDoctor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from a TOML run configuration",
        description="Train a model as a TOML configuration says (every key optional; see "
                    "trainlab.train.config for the keys and defaults) and write the run directory: "
                    "config.toml, metrics.jsonl, steps.jsonl, summary.json and checkpoint.pt (and instruments.jsonl"
                    " with --monitor). A new run refuses a"
                    " directory that already holds any of them (unless --overwrite), and one directory is written by"
                    " one process at a time.")
    p.add_argument("--config", metavar="FILE", help="TOML run configuration (default: all defaults; "
                   "with --resume: the run directory's config.toml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one key, e.g. --set train.epochs=5 --set model.hidden=[64,64] (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/YYYYmmdd-HHMMSS[-N])")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint up to train.epochs")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in --out even though it holds an earlier run's files, replacing them")
    p.add_argument("--doctor", action="store_true",
                   help="watch for stalls: diagnose the Hessian and act (escape a saddle, fix a plateau); events are"
                        " logged to metrics.jsonl and listed at the end")
    p.add_argument("--monitor", nargs="?", const="economy", choices=("economy", "full"), metavar="PRESET",
                   help="read training instruments (gradient norm, update ratio, units, sharpness, stability, noise"
                        " scale) every few updates into RUN/instruments.jsonl; PRESET economy (the default: cheap"
                        " readings often, curvature rarely) or full")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write TensorBoard event files into DIR (view them with: tensorboard --logdir DIR): each"
                        " update's loss, learning rate and gradient norm, each epoch's figures, the --monitor"
                        " readings and the --doctor events; give the same DIR again with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise config_mod.ConfigError("--resume needs --out DIR, the run directory to continue")
    if args.resume and args.overwrite:
        raise config_mod.ConfigError("--overwrite starts a new run and --resume continues one; choose one of them")
    out = Path(args.out) if args.out else None
    if args.resume:  # every file of the run a regular one before any is read (a named pipe would block)
        rundir.check_directory(out)
        if out.is_dir():
            rundir.check_run_files(out)
    if args.config is None and args.resume:
        config = config_mod.load(out / "config.toml" if (out / "config.toml").exists() else None, args.overrides)
    else:
        config = config_mod.load(args.config, args.overrides)
    callbacks = [StallDoctor(seed=config.seed)] if args.doctor else []
    if args.monitor:
        from trainlab.instruments import Monitor

        callbacks.append(Monitor(instruments=args.monitor, seed=config.seed, progress=not args.no_progress))
    if args.tensorboard is not None:
        try:  # checked before any file is written
            tensorboard_dir(args.tensorboard)
        except ImportError as e:  # the tensorboard package is missing: its one sentence, exit 2
            raise config_mod.ConfigError(str(e)) from None
    with _default_out() if out is None else contextlib.nullcontext(out) as out:
        try:
            summary = run_mod.train(config, out, resume=args.resume, progress=not args.no_progress,
                                    callbacks=callbacks, overwrite=args.overwrite, tensorboard=args.tensorboard)
        except KeyboardInterrupt as e:  # the one line main() prints, with the way on
            raise interrupt.Interrupted(interrupt.signum_of(e), f"the checkpoint in {out} keeps the last completed"
                                        f" step; continue with: trainlab train --out {out} --resume") from None
    if distributed.rank() == 0:
        print(report(config, summary, out))
        if args.monitor:
            print(f"instrument readings ({args.monitor}): {out / 'instruments.jsonl'}\n"
                  f"  draw them: trainlab report {out}")
        if args.tensorboard is not None:
            print(f"TensorBoard: tensorboard --logdir {args.tensorboard}")
    return 0


@contextlib.contextmanager
def _default_out():
    """A new run directory of its own; removed again if the run fails before writing to it."""
    out = rundir.new_run_dir("runs") if distributed.rank() == 0 else None
    if distributed.world_size() > 1:  # under torchrun every rank trains into rank 0's directory
        import torch.distributed

        shared = [str(out) if out is not None else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        out = Path(shared[0])
    try:
        yield out
    except BaseException:
        if distributed.rank() == 0:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise


def report(config: config_mod.RunConfig, summary: dict, out: Path) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return "\n".join([
        f"trained {config.model.name} {config.model.hidden if config.model.name == 'mlp' else ''}"
        f" on {config.data.name} with {config.optimizer.name} (lr {config.optimizer.lr:g}):"
        f" {summary['epochs']} epochs, {summary['steps']} updates, {summary['total_seconds']:.1f} s",
        f"  train  loss {num(summary.get('train_loss'))}  accuracy {pct(summary.get('train_accuracy'))}",
        f"  test   loss {num(summary.get('eval_loss'))}  accuracy {pct(summary.get('eval_accuracy'))}",
        f"run directory: {out}",
    ] + _events(summary.get("events", [])))


def _events(events: list[dict]) -> list[str]:
    if not events:
        return []
    return [f"stall doctor: {len(events)} event(s)"] + [f"  step {e['step']} (epoch {e['epoch']}): {e['verdict']}"
                                                      f" — {e.get('message', '')}" for e in events]
