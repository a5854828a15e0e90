"""trainlab.curvature against its peers at scale: the top-5 Hessian eigenvalues of torchvision's
ResNet-18 and of a small GPT, float32, CPU — Hessian-vector products, seconds and peak memory,
same data, same run.

Models and data (fixed seeds; every method analyses the same ``eval()``-mode loss):

- ``resnet18``: ``torchvision.models.resnet18(num_classes=10)`` (11,181,642 parameters), BatchNorm
  on its (initial) running statistics, on 128 random 3×32×32 images; labels from a fixed teacher
  (a second ResNet-18, another seed): the argmax of its logits standardised over the batch, so
  the ten classes are about equally frequent.
- ``gpt``: a nanoGPT-style decoder written below (vocabulary 256, context 64, 4 layers, 4 heads,
  width 256: 3,307,264 parameters) on 32 random token sequences; the target of token ``t`` is
  ``(31 x_t + 7 x_{t-1} + 11) mod 256``, a fixed rule the model can learn; the loss is the mean
  cross-entropy over all tokens.

Methods, each in its own process, one at a time (so each peak is that method's alone):

- trainlab: ``tl.curvature.eigs(model, loss, (x, y), k=5, tol=1e-2)`` (a pair has converged when
  its residual ``‖Hx − λx‖ ≤ tol · max|λ|``; 1e-2 is its cheapest setting within 1e-3 of the
  reference on both models, as the peers' settings are theirs).
- PyHessian: ``hessian(model, loss, data=(x, y), cuda=False).eigenvalues(top_n=5, tol=1e-4)``
  (power iteration with deflation, at most ``maxIter=100`` products per eigenvalue, 20 with
  ``--quick``; its ``tol`` is the relative change between two iterates, so 1e-4 rather than the
  default 1e-3).
- curvlinops + SciPy: ``eigsh(HessianLinearOperator(...).to_scipy(), k=5, which="LA", tol=1e-3)``
  (ARPACK; ``to_scipy()``'s default float64 vectors, as curvlinops' own ``eigsh`` calls use;
  ``check_deterministic=False``, whose probe products would otherwise count).
- hessian-eigenthings: ``lanczos(HessianOperator(model, [(x, y)], supervised_loss(loss)), k=5,
  max_iter=STEPS, which="LA", reorthogonalize=True)`` — a fixed number of Lanczos steps, no
  convergence test, so ``STEPS`` is set per model, with the reference's help a user would not
  have, to the smallest multiple of 5 that reaches 1e-3 relative accuracy on these data: 20 for
  ResNet-18 (19 do), 30 for the GPT (27 do); ``--eigenthings-steps`` changes it.

Tolerances are chosen so that every method reaches about 1e-3 relative accuracy on the top-5;
the table prints each method's largest relative error against a reference: trainlab's Lanczos
on the float64 copy of the model at ``tol=1e-7`` (its residuals are printed), computed in its own
process once per model and size and cached under the temporary directory
(``--fresh-reference`` recomputes it). An error above 1e-3 is flagged.

Products are counted where each method makes them: ``Eigs.n_hvp`` for trainlab, calls of
``pyhessian.hessian.hessian_vector_product``, the columns through curvlinops' ``_matmat`` and
calls of hessian-eigenthings' ``HessianOperator.matvec``. Seconds are the wall time of the whole
call, operator construction included. Memory is the resident set (RSS) of the method's process:
"baseline" after imports, model and data are built, "peak" the highest RSS during the call
(the kernel's high-water mark, reset at the baseline through ``/proc/self/clear_refs``; where
that is not allowed, a thread sampling ``/proc/self/statm`` every 10 ms), "added" their
difference — what the analysis itself costs.

    python benchmarks/curvature_scale.py [--models resnet18,gpt] [--methods trainlab,pyhessian,curvlinops,eigenthings]
                                         [--quick] [--threads 2] [--fresh-reference]

Measured (2026-11-30, 2 cores, torch 2.13 CPU; peak GB / added GB / products / seconds):

    ResNet-18   trainlab 1.21 / 0.85 / 19 / 12.2    PyHessian 1.02 / 0.66 / 194 / 102.8 (1.7e-3: not reached)
                curvlinops 2.97 / 2.59 / 21 / 38.0  hessian-eigenthings 1.73 / 1.37 / 20 / 23.8
    GPT         trainlab 1.18 / 0.94 / 34 / 24.3    PyHessian 1.10 / 0.86 / 273 / 169.2 (3.6e-3: not reached)
                curvlinops 1.80 / 1.54 / 47 / 60.8  hessian-eigenthings 1.38 / 1.14 / 30 / 30.4

trainlab ÷ the leanest peer (PyHessian): peak 1.19× and 1.07×, added 1.30× and 1.09×. About 0.13 GB
of trainlab's ResNet-18 peak is glibc heap fragmentation (with ``MALLOC_MMAP_THRESHOLD_=131072``
its added memory is 0.68 GB); the allocator's habits weigh on every method alike.

``--quick`` shrinks everything for a smoke test of under a minute: torchvision's SqueezeNet 1.1
(727,626 parameters) on 4 images in place of ResNet-18, a 2-layer GPT of width 64 on 4 sequences
of 16 tokens. Peers and torchvision come from the ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

METHODS = ("trainlab", "pyhessian", "curvlinops", "eigenthings")
MODELS = ("resnet18", "gpt")
K = 5
ACCURACY = 1e-3
#: Per model: trainlab's and PyHessian's tol, eigsh's tol, hessian-eigenthings' Lanczos steps.
SETTINGS = {
    "resnet18": {"trainlab_tol": 1e-2, "pyhessian_tol": 1e-4, "pyhessian_max_iter": 100, "eigsh_tol": 1e-3,
                 "eigenthings_steps": 20},
    "gpt": {"trainlab_tol": 1e-2, "pyhessian_tol": 1e-4, "pyhessian_max_iter": 100, "eigsh_tol": 1e-3,
            "eigenthings_steps": 30},
}
#: --quick: PyHessian's power iterations capped, so the smoke test stays short.
QUICK_SETTINGS = {"pyhessian_max_iter": 20, "eigenthings_steps": 40}
GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- models and data
def import_torchvision():
    """torchvision, also where its wheel is a CUDA build beside a CPU-only torch: its compiled
    operators then fail to load and ``import torchvision`` stops at registering fake kernels for
    ``torchvision::nms`` / ``qnms``, which do not exist (pytorch/vision#8985, #9085). The models
    are plain Python and never call those operators, so their schemas are declared and the import
    retried. The Library object is returned to be kept alive."""
    import torch

    try:
        import torchvision
        return torchvision, None
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision, lib


def gpt_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width, heads, context):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.register_buffer("causal", torch.ones(context, context).tril().bool(), persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                       for t in self.qkv(self.ln1(x)).split(C, dim=2))
            # attention written out (not scaled_dot_product_attention): every method differentiates it twice
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
            att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        """nanoGPT in one screen: token and position embeddings, pre-norm blocks of causal
        self-attention and a 4× GELU MLP, a final LayerNorm and an (untied) linear head."""

        def __init__(self, vocab=256, context=64, layers=4, heads=4, width=256):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
            self.blocks = nn.Sequential(*(Block(width, heads, context) for _ in range(layers)))
            self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
            for name, p in self.named_parameters():  # nanoGPT's initialisation
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            return self.head(self.ln(self.blocks(x)))

    return GPT


def token_loss():
    """Mean cross-entropy over every token, as a loss module with ``reduction='mean'``
    (curvlinops reads that attribute); ``(B, T, V)`` logits, ``(B, T)`` targets."""
    import torch.nn.functional as F
    from torch import nn

    class TokenCrossEntropy(nn.Module):
        reduction = "mean"

        def forward(self, logits, targets):
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    return TokenCrossEntropy()


def build(model_name: str, quick: bool):
    """``(model, x, y, loss, description)``; the model in eval() mode, float32."""
    import torch
    from torch import nn

    if model_name == "resnet18":
        torchvision, lib = import_torchvision()
        # quick: SqueezeNet 1.1 (727,626 parameters) stands in for the 11M of ResNet-18
        net = torchvision.models.squeezenet1_1 if quick else torchvision.models.resnet18
        images, side = (4, 32) if quick else (128, 32)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = net(num_classes=10).eval()
            torch.manual_seed(1)
            teacher = net(num_classes=10).eval()
        x = torch.randn(images, 3, side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = teacher(x)
        y = ((logits - logits.mean(0)) / logits.std(0)).argmax(1)
        model._keep_alive = lib  # the torchvision schema fragment, if one was needed
        loss = nn.CrossEntropyLoss()
        what = (f"torchvision {torchvision.__version__} {'SqueezeNet 1.1 (quick)' if quick else 'ResNet-18'},"
                f" {images} random 3×{side}×{side} images")
    elif model_name == "gpt":
        vocab = 256
        sizes = dict(context=16, layers=2, heads=2, width=64) if quick else dict(context=64, layers=4, heads=4,
                                                                                width=256)
        sequences = 4 if quick else 32
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = gpt_class()(vocab=vocab, **sizes).eval()
        x = torch.randint(0, vocab, (sequences, sizes["context"]), generator=torch.Generator().manual_seed(0))
        before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        y = (31 * x + 7 * before + 11) % vocab
        loss = token_loss()
        what = (f"GPT (vocab {vocab}, context {sizes['context']}, {sizes['layers']} layers, {sizes['heads']} heads,"
                f" width {sizes['width']}), {sequences} random sequences")
    else:
        raise SystemExit(f"unknown model {model_name!r}; use one of: {', '.join(MODELS)}")
    n = sum(p.numel() for p in model.parameters())
    return model, x, y, loss, f"{what}, {n:,} parameters"


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakRSS:
    """The highest resident set from ``start()`` to ``stop()``: the kernel's high-water mark when
    it can be reset, else the maximum of a 10 ms sampling thread (which can miss a short spike)."""

    def start(self) -> None:
        gc.collect()
        try:  # hand freed heap back to the system, so the baseline is what is actually held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux ≥ 4.0)
            self.source = "VmHWM"
        except OSError:
            self.source = "sampled"
        self.baseline = rss_bytes()
        self.sampled, self._done = self.baseline, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.sampled = max(self.sampled, rss_bytes())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        self.sampled = max(self.sampled, rss_bytes())
        return max(hwm_bytes(), self.sampled) if self.source == "VmHWM" else self.sampled


# ---------------------------------------------------------------- the methods (run in a worker process)
class Counted:
    def __init__(self, fn, count=lambda *args, **kwargs: 1):
        self.fn, self.count, self.calls = fn, count, 0

    def __call__(self, *args, **kwargs):
        self.calls += self.count(*args, **kwargs)
        return self.fn(*args, **kwargs)


def run_trainlab(model, x, y, loss, s):
    import trainlab as tl

    r = tl.curvature.eigs(model, loss, (x, y), k=K, which="largest", tol=s["trainlab_tol"], progress=False)
    return [float(v) for v in r.values], r.n_hvp, {"converged": bool(r.converged.all())}


def run_pyhessian(model, x, y, loss, s):
    import warnings

    import torch

    module = importlib.import_module("pyhessian.hessian")  # the module, not the class it exports
    counted = Counted(module.hessian_vector_product)
    module.hessian_vector_product = counted
    torch.manual_seed(0)  # PyHessian draws its start vectors from the global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its backward(create_graph=True) warns about .grad cycles
        h = module.hessian(model, loss, data=(x, y), cuda=False)
        values, _ = h.eigenvalues(top_n=K, tol=s["pyhessian_tol"], maxIter=s["pyhessian_max_iter"])
    return [float(v) for v in values], counted.calls, {}


def run_curvlinops(model, x, y, loss, s):
    import numpy as np
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(model, loss, params, [(x, y)], check_deterministic=False)
    H._matmat = Counted(H._matmat, lambda M: M[0].shape[-1])  # one product per column
    n = sum(p.numel() for p in params)
    values = eigsh(H.to_scipy(), k=K, which="LA", tol=s["eigsh_tol"],
                   v0=np.random.default_rng(0).standard_normal(n), return_eigenvectors=False)
    return [float(v) for v in values], H._matmat.calls, {}


def run_eigenthings(model, x, y, loss, s):
    import hessian_eigenthings as he

    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
    op.matvec = Counted(op.matvec)
    r = he.lanczos(op, k=K, max_iter=s["eigenthings_steps"], which="LA", reorthogonalize=True, seed=0)
    return [float(v) for v in r.eigenvalues], op.matvec.calls, {}


def run_reference(model, x, y, loss, s):
    """trainlab's Lanczos on the float64 copy of the model, tol 1e-7, a basis of up to 100 vectors."""
    import torch

    from trainlab.curvature import HessianOperator, analysis_mode
    from trainlab.curvature.lanczos import lanczos

    model = model.double()
    x = x.double() if x.is_floating_point() else x
    with analysis_mode(model, "eval"):
        op = HessianOperator(model, loss, (x, y))
        r = lanczos(op.matvec, op.n, K, "largest", tol=1e-7, basis_size=min(100, op.n - 1), max_matvecs=2000,
                    dtype=torch.float64)
    return [float(v) for v in r.values], r.n_matvec, {"residual": float(r.residuals.max()),
                                                       "converged": bool(r.converged.all())}


IMPORTS = {"trainlab": ["trainlab"], "pyhessian": ["pyhessian.hessian"],
           "curvlinops": ["curvlinops", "scipy.sparse.linalg"], "eigenthings": ["hessian_eigenthings"],
           "reference": ["trainlab"]}
RUNNERS = {"trainlab": run_trainlab, "pyhessian": run_pyhessian, "curvlinops": run_curvlinops,
           "eigenthings": run_eigenthings, "reference": run_reference}


def worker(model_name: str, method: str, quick: bool, threads: int, settings: dict) -> dict:
    import torch

    torch.set_num_threads(threads)
    model, x, y, loss, what = build(model_name, quick)
    for module in IMPORTS[method]:  # a package's import counts in the baseline, not in the peak
        importlib.import_module(module)
    peak = PeakRSS()
    peak.start()
    t0 = time.perf_counter()
    values, hvps, extra = RUNNERS[method](model, x, y, loss, settings)
    seconds = time.perf_counter() - t0
    top = peak.stop()
    return {"values": sorted(values, reverse=True), "hvps": hvps, "seconds": seconds, "baseline": peak.baseline,
            "peak": top, "source": peak.source, "what": what, **extra}


# ---------------------------------------------------------------- the driver
def run_case(model_name: str, method: str, quick: bool, threads: int, settings: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
        {"model": model_name, "method": method, "quick": quick, "threads": threads, "settings": settings})]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference(model_name: str, quick: bool, threads: int, fresh: bool) -> dict:
    import torch

    folder = os.path.join(tempfile.gettempdir(), "trainlab_curvature_scale")
    path = os.path.join(folder, f"reference-{model_name}-{'quick' if quick else 'full'}-torch{torch.__version__}.json")
    if not fresh and os.path.exists(path):
        with open(path) as f:
            return {**json.load(f), "cached": path}
    r = run_case(model_name, "reference", quick, threads, {})
    if "error" in r:
        raise SystemExit(f"the reference for {model_name} failed: {r['error']}")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(r, f)
    return {**r, "cached": None}


