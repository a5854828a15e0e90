"""The loss-spike rule the Monitor and the stall doctor share, and the Monitor's reading at a spike."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.instruments import Monitor, Sharpness, Stability, UpdateRatio
from trainlab.instruments.spike import SPAN, jumped, within

CALM = [1.0, 1.1, 0.9, 1.05, 0.95] * 2  # 10 losses: high 1.1, low 0.9, median 1.0


@pytest.mark.parametrize("recent, loss, spike", [
    (CALM, 1.1, False),                       # at the top of the range
    (CALM, 1.1 + max(2 * 0.2, 0.5) - 1e-9, False),  # just below high + max(2·width, ½·median)
    (CALM, 1.1 + max(2 * 0.2, 0.5) + 1e-9, True),   # just above
    (CALM, math.nan, True),                   # not finite
    (CALM, math.inf, True),
    (CALM[:9], 100.0, False),                 # fewer than SPAN // 2 recent losses: no judgement
    (CALM[:3], math.nan, True),               # ... but a non-finite loss is a spike after any finite one
    ([math.nan] * 10, 100.0, False),          # nothing finite to compare with
    ([], math.inf, False),
    ([5.0] * 5 + CALM * 2, 1.7, True),        # only the last SPAN losses count (the 5.0s are older)
])
def test_jumped(recent, loss, spike):
    assert SPAN == 20
    assert jumped(recent, loss) is spike


def _rule(recent, loss):
    """The module docstring's rule, written out without the shortcut for a loss within the range."""
    finite = sorted(v for v in list(recent)[-SPAN:] if math.isfinite(v))
    if not finite:
        return False
    if not math.isfinite(loss):
        return True
    if len(recent) < SPAN // 2:
        return False
    high, low, middle = finite[-1], finite[0], finite[len(finite) // 2]
    return loss > high + max(2 * (high - low), 0.5 * abs(middle))


values = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))


@given(st.lists(values, max_size=25), values)
@settings(max_examples=400, deadline=None)
def test_the_shortcut_agrees_with_the_rule(recent, loss):
    """``max`` over losses with NaN or infinities in any place never lets a spike through."""
    assert jumped(recent, loss) is _rule(recent, loss)


@given(st.lists(values, max_size=SPAN), values)
@settings(max_examples=400, deadline=None)
def test_what_the_shortcut_tells_is_never_a_spike(recent, loss):
    """Each of within's three steps (the last loss, the top, the top plus twice the range) only
    ever clears a loss the rule clears."""
    if within(recent, loss):
        assert not _rule(recent, loss)


@pytest.mark.parametrize("recent, loss, told", [
    (CALM, 0.95, True),                # at most the last loss (0.95)
    (CALM, 1.08, True),                # above the last, at most the top (1.1)
    (CALM, 1.1 + 2 * 0.2, True),       # above the top, within twice the range above it
    (CALM, 1.1 + 2 * 0.2 + 1e-9, False),  # beyond: the rule's median decides (no spike here: 1.6 is the threshold)
    (CALM + [math.nan], 0.5, True),    # a NaN last: no last loss to compare with, but max passes over it
    ([math.nan] + CALM, 1.05, False),  # a NaN first stops max: not told (the rule decides)
    ([math.nan] + CALM, 0.9, True),    # ... unless the last loss (0.95) tells
    ([-math.inf] + CALM, 1.3, False),  # an infinite low: no range to add
    (CALM, -math.inf, False),          # a non-finite loss is never told
])
def test_the_shortcut_s_steps(recent, loss, told):
    assert within(recent, loss) is told


def test_the_monitor_reads_curvature_at_a_spike():
    """Sharpness and stability, due every 1,000 updates, are read at update 1 and again at the
    update whose loss jumped; an instrument without ``on_spike`` (update_ratio) is not."""
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    model = tl.nn.mlp(8, [8], 3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = Monitor(instruments=[Sharpness(every=1000), Stability(every=1000), UpdateRatio(every=1000)],
                      sample=64, progress=False)
    read = {}
    for step in range(1, 41):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reported = loss.item() * (50.0 if step == 30 else 1.0)  # the loop reports a jump at update 30
        for r in monitor.after_step(model, reported, F.cross_entropy, (x, y), opt):
            read.setdefault(r.instrument, []).append(r.step)
    assert read == {"sharpness": [1, 30], "stability": [1, 30]}  # update_ratio: not at the spike (nor at 1,
    # where a plain loop has not kept the parameters before the update)
    state = monitor.state_dict()
    assert len(state["recent"]) == SPAN and state["recent"][-11] == pytest.approx(50 * state["recent"][-12], rel=0.1)
    again = Monitor(instruments=[Sharpness(every=1000), Stability(every=1000), UpdateRatio(every=1000)], sample=64,
                    progress=False)
    again.load_state_dict(state)
    assert list(again._recent) == state["recent"]
    with pytest.raises(TypeError, match="recent"):
        again.load_state_dict({**state, "recent": ["a"]})


@given(st.lists(st.one_of(st.floats(0, 3), st.sampled_from([math.nan, math.inf, 50.0, 2, -1.0])), min_size=30,
                max_size=60))
@settings(max_examples=40, deadline=None)
def test_the_monitor_s_quick_path_takes_updates_as_its_general_way_does(losses):
    """Every update through Monitor.counted, or never: the same readings, counts and recent losses."""
    def readings(quick):
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, 0.1)
        monitor = Monitor(every=4, progress=False, instruments=[UpdateRatio(every=5), Stability(every=1000)])
        if not quick:
            monitor.counted = lambda *args: False
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = (torch.ones(4, 3), torch.tensor([0, 1, 0, 1]))
        out = []
        for loss in losses:
            out += [(r.step, r.instrument) for r in monitor.after_step(model, loss, F.cross_entropy, data, opt)]
        return out, monitor.step, [v if math.isfinite(v) else str(v) for v in monitor._recent]

    assert readings(True) == readings(False)
