"""Digests the tests compare before and after an operation that must change nothing."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

import numpy as np
import torch
from torch import nn


def model_digest(model: nn.Module, parameters: bool = True) -> str:
    """One hash of everything an analysis could change: each parameter (dtype, shape, bits; left out
    with ``parameters=False``), its ``requires_grad`` and ``.grad``, every buffer, any other
    ``state_dict`` entry, each module's ``training`` flag, and the torch, NumPy and Python random states."""
    h = hashlib.sha256()

    def add(label, value):
        h.update(label.encode())
        if isinstance(value, torch.Tensor):
            h.update(str((value.dtype, tuple(value.shape), value.requires_grad)).encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())

    seen = set()
    for name, p in model.named_parameters():
        seen.add(id(p))
        add(f"param {name}", p if parameters else None)
        add(f"requires_grad {name}", p.requires_grad)
        add(f"grad {name}", "none" if p.grad is None else p.grad)
    for name, b in model.named_buffers():
        seen.add(id(b))
        add(f"buffer {name}", b)
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in seen:  # a module's extra state
            add(f"state {name}", value)
    for name, m in model.named_modules():
        add(f"training {name}", m.training)
    add("torch rng", torch.get_rng_state())
    add("numpy rng", repr(np.random.get_state()))
    add("random rng", repr(random.getstate()))
    return h.hexdigest()


def tree_digest(root: str | Path) -> dict[str, str] | None:
    """``{path relative to root: sha256 | "dir" | "-> target" | "<unreadable errno>"}`` of ``root``
    (as ``"."``) and everything under it, hidden files too; links are recorded, not followed.
    ``None`` when ``root`` does not exist."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return None
    items = [root] + sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [root]
    found: dict[str, str] = {}
    for p in items:
        key = str(p.relative_to(root))
        if p.is_symlink():
            found[key] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            found[key] = "dir"
        else:
            try:
                mode = p.lstat().st_mode  # a named pipe, socket or device is not read: that could block forever
                found[key] = (hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(mode)
                              else f"<special {stat.S_IFMT(mode):o}>")
            except OSError as e:  # unreadable to us: still its presence counts
                found[key] = f"<unreadable {e.errno}>"
    return found
