"""The stall doctor on dict batches through ``batch_loss``: the same events, readings and
treatment as on the same data given as (x, y) pairs with ``loss_fn``."""

import pytest
import torch

from trainlab.errors import ConfigError
from trainlab.train.doctor import StallDoctor, bounded_sample

from toys import linear_saddle, squared_error


def dict_loss(model, batch):
    return squared_error(model(batch["x"]), batch["y"])


def run(as_dicts, full_batch, steps=40, offset=0.0, **doctor_args):
    """SGD on the zero-weight linear network (a saddle: stuck until treated), in batches of 16
    (or the whole set), the data given as pairs or as dicts; returns (events, final parameters).
    ``offset``: the second layer's weights, off the saddle, so the gradient is not zero."""
    model, x, y = linear_saddle(n=64)
    with torch.no_grad():
        model[1].weight.fill_(offset)
    for i in range(0, 64, 16):  # every batch the same loss at the saddle, so its mini-batch losses are flat
        y[i:i + 16] /= y[i:i + 16].pow(2).mean().sqrt()
    pairs = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    data = [{"x": bx, "y": by, "note": "kept whole"} for bx, by in pairs] if as_dicts else pairs
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doctor = StallDoctor(window=10, full_batch_window=5, max_samples=48,
                         batch_loss=dict_loss if as_dicts else None, **doctor_args)
    loss_fn = None if as_dicts else squared_error
    events = []
    for step in range(steps):
        bx, by = (x, y) if full_batch else pairs[step % 4]
        loss = squared_error(model(bx), by)
        opt.zero_grad()
        loss.backward()
        opt.step()
        event = doctor.after_step(model, loss.item(), loss_fn, data, opt, full_batch=full_batch,
                                  batch_size=64 if full_batch else 16)
        if event is not None:
            events.append(event)
    return events, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("full_batch", [True, False])
def test_dict_batches_get_the_same_diagnosis_and_treatment(full_batch):
    (pair_events, pair_params), (dict_events, dict_params) = run(False, full_batch), run(True, full_batch)
    assert pair_events and pair_events[0]["verdict"] == "saddle" and pair_events[0]["action"] == "escape"
    assert len(dict_events) == len(pair_events)
    for a, b in zip(pair_events, dict_events):
        for key in ("verdict", "reading", "action", "applied", "samples", "full_batch"):
            assert a[key] == b[key], key
        for key in ("loss", "grad_norm", "lambda_max", "lambda_min", "loss_after"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key
        assert a["readings"].keys() == b["readings"].keys()
        for name in a["readings"]:
            assert a["readings"][name]["source"] == b["readings"][name]["source"]
            assert a["readings"][name]["value"] == pytest.approx(b["readings"][name]["value"], rel=1e-12), name
    assert a["samples"] == 48  # max_samples of the 64, from the first batches
    for p, q in zip(pair_params, dict_params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


def test_the_doctor_s_own_noise_reading_goes_through_batch_loss():
    """A mini-batch stall near the saddle whose noise reading the doctor measures itself (no
    Monitor): on dicts it reads what it reads on pairs."""
    pair_events, _ = run(False, False, steps=30, offset=1e-3)
    dict_events, _ = run(True, False, steps=30, offset=1e-3)
    noise = [e["readings"]["noise_scale"] for e in (pair_events[0], dict_events[0])]
    assert noise[0]["source"] == noise[1]["source"] == "doctor" and 0 < noise[0]["value"] < float("inf")
    assert noise[0]["value"] == pytest.approx(noise[1]["value"], rel=1e-12)


def test_bounded_sample_joins_dict_batches_key_by_key():
    batches = [{"x": torch.arange(3), "y": torch.arange(3) * 2}, {"x": torch.arange(3, 6), "y": torch.arange(3, 6) * 2}]
    sample = bounded_sample(batches, 4, dict_loss)
    assert sample["x"].tolist() == [0, 1, 2, 3] and sample["y"].tolist() == [0, 2, 4, 6]


def test_bad_batch_loss_and_a_missing_loss_are_one_sentence():
    with pytest.raises(ConfigError, match=r"^StallDoctor: batch_loss=3 is not allowed; expected a function"):
        StallDoctor(batch_loss=3)
    model, x, y = linear_saddle()
    with pytest.raises(ConfigError, match="loss_fn is None; pass the loss function .* or build the StallDoctor with"
                                          " batch_loss"):
        StallDoctor().after_step(model, 1.0, None, (x, y))
