"""``trainlab diagnose``: is a saved model at a critical point?

Two ways to name the model:

* ``trainlab diagnose RUN_DIR_OR_CHECKPOINT`` — a run of ``trainlab train``: the model is
  rebuilt from the run's ``config.toml`` and loaded from its ``checkpoint.pt``; the data is the
  run's training split, the loss the run's loss.
* ``trainlab diagnose --model pkg.module:factory --weights model.pt --data FILE|NAME`` — a model
  trained anywhere: ``factory()`` (no arguments) builds the ``nn.Module``, ``--weights`` holds
  its ``state_dict`` (or a checkpoint dict with a ``"model"`` entry). ``--data`` is

  - a bundled data set or a ``.npz``/``.csv`` file, read by :func:`trainlab.data.load` with its
    defaults: the training split (80 %, stratified, seed 0), each feature standardised with that
    split's mean and standard deviation (``--no-standardize``: the raw features); or
  - a ``.pt``/``.pth`` file (read with ``torch.load(weights_only=True)``) holding an ``(x, y)``
    pair of tensors, a dict of tensors (one batch) or a list of batches (each a pair or a dict),
    analysed as saved: no split, no standardisation.

  The loss is ``--loss`` — ``cross_entropy`` (default), ``mse`` or ``pkg.module:fn``, a function
  ``(outputs, targets) -> mean loss`` — or ``--batch-loss pkg.module:fn``, a function
  ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs (a language model's
  dict of ``input_ids`` and ``labels``). One evaluation on the first batch checks the fit before
  the analysis.

``--operator`` picks whose spectrum decides: the Hessian (default), the generalised
Gauss–Newton matrix or the empirical Fisher (both need ``(x, y)`` batches and a loss of the
outputs, not ``--batch-loss``). ``--layers`` adds, after the whole model's diagnosis, the table
of :func:`trainlab.curvature.layerwise.layerwise`: the block of each layer and of each pair of
neighbouring layers; its figure goes beside the spectrum's, as ``STEM_layers.png``.

Every input is checked before the analysis starts; whatever does not fit is one sentence
and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pickle
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from trainlab.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch and the analyses load only when the command runs
    import torch
    from torch import nn

LOSS_NAMES = ("cross_entropy", "mse")
OPERATORS = ("hessian", "ggn", "fisher")
#: Suffixes of a ``--data`` file read with ``torch.load`` (anything else goes to :func:`trainlab.data.load`).
TORCH_SUFFIXES = (".pt", ".pth")
#: What a ``--data`` file read with ``torch.load`` may hold.
PT_FORMS = ("an (x, y) pair of tensors, a dict of tensors (one batch) or a non-empty list of batches, each an"
            " (x, y) pair or a dict of tensors")

COST = ("Cost, in Hessian-vector products (HVPs; one costs about two gradient evaluations over the samples"
        " analysed): a model with at most 2,000 parameters gets the exact Hessian, one HVP per parameter, 3·n²×8"
        " bytes of memory and an O(n³) eigendecomposition, when its time estimate is under 60 s; otherwise Lanczos"
        " finds the extreme eigenvalues (typically a few hundred HVPs, at most 5,000) and the spectral density"
        " estimates the counts (10 probes × 80 steps = 800 HVPs; --density draws it with another 800)."
        " --layers adds one diagnosis per layer and per pair of neighbouring layers (2g − 1 rows for g layers):"
        " exact for a block of at most 2,000 parameters (one HVP per parameter), else Lanczos with k=5 to a"
        " tolerance of 1e-4 and 5 probes × 40 steps (about 300–500 HVPs a row, each through the whole network)."
        " --max-samples and --max-hvp bound the time; a progress bar shows after 2 s.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="verdict, gradient norm, extreme eigenvalues and minimum ratio of a saved model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap(
            "Analyse the Hessian of the training loss at a saved model: verdict (saddle, local minimum, local"
            " maximum, degenerate, not critical), loss, gradient norm, extreme eigenvalues, counts of positive,"
            " negative and flat eigenvalues, and the minimum ratio (share of positive eigenvalues; exact for small"
            " models, estimated from the spectral density for large ones). --operator ggn or fisher analyses the"
            " Gauss–Newton matrix or the empirical Fisher instead. The model is never changed.")
        + "\n\n" + _wrap(
            "Name the model in one of two ways: RUN_DIR_OR_CHECKPOINT, a run of `trainlab train` (model, data and"
            " loss from its config.toml and checkpoint.pt; the figure goes to spectrum.png in the run), or --model"
            " with --weights and --data, a model trained anywhere (the figure only with --out). Any model works"
            " there: with --data FILE.pt holding your own batches (a list of dicts for a language model, say) and"
            " --batch-loss computing a batch's mean loss from the model and the batch, or --loss MODULE:FUNCTION"
            " for (x, y) batches.")
        + "\n\n" + _wrap(COST),
        epilog="examples:\n" + "\n".join(
            f"  {command}\n" + _wrap(explained, indent=" " * 6) for command, explained in (
                ("trainlab diagnose --model mynet:build --weights mynet.pt --data digits",
                 "mynet.py in the current directory: def build() -> nn.Module"),
                ("trainlab diagnose --model lm:build --weights lm.pt --data batches.pt --batch-loss lm:batch_loss",
                 "a language model: batches.pt saved with torch.save([{'input_ids': ..., 'labels': ...}, ...]);"
                 " lm.py: def build() -> nn.Module and def batch_loss(model, batch) -> the batch's mean loss,"
                 " a 0-d tensor"))))
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", nargs="?",
                   help="a run directory of `trainlab train`, or its checkpoint.pt")
    own = p.add_argument_group("a model trained elsewhere (instead of RUN_DIR_OR_CHECKPOINT)")
    own.add_argument("--model", metavar="MODULE:FACTORY",
                     help="a callable that takes no arguments and returns the torch.nn.Module, e.g. mynet:build or"
                          " pkg.models:make_net; the current directory is searched first")
    own.add_argument("--weights", metavar="FILE",
                     help="the model's state_dict saved with torch.save (read with weights_only=True), or a"
                          " checkpoint dict holding it under 'model'")
    own.add_argument("--data", metavar="FILE|NAME",
                     help="a bundled data set (digits, iris, wine, breast_cancer, mnist1d) or a .npz file (arrays"
                          " x and y) or .csv file (label last), analysed: its training split (80 %%, stratified,"
                          " seed 0, as trainlab.data.load); or a .pt file saved with torch.save (read with"
                          " weights_only=True) holding an (x, y) pair of tensors, a dict of tensors (one batch) or"
                          " a list of batches (each a pair or a dict), analysed as saved (no split, no"
                          " standardisation; floating inputs x cast to the model's dtype)")
    own.add_argument("--loss", metavar="NAME|MODULE:FUNCTION", type=_loss_name, default=None,
                     help="the training loss of the model's outputs and the targets y: cross_entropy (default), mse"
                          " (squared error to one-hot targets), or your own function (outputs, targets) -> mean"
                          " loss, e.g. mylosses:focal")
    own.add_argument("--batch-loss", metavar="MODULE:FUNCTION",
                     help="instead of --loss, for batches that are not (x, y) pairs: a function (model, batch) ->"
                          " the batch's mean loss (a 0-d tensor), e.g. lm:batch_loss for dicts of input_ids and"
                          " labels; (x, y) pairs of a data set or .npz/.csv file are handed to it as they are")
    own.add_argument("--no-standardize", action="store_true",
                     help="feed the raw features (default: standardised with the training split's mean and"
                          " standard deviation, as trainlab.data.load does); not with a .pt file, used as saved")
    p.add_argument("--operator", choices=OPERATORS, default="hessian",
                   help="whose eigenvalues decide: hessian (default), ggn (the generalised Gauss–Newton matrix,"
                        " positive semi-definite for a loss convex in the outputs) or fisher (the empirical"
                        " Fisher); ggn and fisher split the model's outputs from the loss, so they need --loss (or"
                        " a run), not --batch-loss")
    p.add_argument("--k", type=int, default=20,
                   help="eigenpairs at each end of the spectrum for large models (default 20; more than half the"
                        " parameter count is clamped to it, with a note)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="analyse only the first N training samples (default: all); the loss, its gradient and"
                        " every HVP are then of those N")
    p.add_argument("--max-hvp", type=int, default=None, metavar="N",
                   help="a budget of N Hessian-vector products for the whole analysis (default: none beyond"
                        " the solvers' own); at most half goes to the density; an eigenvalue not converged within"
                        " it is marked, and a verdict resting on it says so")
    p.add_argument("--density", action="store_true", help="also estimate and draw the spectral density (800 HVPs)")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the figure (default: spectrum.png in the run directory; with --model: none);"
                        " with --layers the layer figure goes beside it, as STEM_layers.png")
    layers = p.add_argument_group("where the curvature lives (trainlab.curvature.layerwise)")
    layers.add_argument("--layers", action="store_true",
                        help="after the whole model's diagnosis (which says whether the point is critical at all),"
                             " a table of the Hessian block (or --operator's) of each layer, the others held fixed,"
                             " and of each pair"
                             " of neighbouring layers (their coupling, where a network's negative curvature lives):"
                             " parameters, λ_max, λ_min, trace, share of negative eigenvalues, verdict; layers are"
                             " the modules holding parameters, merged by name prefix past 16; --max-hvp bounds each"
                             " row too, --k only the whole model's analysis")
    layers.add_argument("--groups", metavar="NAMES",
                        help="with --layers: comma-separated module or parameter names of the model, one group each"
                             " (e.g. conv1,layer1,layer2,fc), instead of one group per layer")
    layers.add_argument("--no-couplings", action="store_true",
                        help="with --layers: no rows for pairs of neighbouring layers (halves the cost)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _wrap(text: str, indent: str = "") -> str:
    """``text`` filled to the terminal's width, as argparse fills the options' help."""
    return textwrap.fill(text, width=max(40, shutil.get_terminal_size().columns - 2), initial_indent=indent,
                         subsequent_indent=indent, break_on_hyphens=False)


def _loss_name(value: str) -> str:
    """``--loss``: one of :data:`LOSS_NAMES` or ``MODULE:FUNCTION`` (checked when imported);
    anything else is argparse's usage error naming the value."""
    if value in LOSS_NAMES or ":" in value:
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(LOSS_NAMES)}, or"
                                     " MODULE:FUNCTION, a function (outputs, targets) -> mean loss)")