def relative_error(values: list[float], ref: list[float]) -> float:
    return max(abs(v - r) / abs(r) for v, r in zip(sorted(values, reverse=True), sorted(ref, reverse=True)))


LABELS = {
    "trainlab": "trainlab eigs(k=5, tol={trainlab_tol:g})",
    "pyhessian": "PyHessian eigenvalues(top_n=5, tol={pyhessian_tol:g}, maxIter={pyhessian_max_iter})",
    "curvlinops": "curvlinops + scipy eigsh(k=5, tol={eigsh_tol:g})",
    "eigenthings": "hessian-eigenthings lanczos(k=5, max_iter={eigenthings_steps})",
}


def table(model_name: str, methods: list[str], args) -> None:
    settings = {**SETTINGS[model_name], **(QUICK_SETTINGS if args.quick else {})}
    if args.eigenthings_steps:
        settings["eigenthings_steps"] = args.eigenthings_steps
    for key in ("pyhessian_tol", "eigsh_tol", "trainlab_tol"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    ref = reference(model_name, args.quick, args.threads, args.fresh_reference)
    print(f"### {ref['what']}\n")
    print(f"reference top-{K} (trainlab Lanczos, float64, tol 1e-7): {', '.join(f'{v:.6g}' for v in ref['values'])};"
          f" max residual {ref['residual']:.1e}, {ref['hvps']} products, {ref['seconds']:.0f} s"
          + (f" (cached: {ref['cached']})" if ref.get("cached") else "") + "\n")
    print("| method | HVPs | seconds | peak GB | added GB (peak − baseline) | baseline GB | max rel. error |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for method in methods:
        r = run_case(model_name, method, args.quick, args.threads, settings)
        label = LABELS[method].format(**settings)
        if "error" in r:
            print(f"| {label} | failed: {r['error'][:150]} | | | | | |", flush=True)
            continue
        r["error"] = relative_error(r["values"], ref["values"])
        rows[method] = r
        flag = "" if r["error"] <= ACCURACY else " (not reached)"
        print(f"| {label} | {r['hvps']} | {r['seconds']:.1f} | {r['peak'] / GIB:.2f} |"
              f" {(r['peak'] - r['baseline']) / GIB:.2f} | {r['baseline'] / GIB:.2f} | {r['error']:.1e}{flag} |",
              flush=True)
    sources = {r["source"] for r in rows.values()}
    print(f"\npeak: {'/'.join(sorted(sources))}; {args.threads} threads; one process per method, run one after"
          " another; top-5 found:")
    for method, r in rows.items():
        print(f"- {method}: {', '.join(f'{v:.6g}' for v in r['values'])}")
    print()
    ours = rows.get("trainlab")
    peers = {m: r for m, r in rows.items() if m != "trainlab"}
    if ours and peers:
        accurate = {m: r for m, r in peers.items() if r["error"] <= ACCURACY} or peers
        lean_abs = min(peers, key=lambda m: peers[m]["peak"])
        lean_add = min(peers, key=lambda m: peers[m]["peak"] - peers[m]["baseline"])
        fewest = min(accurate, key=lambda m: accurate[m]["hvps"])
        fastest = min(accurate, key=lambda m: accurate[m]["seconds"])
        added = ours["peak"] - ours["baseline"]
        print(f"- memory, trainlab ÷ leanest peer: peak {ours['peak'] / peers[lean_abs]['peak']:.2f}× ({lean_abs}),"
              f" added {added / (peers[lean_add]['peak'] - peers[lean_add]['baseline']):.2f}× ({lean_add});"
              f" target ≤ 1.2×")
        which = "peers" if len(accurate) == len(peers) else "peers that reached 1e-3"
        print(f"- products, trainlab ÷ fewest of the {which}: {ours['hvps'] / accurate[fewest]['hvps']:.2f}×"
              f" ({fewest}); time, trainlab ÷ fastest: {ours['seconds'] / accurate[fastest]['seconds']:.2f}×"
              f" ({fastest})")
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of under a minute")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh-reference", action="store_true", help="recompute the cached float64 reference")
    p.add_argument("--eigenthings-steps", type=int, help="hessian-eigenthings' Lanczos steps (per model default)")
    p.add_argument("--pyhessian-tol", type=float)
    p.add_argument("--eigsh-tol", type=float)
    p.add_argument("--trainlab-tol", type=float)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        w = json.loads(args.worker)
        print(json.dumps(worker(w["model"], w["method"], w["quick"], w["threads"], w["settings"])))
        return 0
    models, methods = args.models.split(","), args.methods.split(",")
    for name in (m for m in methods if m not in METHODS):
        raise SystemExit(f"unknown method {name!r}; use some of: {', '.join(METHODS)}")
    for name in (m for m in models if m not in MODELS):
        raise SystemExit(f"unknown model {name!r}; use some of: {', '.join(MODELS)}")
    import torch

    import trainlab

    print(f"torch {torch.__version__}, CPU, float32, {args.threads} threads, top-{K} Hessian eigenvalues"
          f"{', quick sizes' if args.quick else ''}; trainlab from {os.path.dirname(trainlab.__file__)}\n")
    for model_name in models:
        table(model_name, methods, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
