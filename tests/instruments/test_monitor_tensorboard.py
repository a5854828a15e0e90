"""Monitor(tensorboard=DIR): readings as TensorBoard scalars, read back with TensorBoard's own reader."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.instruments import GradNorm, Monitor, UpdateRatio

from schedule import due
from tolerance import tol

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def train(monitor, model, opt, data, updates):
    x, y = data
    for step in range(updates):
        idx = torch.arange(step % 4 * 8, step % 4 * 8 + 8)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.after_step(model, loss.item(), F.cross_entropy, data, opt)


def problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.3), (torch.randn(32, 4), torch.randint(0, 3, (32,)))


def test_every_reading_is_a_scalar_at_its_update(tmp_path):
    model, opt, data = problem()
    monitor = Monitor(instruments=[GradNorm(every=3), UpdateRatio(every=2)], sample=16, tensorboard=tmp_path / "tb")
    train(monitor, model, opt, data, 12)
    monitor.close()
    got = scalars(tmp_path / "tb")
    for name in ("grad_norm", "update_ratio"):
        expected = [(r.step, r.value) for r in monitor.history if r.instrument == name]
        assert [s for s, _ in got[f"trainlab/{name}"]] == [s for s, _ in expected]
        # TensorBoard stores a scalar as float32: one rounding
        assert [v for _, v in got[f"trainlab/{name}"]] == pytest.approx([v for _, v in expected],
                                                                         rel=tol(torch.float32))


def test_a_resumed_monitor_hides_what_the_interrupted_run_wrote_after_its_state(tmp_path):
    model, opt, data = problem()
    first = Monitor(instruments=[GradNorm(every=2)], sample=16, tensorboard=tmp_path / "tb")
    train(first, model, opt, data, 6)
    state = first.state_dict()  # the "checkpoint" at update 6
    train(first, model, opt, data, 4)  # updates 7-10 are written, then the run dies
    first.close()
    resumed = Monitor(instruments=[GradNorm(every=2)], sample=16, tensorboard=tmp_path / "tb")
    resumed.load_state_dict(state)
    train(resumed, model, opt, data, 4)  # redoes updates 7-10 (other values: the model moved on)
    resumed.close()
    steps = [s for s, _ in scalars(tmp_path / "tb")["trainlab/grad_norm"]]
    assert steps == due(2, 10) == [1, 2, 4, 6, 8, 10]  # update 1: the baseline
    assert scalars(tmp_path / "tb")["trainlab/grad_norm"][-1][1] == pytest.approx(resumed.latest["grad_norm"].value,
                                                                                  rel=tol(torch.float32))


@pytest.mark.parametrize("bad", [True, "", 3])
def test_bad_tensorboard_argument(bad):
    with pytest.raises(ConfigError, match="tensorboard="):
        Monitor(tensorboard=bad)


def test_a_file_in_the_way_is_refused_at_construction(tmp_path):
    (tmp_path / "tb").write_text("mine")
    with pytest.raises(ConfigError, match="is a file"):
        Monitor(instruments=[GradNorm()], tensorboard=tmp_path / "tb")
    assert (tmp_path / "tb").read_text() == "mine"
