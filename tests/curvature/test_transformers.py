"""Transformers without user action (issue 22, item 4): a post-LN ``nn.TransformerEncoder``
character LM with a causal mask and a tiny Hugging Face BERT on padded batches with an
``attention_mask`` go through the analyses (``eigs``, ``diagnose``, ``density``, ``trace``,
``layerwise``), a full Monitor and the stall doctor. PyTorch's fused attention kernels have no
double backward; the analyses run attention on the math kernel themselves and say so once.

References: the dense float64 Hessian of a block of attention weights by ``torch.func.hessian``
through ``functional_call``, under ``sdpa_kernel(SDPBackend.MATH)`` — independent of trainlab's
Hessian-vector products and Lanczos.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian
from torch.nn.attention import SDPBackend, sdpa_kernel

import trainlab as tl
from trainlab.curvature.operator import MATH_ATTENTION_NOTE
from trainlab.instruments import Monitor
from trainlab.train.doctor import StallDoctor

from digests import model_digest
from tolerance import tol

TEXT = "the cat sat on the mat and the dog sat on the log "
CHARS = sorted(set(TEXT))
LENGTH = 8  # characters per sequence


class CharLM(nn.Module):
    """A post-LN Transformer encoder (2 layers, d_model 16, 2 heads, causal) predicting the next character."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)  # norm_first=False: post-LN
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=self.position.dtype)
        return self.head(self.encoder(self.embed(x) + self.position[: x.shape[1]], mask=mask, is_causal=True))


def char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy over every position."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def char_data(sequences: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequences`` windows of ``LENGTH`` characters of TEXT and the characters one further (32 tokens)."""
    ids = torch.tensor([CHARS.index(c) for c in TEXT])
    starts = range(0, sequences * 5, 5)
    return torch.stack([ids[s:s + LENGTH] for s in starts]), torch.stack([ids[s + 1:s + LENGTH + 1] for s in starts])


def char_lm() -> CharLM:
    torch.manual_seed(0)
    return CharLM(len(CHARS)).double()


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=3, attn_implementation="sdpa")
    return transformers.BertForSequenceClassification(config).double()


def bert_batch() -> dict[str, torch.Tensor]:
    """Six sequences of 3 to 8 tokens, padded to 8 with an attention mask, and their labels."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([8, 5, 3, 7, 4, 6])
    ids = torch.randint(1, 30, (6, 8), generator=gen)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 3, (6,), generator=gen)}


def bert_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss, on whatever attention kernel PyTorch picks (the user sets none)."""
    return model(**batch).loss


def dense_block_hessian(model: nn.Module, name: str, loss_of) -> torch.Tensor:
    """The float64 Hessian of ``loss_of(outputs-call)`` in the parameter ``name`` alone, the others
    fixed: torch.func.hessian through functional_call, attention on the math kernel, eval mode."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    shape = params[name].shape

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return loss_of(lambda *args, **kwargs: functional_call(model, {**params, name: flat.view(shape)}, args, kwargs))

    training = model.training
    model.eval()
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            return hessian(loss)(params[name].reshape(-1).clone())
    finally:
        model.train(training)


def check_eigenvalues(model, loss_fn, data, name, reference_loss, batch_loss=None):
    """eigs (both ends) and diagnose (the exact path) on one attention weight equal the dense
    reference's extremes and spectrum, and each result says once that attention ran on the math kernel."""
    H = dense_block_hessian(model, name, reference_loss)
    exact = torch.linalg.eigvalsh(H)
    scale = exact.abs().max().item()
    options = dict(batch_loss=batch_loss, params=[name], progress=False)
    found = tl.curvature.eigs(model, loss_fn, data, k=2, which="both", tol=1e-10, **options)
    assert found.converged.all() and found.notes.count(MATH_ATTENTION_NOTE) == 1
    # Lanczos stops at a residual ≤ 1e-10·|λ|max; its Ritz values then sit within that residual of eigenvalues
    expected = torch.cat([exact.flip(0)[:2], exact[:2].flip(0)])
    assert found.values.tolist() == pytest.approx(expected.tolist(), abs=1e-8 * scale)
    d = tl.curvature.diagnose(model, loss_fn, data, **options)
    assert d.method == "dense" and d.notes.count(MATH_ATTENTION_NOTE) == 1
    assert d.eigenvalues.tolist() == pytest.approx(exact.flip(0).tolist(), abs=tol(torch.float64, H.numel()) * scale)


