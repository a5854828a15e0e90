"""Zoo cases with a character-level ``nn.TransformerEncoder`` language model on generated text.

The model is the one a user writes from the PyTorch docs: token and position embeddings, a post-LN
``nn.TransformerEncoder`` (``norm_first=False``, the 2017 layout) under a causal mask, a linear head;
trained with Adam on ``(x, y)`` windows of :func:`trainlab.zoo.text.generate`'s text, ``y`` the next
characters. Post-LN Transformers need a learning-rate warm-up: without one Adam's first steps, of
size ~η in every coordinate whatever the gradient, wreck the attention and the model falls back on
the characters' frequencies (Xiong et al. 2020, "On layer normalization in the Transformer
architecture"; Liu et al. 2020, "On the variance of the adaptive learning rate and beyond").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.zoo.case import Case, Setup
from trainlab.zoo.text import generate, unigram_entropy

#: (model width, layers, context, updates) at each size.
SIZES = {"full": (32, 4, 32, 400), "small": (32, 4, 32, 150)}


class CharLM(nn.Module):
    """Embeddings → post-LN ``nn.TransformerEncoder`` (causal) → linear head over the characters."""

    def __init__(self, vocab: int, d: int, layers: int, ctx: int, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=False)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        return self.head(self.enc(h, mask=self.mask[:t, :t], is_causal=True))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy over every position."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def char_data(ctx: int, chars: int = 120_000) -> tuple[TensorDataset, TensorDataset, int, float]:
    """Windows of ``ctx`` characters and their next characters (a tenth held out), the vocabulary
    size and the text's unigram entropy."""
    text = generate(chars)
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([stoi[c] for c in text])
    n = (len(ids) - 1) // ctx
    x, y = ids[:n * ctx].view(n, ctx), ids[1:n * ctx + 1].view(n, ctx)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    held = n // 10
    return TensorDataset(x[held:], y[held:]), TensorDataset(x[:held], y[:held]), len(stoi), unigram_entropy(text)


def _lm(size: str, seed: int, lr: float, warmup: int) -> Setup:
    d, layers, ctx, updates = SIZES[size]
    train, test, vocab, entropy = char_data(ctx)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CharLM(vocab, d, layers, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)) if warmup else None
    return Setup(model, opt, sched, train, test, updates, 32, loss_fn=lm_loss, info={"unigram_entropy": entropy})


def lm_no_warmup(size: str, seed: int) -> Setup:
    """Adam at η = 3e-2 from the first update on a post-LN Transformer: stuck at the unigram entropy."""
    return _lm(size, seed, 3e-2, 0)


def lm_warmup(size: str, seed: int) -> Setup:
    """Adam at η = 1e-3 after a linear warm-up over 100 updates: learns words."""
    return _lm(size, seed, 1e-3, 100)


CASES = [
    Case("lm_no_warmup", "needs_warmup", "transformer_lm", lm_no_warmup, control="lm_warmup", onset=5,
         why="post-LN Transformer, Adam η=3e-2 without warm-up: falls to the unigram loss (Xiong et al. 2020)"),
    Case("lm_warmup", None, "transformer_lm", lm_warmup, why="post-LN Transformer, Adam η=1e-3, 100 updates of warm-up"),
]