@dataclass
class Target:
    """What to analyse, and a line saying what it is: ``data`` is anything
    :func:`trainlab.diagnose` takes — an ``(x, y)`` pair, one dict batch, a list of batches —
    read by ``loss_fn(model(x), y)`` or, when given, by ``batch_loss(model, batch)``."""

    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    data: Any
    title: str
    figure: Path | None  # where the figure goes when --out is not given
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    target = _from_factory(args) if args.model is not None else _from_run(args)
    _check_figures(args, target)
    return _analyse(target, args)


def _check_figures(args: argparse.Namespace, target: Target) -> None:
    """Before any analysis: the figures go nowhere they would replace a run's files
    (:func:`trainlab.train.rundir.check_output`); the default one belongs to its run."""
    from trainlab.train import rundir

    out = args.out or target.figure
    if out is None:
        return
    own = target.figure.parent if target.figure is not None else None
    rundir.check_output(out, own)
    if args.layers:
        out = Path(out)
        rundir.check_output(out.with_name(f"{out.stem}_layers.png"), own)


# ------------------------------------------------------------------------------------------ options
def _check_options(args: argparse.Namespace) -> None:
    own = [f"--{name.replace('_', '-')}" for name in ("model", "weights", "data", "loss", "batch_loss")
           if getattr(args, name) is not None] + (["--no-standardize"] if args.no_standardize else [])
    if args.path is not None and own:
        raise ConfigError(f"give either RUN_DIR_OR_CHECKPOINT ({args.path!r}) or --model with --weights and --data,"
                          f" not both ({', '.join(own)} given)")
    if args.path is None:
        missing = [f"--{name}" for name in ("model", "weights", "data") if getattr(args, name) is None]
        if len(missing) == 3:
            raise ConfigError("nothing to diagnose: give a run directory (or its checkpoint.pt), or --model"
                              " MODULE:FACTORY --weights FILE --data FILE|NAME")
        if missing:
            raise ConfigError(f"--model, --weights and --data go together; {', '.join(missing)} is missing")
        if args.loss is not None and args.batch_loss is not None:
            raise ConfigError(f"give either --loss {args.loss} (a loss of the outputs and targets of (x, y) batches) or"
                              f" --batch-loss {args.batch_loss} (a loss of the model and a batch), not both")
        if args.no_standardize and _is_torch_file(args.data):
            raise ConfigError(f"--no-standardize does nothing with --data {args.data}: a .pt file's tensors are"
                              " analysed as saved (no split, no standardisation); leave it out")
        if args.operator != "hessian" and args.batch_loss is not None:
            raise ConfigError(f"--operator {args.operator} needs --loss, not --batch-loss {args.batch_loss}: the"
                              f" {_OPERATOR_NAMES[args.operator]} splits the model's outputs from the loss of (x, y)"
                              " batches; give --loss, or --operator hessian")
    for flag, value in (("--k", args.k), ("--max-samples", args.max_samples), ("--max-hvp", args.max_hvp)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; expected an integer >= 1")
    alone = ([f"--groups {args.groups}"] if args.groups is not None else []) + \
        (["--no-couplings"] if args.no_couplings else [])
    if alone and not args.layers:
        raise ConfigError(f"{' and '.join(alone)} go{'es' * (len(alone) == 1)} with --layers, which is not given;"
                          " add --layers for the table by layer")
    if args.groups is not None and not _group_names(args):
        raise ConfigError(f"--groups {args.groups!r} names no group; give comma-separated module or parameter names,"
                          " e.g. --groups 0,2,4")


_OPERATOR_NAMES = {"hessian": "Hessian", "ggn": "Gauss–Newton matrix", "fisher": "empirical Fisher"}


def _is_torch_file(data: str) -> bool:
    """Whether ``--data`` names a file for ``torch.load`` rather than :func:`trainlab.data.load`."""
    return Path(data).suffix.lower() in TORCH_SUFFIXES


def _group_names(args: argparse.Namespace) -> list[str] | None:
    """The names of ``--groups``, stripped and without empty items (``None`` without the flag)."""
    return None if args.groups is None else [g.strip() for g in args.groups.split(",") if g.strip()]


def _analysis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every analysis takes; defaults are left out so the analyses' own apply."""
    options: dict[str, Any] = {}
    if args.max_samples is not None:
        options["max_samples"] = args.max_samples
    if args.no_progress:
        options["progress"] = False
    if args.operator != "hessian":
        options["operator"] = args.operator
    return options


# ------------------------------------------------------------------------------------------ a run
def _from_run(args: argparse.Namespace) -> Target:
    from trainlab.train import run as run_mod

    from trainlab.train import rundir

    path = Path(args.path)
    run_dir, ckpt = (path, path / "checkpoint.pt") if path.is_dir() else (path.parent, path)
    rundir.check_run_files(run_dir, ("config.toml", ckpt.name))  # a named pipe would block the reads below
    if not ckpt.is_file():
        raise ConfigError(f"{str(path)!r} is not a run directory or checkpoint: {str(ckpt)!r} does not exist")
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{str(run_dir)!r} holds no config.toml, so the model cannot be rebuilt (is it a run"
                          " directory of `trainlab train`?)")
    config = run_mod.saved_config(run_dir)
    parts = run_mod.build(config)
    saved = _torch_load(ckpt, f"checkpoint {str(ckpt)!r}")
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise DataError(f"checkpoint {str(ckpt)!r} holds no model state (no 'model' entry); it was not written by"
                        " `trainlab train`")
    _load(parts.model, saved["model"], f"checkpoint {str(ckpt)!r}", f"the model {config.model.name} of"
          f" {str(run_dir / 'config.toml')!r}")
    x, y = parts.train_data.tensors
    hidden = f" {config.model.hidden}" if config.model.name == "mlp" else ""
    title = (f"{run_dir}: {config.model.name}{hidden} on {config.data.name}, training split"
             f" ({_analysed(len(y), args.max_samples)}),"
             f" {config.train.loss}")
    return Target(parts.model, parts.loss_fn, (x, y), title, run_dir / "spectrum.png")


# ------------------------------------------------------------------------------------------ --model
def _from_factory(args: argparse.Namespace) -> Target:
    from trainlab import distributed
    from trainlab.train.run import LOSSES

    model = _build(args.model)
    state = _read_weights(Path(args.weights))
    wrapped = _unwrapped(state, model)
    if wrapped is not None:
        if distributed.rank() == 0:
            print(f"note: --weights {args.weights}: the 'module.' prefix of DistributedDataParallel / DataParallel"
                  " removed from every key")
        state = wrapped
    _load(model, state, f"--weights {args.weights!r}", f"the model {args.model}() builds")
    loss_fn, batch_loss, loss_label = None, None, args.loss or "cross_entropy"
    if args.batch_loss is not None:
        batch_loss, loss_label = _callable(args.batch_loss, "--batch-loss", "(model, batch) -> mean loss"), \
            f"batch loss {args.batch_loss}"
    elif loss_label in LOSS_NAMES:
        loss_fn = LOSSES[loss_label]
    else:
        loss_fn, loss_label = _callable(loss_label, "--loss", "(outputs, targets) -> mean loss"), f"loss {loss_label}"
    if _is_torch_file(args.data):
        data, n, form = _read_data(Path(args.data), batch_loss is not None, _float_dtype(model))
        what = f"{form} ({_analysed(n, args.max_samples)}, as saved)"
    else:
        data = _split(args.data, not args.no_standardize, _float_dtype(model))
        n = len(data[1])
        what = (f"training split ({_analysed(n, args.max_samples)},"
                f" {'raw' if args.no_standardize else 'standardised'})")
    if loss_fn is not None and args.loss in (None, *LOSS_NAMES):
        classes = _check_labels(data, args.data, loss_label) if _is_torch_file(args.data) else None
        x, y = data[0] if isinstance(data, list) else data
        _check_fit(model, loss_fn, x, y, args.data, loss_label, classes)
    else:
        _check_loss_fit(model, data, args, loss_fn, batch_loss)
    title = f"{args.model} with {args.weights} on {args.data}, {what}, {loss_label}"
    return Target(model, loss_fn, data, title, None, batch_loss)


def _split(name: str, standardize: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split of a bundled set or a .npz/.csv file, as :func:`trainlab.data.load`
    reads it; its hint to set ``data.num_classes`` (an option of ``trainlab train``'s config)
    becomes one that this command can follow."""
    from trainlab import data as data_mod

    try:
        train, _ = data_mod.load(name, standardize=standardize)
    except DataError as e:
        text, n = re.subn(r"if intended, set data\.num_classes = (\d+)",
                          r"if intended, save the data with torch.save as an (x, y) pair and give --data FILE.pt,"
                          r" analysed as saved (the model needs at least \1 outputs)", str(e))
        if n:
            raise DataError(text) from None
        raise
    x, y = train.tensors
    return x.to(dtype), y  # the bundled data is float32; a float64 model is just as legitimate


def _analysed(n: int, max_samples: int | None) -> str:
    """The samples the header counts: those analysed — the first ``max_samples`` of ``n`` when
    ``--max-samples`` holds fewer (the header used to say all ``n``)."""
    if max_samples is not None and max_samples < n:
        return f"the first {max_samples:,} of its {n:,} samples"
    return f"{n:,} samples"


def _build(spec: str) -> nn.Module:
    """``factory()`` of ``module:factory``, checked to be an ``nn.Module``."""
    from torch import nn

    with _cwd_importable():  # the factory's own imports, as it runs, find the user's modules too
        factory = _callable(spec, "--model", "that builds the model")
        attr = spec.partition(":")[2]
        try:
            model = factory()
        except (Exception, SystemExit) as e:
            raise ConfigError(f"--model {spec!r}: calling {attr}() failed: {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r}: {attr}() returned an object of type {type(model).__name__},"
                          " not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--model {spec!r}: the model has no trainable parameters to analyse")
    return model


def _callable(spec: str, flag: str, role: str) -> Callable[..., Any]:
    """The callable ``attr`` of ``spec = "module:attr"`` (``attr`` may be dotted: ``Class.method``),
    given as ``flag``; ``role`` says what it must be (``"that builds the model"``, ``"(outputs,
    targets) -> mean loss"``). The module is imported with the current directory on the path
    (:func:`_cwd_importable`); every way the name can miss is one sentence naming ``flag``."""
    form, example = ("MODULE:FACTORY", "mynet:build") if flag == "--model" else ("MODULE:FUNCTION", "mylm:batch_loss")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{flag} {spec!r} is not allowed; expected {form}, e.g. {example}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        stem = Path(module_name).with_suffix("").name if module_name.endswith(".py") else Path(module_name).name
        raise ConfigError(f"{flag} {spec!r}: MODULE is a module name, not a file path; run from the folder that"
                          f" holds {stem}.py and give {flag} {stem}:{attr}")
    with _cwd_importable():
        module = _import(spec, module_name, flag)
        found: Any = module
        for part in attr.split("."):
            if not hasattr(found, part):
                raise ConfigError(f"{flag} {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')})"
                                  f" has no attribute {attr!r}")
            found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"{flag} {spec!r}: {attr!r} is of type {type(found).__name__}, not a callable {role}")
    return found


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on the import path for the user's module (and its factory's own
    imports) only, and behind the installed packages: a local ``tqdm.py``, ``sklearn.py`` or
    ``torch.py`` never stands in for a dependency, neither while the user's module imports nor
    when trainlab imports one lazily later. ``sys.path`` is restored after; no ``__pycache__`` is
    left in the user's folder."""
    path, writes = list(sys.path), sys.dont_write_bytecode
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    sys.dont_write_bytecode = True
    importlib.invalidate_caches()  # the module may be newer than this process
    try:
        yield
    finally:
        sys.path[:] = path
        sys.dont_write_bytecode = writes


def _import(spec: str, module_name: str, flag: str = "--model") -> Any:
    """The user's module ``module_name``, refusing an installed module of that name where the
    user's own file lies in the current directory (it would never be the one imported)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"{flag} {spec!r}: no module named {e.name!r} in the current directory or on"
                              " sys.path") from None
        raise ConfigError(f"{flag} {spec!r}: importing {module_name!r} failed: {_one_line(e)}") from None
    except (Exception, SystemExit) as e:  # the user's module may fail in any way while it runs
        raise ConfigError(f"{flag} {spec!r}: importing {module_name!r} failed: {_one_line(e)}") from None
    top = module_name.partition(".")[0]
    local = next((p for p in (Path(top + ".py"), Path(top)) if p.exists()), None)
    imported = sys.modules.get(top)
    file = getattr(imported, "__file__", None)
    places = [file] if file else list(getattr(imported, "__path__", []))  # a namespace package has only paths
    here = Path.cwd().resolve()
    if local is not None and not any(Path(p).resolve().is_relative_to(here) for p in places):
        raise ConfigError(f"{flag} {spec!r}: {top!r} is the installed package ({file or 'built in'}), which comes"
                          f" before {str(local)!r} in the current directory on the import path; rename your"
                          f" {str(local)!r} (e.g. to my{top}.py) and give {flag} my{top}:{spec.partition(':')[2]}")
    return module


def _read_weights(path: Path) -> dict[str, Any]:
    """A state_dict from ``path``: the file itself or its ``"model"`` entry."""
    import torch

    if not path.is_file():
        raise DataError(f"--weights {str(path)!r}: " + ("is a directory, not a file" if path.is_dir()
                                                        else "no such file"))
    saved = _torch_load(path, f"--weights {str(path)!r}")
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved = saved["model"]
    if not isinstance(saved, dict) or not saved or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in saved.items()):
        raise DataError(f"--weights {str(path)!r} holds an object of type {type(saved).__name__}, not a state_dict"
                        " (a dict of parameter names to tensors, or a checkpoint with one under 'model')")
    return saved


def _torch_load(path: Path, what: str, expected: str = "a state_dict",
                instead: str = "save model.state_dict() instead") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; every way the file can be unusable
    is one sentence naming ``what``, ``expected`` (what the file should hold) and ``instead``
    (what to save in place of a pickled object). An OSError (permissions, I/O) is the
    environment's, and passes through for the CLI's exit status 1."""
    import torch

    if path.stat().st_size == 0:
        raise DataError(f"{what} is empty (0 bytes); expected {expected} saved with torch.save")
    try:
        with open(path, "rb") as f:  # the environment's faults (no permission, a directory) are raised here
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except OSError as e:
                # torch reports a zip archive cut short as EINVAL from a seek: the file's fault, not the disk's
                if e.errno == errno.EIO:
                    raise
                raise pickle.UnpicklingError(f"the archive is cut short ({e.strerror or e})") from None
    except pickle.UnpicklingError as e:
        # weights_only refuses pickled objects (unpickling them could run any code) and foreign bytes
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise DataError(f"{what} holds a pickled {found.group(1)}"
                            f"{' (a whole model?)' if expected == 'a state_dict' else ''}, which"
                            f" torch.load(weights_only=True) refuses to run; {instead}") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(e), re.S)
        raise DataError(f"{what} cannot be read by torch.load (not written by torch.save, or truncated):"
                        f" {' '.join((reason.group(1) if reason else _one_line(e)).split())}") from None
    except OSError:  # the environment's: the CLI exits 1 naming the path
        raise
    except Exception as e:  # truncated or foreign files fail in many ways inside torch.load
        raise DataError(f"{what} cannot be read by torch.load (not written by torch.save, or truncated):"
                        f" {_one_line(e)}") from None


# ------------------------------------------------------------------------------------------ --data FILE.pt
def _read_data(path: Path, batch_loss: bool, dtype: torch.dtype) -> tuple[Any, int, str]:
    """The batches of a ``--data`` file read with ``torch.load(weights_only=True)``: one ``(x, y)``
    pair, one dict of tensors, or a list of batches all of one of those forms (:data:`PT_FORMS`),
    as saved — only a floating ``x`` is cast to the model's ``dtype``, as the bundled data is.
    Returns the data as :func:`trainlab.diagnose` takes it, its number of samples and a phrase
    naming its form. Dicts need ``--batch-loss``; every tensor must hold finite values, and the
    tensors of a batch one row per sample each."""
    import torch

    from trainlab.data.batches import first_non_finite

    what = f"--data {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{what}: " + ("is a directory, not a file" if path.is_dir() else "no such file"))
    saved = _torch_load(path, what, expected=PT_FORMS.replace(" or a non-empty", ", or a non-empty"),
                        instead="save tensors only: " + PT_FORMS)
    one = _form(saved) is not None
    batches = [saved] if one else saved
    if not one and not (isinstance(saved, (list, tuple)) and saved and all(_form(b) for b in saved)):
        raise DataError(f"{what} holds {_found(saved)}; expected {PT_FORMS}")
    forms = [_form(b) for b in batches]
    if len(set(forms)) > 1:
        first_dict = forms.index("dict")
        first_pair = forms.index("pair")
        raise DataError(f"{what} holds a list mixing (x, y) pairs (batch {first_pair}) and dicts (batch"
                        f" {first_dict}); every batch must be of one form, all pairs or all dicts")
    if forms[0] == "dict" and not batch_loss:
        raise ConfigError(f"{what} holds {'a dict' if one else 'a list of dicts'} of tensors"
                          f" ({_names([str(k) for k in batches[0]])}), which"
                          " only a --batch-loss MODULE:FUNCTION can read, a function (model, batch) -> mean loss;"
                          " give it, or save (x, y) pairs for --loss")
    n = 0
    for i, batch in enumerate(batches):
        where = what if one else f"{what}, batch {i},"
        n += _batch_samples(batch, where)
        for name, t in _named(batch):
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                row, value = first_non_finite(t)
                raise DataError(f"{where} holds {value} in {name} at sample {row}; every tensor of the data must be"
                                " finite")
    if forms[0] == "pair":
        batches = [(x.to(dtype) if x.is_floating_point() else x, y) for x, y in batches]
    data = batches[0] if one else list(batches)
    if one:
        form = "an (x, y) pair" if forms[0] == "pair" else "one dict batch"
    else:
        form = f"{len(batches):,} {'(x, y)' if forms[0] == 'pair' else 'dict'} batch{'es' * (len(batches) != 1)}"
    return data, n, form


def _form(batch: Any) -> str | None:
    """``"pair"`` for an ``(x, y)`` pair of tensors, ``"dict"`` for a non-empty dict of tensors, else ``None``."""
    import torch

    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return "pair"
    if isinstance(batch, dict) and batch and all(isinstance(v, torch.Tensor) for v in batch.values()):
        return "dict"
    return None


def _found(saved: Any) -> str:
    """What a ``--data`` file holds that is none of :data:`PT_FORMS`, in a few words."""
    import torch

    if isinstance(saved, (list, tuple)) and not saved:
        return f"an empty {type(saved).__name__}"
    if isinstance(saved, dict):
        bad = next((k for k, v in saved.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            return f"a dict whose entry {bad!r} is of type {type(saved[bad]).__name__}, not a tensor"
    if isinstance(saved, (list, tuple)):
        if len(saved) == 2 and any(isinstance(t, torch.Tensor) for t in saved):
            kinds = " and ".join(type(t).__name__ for t in saved)
            return f"a {type(saved).__name__} of a {kinds}, not an (x, y) pair of tensors"
        i = next(i for i, b in enumerate(saved) if _form(b) is None)
        return f"a {type(saved).__name__} whose batch {i} is {_found_batch(saved[i])}"
    if isinstance(saved, torch.Tensor):
        return f"a single tensor of shape {tuple(saved.shape)}, without targets"
    return f"a {type(saved).__name__}"


def _found_batch(batch: Any) -> str:
    import torch

    if isinstance(batch, (list, tuple)):
        return f"a {type(batch).__name__} of length {len(batch)}" + (
            "" if len(batch) != 2 else " holding a " + " and a ".join(type(t).__name__ for t in batch))
    if isinstance(batch, dict):
        return "an empty dict" if not batch else "a dict holding something other than tensors"
    if isinstance(batch, torch.Tensor):
        return f"a single tensor of shape {tuple(batch.shape)}"
    return f"a {type(batch).__name__}"


def _named(batch: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(batch, dict):
        yield from ((repr(k), v) for k, v in batch.items())
    else:
        yield from zip(("x", "y"), batch)


def _batch_samples(batch: Any, where: str) -> int:
    """The samples of one batch: the leading dimension every tensor of it shares, at least 1."""
    sizes = {name: (t.shape[0] if t.dim() else None) for name, t in _named(batch)}
    if None in sizes.values():
        name = next(k for k, v in sizes.items() if v is None)
        raise DataError(f"{where} holds a 0-d tensor in {name}; every tensor of a batch needs a leading (sample)"
                        " dimension")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {size:,}" for name, size in sizes.items())
        raise DataError(f"{where} holds tensors with different numbers of samples ({listed}); every tensor of a"
                        " batch must hold one row per sample")
    n = next(iter(sizes.values()))
    if n == 0:
        raise DataError(f"{where} holds no samples (leading dimension 0); every batch needs at least one")
    return n


def _check_labels(data: Any, source: str, loss_name: str) -> int:
    """``--loss cross_entropy|mse`` on a .pt file's pairs: the targets are class labels 0…C−1, one
    per sample. Returns ``C``, the largest label over every batch plus one."""
    import torch

    batches = data if isinstance(data, list) else [data]
    for i, (_, y) in enumerate(batches):
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            found = f"y of dtype {str(y.dtype).replace('torch.', '')} and shape {tuple(y.shape)}"
        elif bool((y < 0).any()):
            found = f"the label {int(y.min())}"
        else:
            continue
        raise DataError(f"--loss {loss_name} needs integer class labels 0…C−1, one per sample, as y; --data"
                        f" {source!r} holds {found}" + (f" in batch {i}" if isinstance(data, list) else "")
                        + "; for other targets give --loss MODULE:FUNCTION")
    return max(int(y.max()) for _, y in batches) + 1


def _check_loss_fit(model: nn.Module, data: Any, args: argparse.Namespace, loss_fn: Callable | None,
                    batch_loss: Callable | None) -> None:
    """One evaluation of the user's loss function on the first batch, in eval mode as the
    analyses run: it must not raise, and it must return the batch's mean loss — a finite real
    0-d (or one-element) tensor that requires grad. Nothing is kept."""
    import torch

    from trainlab.data.batches import first_samples

    first = next(iter(first_samples(data, args.max_samples, batch_loss)))
    model.eval()
    source = args.data
    with torch.enable_grad():
        if batch_loss is not None:
            flag, spec, call = "--batch-loss", args.batch_loss, f"{args.batch_loss.partition(':')[2]}(model, batch)"
            try:
                loss = batch_loss(model, first)
            except Exception as e:
                raise ConfigError(f"{flag} {spec!r}: calling {call} on the first batch of {source} failed:"
                                  f" {_one_line(e)}") from None
        else:
            flag, spec, call = "--loss", args.loss, f"{args.loss.partition(':')[2]}(outputs, targets)"
            x, y = first
            try:
                out = model(x)
            except Exception as e:
                raise DataError(f"the model does not take the inputs of {source}: they have shape"
                                f" {tuple(x.shape[1:])} per sample (batch {tuple(x.shape)}), and the forward pass"
                                f" failed: {_one_line(e)}") from None
            try:
                loss = loss_fn(out, y)
            except Exception as e:
                raise ConfigError(f"{flag} {spec!r}: calling {call} on the model's output"
                                  f" {_shape_or_type(out)} and the targets {_shape_or_type(y)} of the first batch of"
                                  f" {source} failed: {_one_line(e)}") from None
        found = _not_a_loss(loss)
        if found is not None:
            raise ConfigError(f"{flag} {spec!r}: {call} returned {found} on the first batch of {source}; expected the"
                              " batch's mean loss, a finite real 0-d tensor that requires grad")


def _shape_or_type(value: Any) -> str:
    import torch

    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f"(a {type(value).__name__})"


def _not_a_loss(loss: Any) -> str | None:
    """What is wrong with ``loss`` as a batch's mean loss, in a few words; ``None`` if nothing."""
    import torch

    if not isinstance(loss, torch.Tensor):
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return f"a Python {type(loss).__name__} ({loss:.6g}), cut off from the parameters (.item()? float()?)"
        return f"an object of type {type(loss).__name__}"
    if loss.numel() != 1:
        return f"a tensor of shape {tuple(loss.shape)}, not one number (reduction='none'?)"
    if not loss.is_floating_point():
        return f"a tensor of dtype {str(loss.dtype).replace('torch.', '')}"
    if not bool(torch.isfinite(loss.detach()).all()):
        return f"{float(loss.detach().reshape(()))}"
    if not loss.requires_grad:
        return "a tensor that does not require grad (detached, or computed under torch.no_grad?)"
    return None


def _unwrapped(state: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """``state`` without the ``module.`` prefix a (Distributed)DataParallel wrapper adds to every
    key, when that makes it the model's keys exactly; else ``None``."""
    prefix = "module."
    if not all(k.startswith(prefix) for k in state):
        return None
    stripped = {k[len(prefix):]: v for k, v in state.items()}
    return stripped if set(stripped) == set(model.state_dict()) else None


def _load(model: nn.Module, state: dict[str, Any], source: str, what: str) -> None:
    """``model.load_state_dict(state)`` after checking, in one sentence each, that every
    key is there, no key is foreign, every shape fits and every weight is finite."""
    import torch

    from trainlab.train import checkpoint

    expected = model.state_dict()
    foreign = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if foreign:
        raise DataError(f"{source} does not fit {what}: {_names(foreign)} hold{'s' if len(foreign) == 1 else ''}"
                        " no tensor")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + \
                ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise DataError(f"{source} does not fit {what}: {'; '.join(parts)}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise DataError(f"{source} does not fit {what}: {key!r} has shape {tuple(state[key].shape)} in the file,"
                            f" {tuple(value.shape)} in the model")
    bad = checkpoint.non_finite(state)
    if bad is not None:
        raise DataError(f"{source} holds non-finite weights in {bad}; it is not a usable point to analyse")
    try:
        model.load_state_dict(state)
    except Exception as e:  # e.g. a dtype that cannot be copied into the parameter
        raise DataError(f"{source} does not fit {what}: {_one_line(e)}") from None


def _check_fit(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, source: str,
               loss_name: str, classes: int | None = None) -> None:
    """One forward pass and loss on two samples in eval mode, so that a mismatch of model and
    data is named with both shapes before any analysis starts (the analyses run in eval mode too);
    the output needs a column for each of the ``classes`` (default: the largest label of ``y`` + 1)."""
    import torch

    classes = int(y.max()) + 1 if classes is None else classes
    model.eval()
    with torch.no_grad():
        try:
            out = model(x[:2])
        except Exception as e:
            raise DataError(f"the model does not take the inputs of {source}: they have shape"
                            f" {tuple(x.shape[1:])} per sample (batch {tuple(x[:2].shape)}), and the forward pass"
                            f" failed: {_one_line(e)}") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(f"the model's output for a batch of 2 is {shape}; {loss_name} on {source} needs"
                            f" (batch, classes) with at least {classes} classes")
        try:
            loss = loss_fn(out, y[:2])
        except Exception as e:
            raise DataError(f"{loss_name} of the model's output {tuple(out.shape)} against the labels of {source}"
                            f" failed: {_one_line(e)}") from None
        if loss.dim() != 0:
            raise DataError(f"{loss_name} of the model's output {tuple(out.shape)} is not a single number")


def _float_dtype(model: nn.Module) -> torch.dtype:
    import torch

    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _names(keys: list[str], show: int = 4) -> str:
    more = f" and {len(keys) - show} more" if len(keys) > show else ""
    return f"key{'s' if len(keys) > 1 else ''} " + ", ".join(repr(k) for k in keys[:show]) + more


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one line: its type and message, cut to the first sentence when long."""
    text = " ".join(str(e).split()) or "(no message)"
    if len(text) > limit and ". " in text[:limit]:
        text = text[:text.index(". ") + 1]
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(e).__name__}: {text}"


# ------------------------------------------------------------------------------------------ analysis
def _analyse(target: Target, args: argparse.Namespace) -> int:
    import torch

    from trainlab import curvature, distributed

    rank, world = distributed.rank(), distributed.world_size()
    # under torchrun each rank holds a shard; the results are all-reduced
    data = _shard(target.data, rank, world)
    options = _analysis_options(args)
    if target.batch_loss is not None:
        options["batch_loss"] = target.batch_loss
    hvp_cap = {} if args.max_hvp is None else {"max_hvp": args.max_hvp}
    groups = _group_names(args)
    if args.layers:
        from trainlab.curvature.layerwise import layer_groups, layerwise

        layer_groups(target.model, groups)  # a name not in the model: one sentence before any analysis
    d = curvature.diagnose(target.model, target.loss_fn, data, k=args.k, **options, **hvp_cap)
    by_layer = None
    if args.layers:  # every rank joins each row's products
        by_layer = layerwise(target.model, target.loss_fn, data, groups, couplings=not args.no_couplings, **options,
                             **hvp_cap)
    if rank != 0:
        if args.density:
            curvature.density(target.model, target.loss_fn, data, **options, **hvp_cap)  # every rank joins
        return 0
    print(target.title + (f", {world} processes" if world > 1 else ""))
    print(d)
    text = str(d)
    for note in getattr(d, "notes", []):
        if note not in text:
            print(f"  note: {note}")
    values = d.eigenvalues
    show = min(5, len(values))
    print(f"  largest eigenvalues: {', '.join(f'{float(v):.4g}' for v in values[:show])}")
    print(f"  smallest eigenvalues: {', '.join(f'{float(v):.4g}' for v in values[-show:])}")
    if by_layer is not None:
        print(by_layer)
    out = args.out or target.figure
    if out is None and not args.density:
        return 0
    grid = density = None
    if args.density:
        spectrum = curvature.density(target.model, target.loss_fn, data, **options, **hvp_cap)
        grid, density = spectrum.grid.tolist(), torch.clamp(spectrum.density, min=1e-12).tolist()
    if out is None:
        return 0
    from trainlab.report import plots  # matplotlib: only when drawing

    title = f"{'all' if d.exact else 'extreme'} eigenvalues: {d.verdict.replace('_', ' ')}"
    path = plots.save(plots.spectrum_figure(values.tolist(), title, grid, density), out)
    print(f"wrote {path}")
    if by_layer is not None:
        out = Path(out)
        path = plots.save(plots.layerwise_figure(by_layer), out.with_name(f"{out.stem}_layers.png"))
        print(f"wrote {path}")
    return 0


def _shard(data: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s share of ``data`` (one batch or a list of them): every ``world``-th sample of
    each batch, starting at ``rank`` — each tensor sliced along its leading (sample) dimension."""
    if world == 1:
        return data
    if isinstance(data, list):
        return [_shard(batch, rank, world) for batch in data]
    if isinstance(data, dict):
        return {k: v[rank::world] for k, v in data.items()}
    x, y = data
    return x[rank::world], y[rank::world]