@pytest.mark.slow  # torch.func's first hessian warms up for seconds
def test_a_transformer_encoder_lm_s_spectrum_equals_the_dense_hessian():
    model, (x, y) = char_lm(), char_data()
    before = model_digest(model)
    name = "encoder.layers.0.self_attn.out_proj.weight"  # 256 weights between attention and the residual
    check_eigenvalues(model, char_loss, (x, y), name, lambda call: char_loss(call(x), y))
    assert model_digest(model) == before


@pytest.mark.slow
def test_a_bert_on_padded_batches_spectrum_equals_the_dense_hessian():
    model, batch = tiny_bert(), bert_batch()
    before = model_digest(model)
    name = "bert.encoder.layer.0.attention.self.query.weight"  # 256 weights inside the masked softmax
    check_eigenvalues(model, None, [batch], name, lambda call: call(**batch).loss, batch_loss=bert_loss)
    assert model_digest(model) == before


def test_density_trace_and_layerwise_say_once_that_attention_ran_on_the_math_kernel():
    model, data = char_lm(), char_data()
    for keep in (2**31, 1):  # the graph kept, and streamed (every product runs the model again)
        density = tl.curvature.density(model, char_loss, data, probes=2, steps=6, progress=False, max_graph_bytes=keep)
        trace = tl.curvature.trace(model, char_loss, data, samples=6, progress=False, max_graph_bytes=keep)
        assert density.notes.count(MATH_ATTENTION_NOTE) == 1 and trace.notes.count(MATH_ATTENTION_NOTE) == 1
    groups = {"attention": ["encoder.layers.0.self_attn.out_proj.weight"], "head": ["head.weight"]}
    rows = tl.curvature.layerwise(model, char_loss, data, groups=groups, couplings=False, progress=False)
    assert rows.notes.count(MATH_ATTENTION_NOTE) == 1 and all("error" not in str(r.notes) for r in rows.rows)
    # a model without attention says nothing of it
    plain = nn.Sequential(nn.Embedding(len(CHARS), 4), nn.Linear(4, len(CHARS))).double()
    assert MATH_ATTENTION_NOTE not in tl.curvature.trace(plain, char_loss, data, samples=3, progress=False).notes


def test_a_full_monitor_and_the_doctor_watch_both_models_without_an_error():
    """Every instrument of the full preset reads both models at their first updates (functional
    ReLU and GELU for units, masks for the per-sample gradients), and the doctor, on a crawl with
    full batches, diagnoses them: nothing raises, no reading fails."""
    lm, (x, y) = char_lm(), char_data()
    bert, batch = tiny_bert(), bert_batch()
    cases = [(lm, char_loss, (x, y), None, lambda m: char_loss(m(x), y), len(x)),
             (bert, None, [batch], bert_loss, lambda m: bert_loss(m, batch), len(batch["labels"]))]
    for model, loss_fn, data, batch_loss, loss_of, batch_size in cases:
        opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # a crawl: the doctor has something to look at
        monitor = Monitor(every=1, sample=8, instruments="full", batch_loss=batch_loss, progress=False)
        doctor = StallDoctor(full_batch_window=2, max_samples=8, batch_loss=batch_loss, k=1)
        monitor.start(model, 0)
        readings, events = [], []
        for _ in range(4):
            model.train()
            loss = loss_of(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            readings += monitor.after_step(model, loss.item(), loss_fn, data, opt, batch_size=batch_size)
            events += [e for e in [doctor.after_step(model, loss.item(), loss_fn, data, opt, full_batch=True)] if e]
        first = {r.instrument for r in readings if r.step == 1}
        assert first == {inst.name for inst in monitor.instruments}  # the baseline: every instrument at update 1
        assert all("error" not in r.extra and not math.isnan(r.value) for r in readings), \
            [(r.instrument, r.extra.get("error")) for r in readings if "error" in r.extra or math.isnan(r.value)]
        units = next(r for r in readings if r.instrument == "units")
        assert units.extra["parts"], "units found no activation"  # F.relu in the encoder layers, GELU in BERT
        assert events and all(e.get("event") != "callback_error" for e in events)
