"""Zoo cases with Hugging Face BERT and GPT-2 built from tiny configs (extra ``trainlab[hf]``).

Batches are dicts as a Hugging Face user feeds them — ``input_ids``, ``attention_mask`` with
padding (sequences of varied length, padded to a fixed width, the pads masked out) and ``labels``
(``-100`` on a causal LM's pads) — and the loss is the model's own, ``model(**batch).loss``.
``transformers`` is imported only when a case is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from trainlab.zoo.case import Case, Setup
from trainlab.zoo.text import generate

V, T = 50, 16  # BERT's vocabulary and width


class Dicts(Dataset):
    """A map-style dataset of dict samples from tensors of equal length."""

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def hf_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's own loss, ``model(**batch).loss``."""
    return model(**batch).loss


def _padded(n: int, seed: int, low: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random lengths in ``[low, width]`` as an attention mask of ones then zeros."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, width + 1, (n,), generator=g)
    return (torch.arange(width) < lengths[:, None]).long(), g


def bert_data(n: int, seed: int) -> Dicts:
    """Label 1 iff token 7 occurs among a sequence's unpadded tokens (pads are token 0)."""
    mask, g = _padded(n, seed, 8, T)
    ids = torch.randint(1, V, (n, T), generator=g) * mask
    return Dicts(input_ids=ids, attention_mask=mask, labels=((ids == 7).sum(1) > 0).long())


def gpt2_data(n: int, seed: int, width: int = 32) -> tuple[Dicts, int]:
    """Windows of generated text as token ids, padded (id 0, label −100) after a random length."""
    text = generate(n * width + 1, seed=seed)
    stoi = {c: i + 1 for i, c in enumerate(sorted(set(generate(20_000))))}
    ids = torch.tensor([stoi.get(c, 1) for c in text[:n * width]]).view(n, width)
    mask, _ = _padded(n, seed, width // 2, width)
    ids = ids * mask
    return Dicts(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)), len(stoi) + 1


def _bert(size: str, seed: int, lr: float) -> Setup:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=T, num_labels=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    updates = 300 if size == "full" else 100
    return Setup(model, opt, None, bert_data(2000, 0), bert_data(512, 1), updates, 32, batch_loss=hf_loss)


def _gpt2(size: str, seed: int, lr: float) -> Setup:
    from transformers import GPT2Config, GPT2LMHeadModel

    train, vocab = gpt2_data(1500, 0)
    test, _ = gpt2_data(256, 1)
    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                     eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    updates = 300 if size == "full" else 100
    return Setup(model, opt, None, train, test, updates, 32, batch_loss=hf_loss)


def bert_crawl(size: str, seed: int) -> Setup:
    """Tiny BERT, AdamW at η = 1e-6: Adam's steps are ~η per coordinate, far too short to move."""
    return _bert(size, seed, 1e-6)


def bert_healthy(size: str, seed: int) -> Setup:
    return _bert(size, seed, 1e-3)


def gpt2_crawl(size: str, seed: int) -> Setup:
    """Tiny GPT-2 on generated text, AdamW at η = 1e-6: a crawl."""
    return _gpt2(size, seed, 1e-6)


def gpt2_healthy(size: str, seed: int) -> Setup:
    return _gpt2(size, seed, 1e-3)


CASES = [
    Case("bert_crawl", "step_too_small", "hf_bert", bert_crawl, control="bert_healthy", onset=0,
         why="HF BERT (tiny config, padded batches), AdamW η=1e-6: steps far too short"),
    Case("gpt2_crawl", "step_too_small", "hf_gpt2", gpt2_crawl, control="gpt2_healthy", onset=0,
         why="HF GPT-2 (tiny config, padded batches), AdamW η=1e-6: steps far too short"),
    Case("bert_healthy", None, "hf_bert", bert_healthy, why="HF BERT, AdamW η=1e-3"),
    Case("gpt2_healthy", None, "hf_gpt2", gpt2_healthy, why="HF GPT-2, AdamW η=1e-3"),
]
