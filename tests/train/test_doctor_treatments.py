"""The doctor's treatments kept and undone (issue 22): gradient clipping on an exploding RNN, a
spike's roll-back undone bit for bit when it harms, advice-only causes, and its state on resume."""

import io
import math

import pytest
import torch
from torch import nn

import trainlab as tl
from trainlab.train.doctor import StallDoctor
from trainlab.zoo import case
from trainlab.zoo.language import CharLM, char_data, lm_loss


# ---------------------------------------------------------------- a controllable patient
class Bowl(nn.Module):
    """``L(w) = ½‖w‖² + 1``: the loss is the model's output, so a test sets it at will."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))

    def forward(self, x):
        return 0.5 * (self.w ** 2).sum() + 1.0


def bowl_loss(out, _):
    return out


BATCH = (torch.zeros(1), torch.zeros(1))


def _copies(model, opt):
    """Bit-exact copies of the parameters, the optimizer's state and η."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()} for k, s in
             opt.state_dict()["state"].items()},
            [g["lr"] for g in opt.param_groups])


def _same(model, opt, copies):
    params, state, lrs = copies
    assert all(torch.equal(model.state_dict()[k], v) for k, v in params.items())
    now = opt.state_dict()["state"]
    assert now.keys() == state.keys()
    for k, s in state.items():
        for n, t in s.items():
            assert torch.equal(now[k][n], t) if torch.is_tensor(t) else now[k][n] == t
    assert [g["lr"] for g in opt.param_groups] == lrs


def _bowl_run(updates, doctor, *, grad=None, jolt=None, ruin=None):
    """SGD with momentum on the bowl; ``grad(step)`` the gradient norm told to the doctor,
    ``jolt(step, w)`` changes ``w`` before the update's doctor call (a spike's damage), ``ruin``
    (a shift) spoils the run during a treatment's trial. Returns the model, optimizer, events and
    the copies taken before the call that treated; an undone trial ends the run at once."""
    torch.manual_seed(0)
    model = Bowl()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    events, before_treatment = [], None
    for step in range(1, updates + 1):
        opt.zero_grad()
        loss = model(None)
        loss.backward()
        opt.step()
        if jolt is not None:
            with torch.no_grad():
                jolt(step, model.w)
        if ruin is not None and events and events[-1].get("applied") and events[-1]["event"] != "trial":
            with torch.no_grad():
                model.w.add_(ruin)
        copies = _copies(model, opt)
        e = doctor.after_step(model, loss.item(), bowl_loss, BATCH, opt,
                              grad_norm=None if grad is None else grad(step))
        if e is not None:
            events.append(e)
            if e.get("applied") and e["event"] != "trial":
                before_treatment = copies
            if e["event"] == "trial":  # the state the undo put back, before any later update
                break
    return model, opt, events, before_treatment


def test_a_rollback_that_harms_is_undone_bit_for_bit():
    """A spike at update 60 leaves the net worse; the doctor rolls back to update 50 with η ÷ 2. The
    run is then spoilt during the trial: the roll-back is undone — parameters, momentum buffers and
    η exactly as they were before it."""
    doctor = StallDoctor(window=100, trial=5)
    jolt = lambda step, w: w.add_(3.0) if step == 60 else None  # noqa: E731
    model, opt, events, before = _bowl_run(80, doctor, jolt=jolt, ruin=50.0)
    spike = next(e for e in events if e["event"] == "spike")
    assert spike["cause"] == "spike_damage" and spike["evidence"]["good_update"] == 50
    assert spike["lr_after"] == spike["lr_before"] / 2 and spike["kept"] is False
    trial = next(e for e in events if e["event"] == "trial")
    assert trial["action"] == "undone" and trial["loss_after"] > trial["loss_before"]
    _same(model, opt, before)


def test_a_rollback_that_helps_is_kept():
    doctor = StallDoctor(window=100, trial=5)
    jolt = lambda step, w: w.add_(3.0) if step == 60 else None  # noqa: E731
    _, opt, events, _ = _bowl_run(80, doctor, jolt=jolt)
    spike = next(e for e in events if e["event"] == "spike")
    assert spike["kept"] is True and opt.param_groups[0]["lr"] == 5e-4
    assert not [e for e in events if e["event"] == "trial"]


def _exploding(step):
    return 1e4 if step == 62 else 1.0 + 0.01 * (step % 3)  # a burst while the loss is in its range


def test_an_exploding_gradient_is_clipped_and_the_undo_removes_the_hook():
    """‖g‖ 10⁴× its recent median with the loss still in range: exploding_gradient, judged at
    once — roll back and a clipping hook; kept when no worse, and undone (hook removed, state back
    bit for bit) when the trial ends worse."""
    jolt = lambda step, w: w.add_(3.0) if step == 62 else None  # noqa: E731
    doctor = StallDoctor(window=100, trial=5)
    model, opt, events, _ = _bowl_run(75, doctor, grad=_exploding, jolt=jolt)
    e = events[0]
    assert e["event"] == "spike" and e["cause"] == "exploding_gradient" and e["evidence"]["spike_update"] == 62
    assert e["evidence"]["grad_ratio"] > 1e3 and e["kept"] is True and "clip" in e["action"]
    assert e["rolled_back_to"] == 50 and e["clip_norm"] == 2 * e["evidence"]["grad_spike"] / e["evidence"]["grad_ratio"]
    assert len(opt._optimizer_step_pre_hooks) == 1

    doctor = StallDoctor(window=100, trial=5)
    model, opt, events, before = _bowl_run(75, doctor, grad=_exploding, jolt=jolt, ruin=50.0)
    assert events[0]["cause"] == "exploding_gradient" and events[0]["kept"] is False
    assert events[1]["event"] == "trial" and events[1]["action"] == "undone"
    assert len(opt._optimizer_step_pre_hooks) == 0
    _same(model, opt, before)


def test_an_exploding_rnn_is_named_clipped_and_no_worse():
    """A ReLU RNN over 32 steps, recurrent spectral radius 1.5, SGD without clipping: ‖g‖ ~2 then
    31, 9·10³, 5·10³⁴ and the loss NaN at update 83. The doctor reads ‖g‖ from ``.grad`` at every
    update, names exploding_gradient within two updates of the burst, rolls back and clips."""
    setup = case("exploding_rnn").build("small")  # the zoo's case: standardised digits, 32 steps of 2 pixels
    model, opt, train = setup.model, setup.optimizer, setup.train
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    doctor = StallDoctor(max_samples=256)
    losses, step = [], 0
    while step < 140:
        for x, y in loader:
            loss = setup.loss(model, (x, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            assert math.isfinite(losses[-1]), f"the loss went non-finite at update {step}"
            doctor.after_step(model, losses[-1], setup.loss_fn, train, opt, batch_size=32)
            if step >= 140:
                break
    e = doctor.events[0]
    assert e["cause"] == "exploding_gradient" and 80 <= e["evidence"]["spike_update"] <= 83, (e["evidence"], e["message"])
    assert e["applied"] and e["kept"] is True and len(opt._optimizer_step_pre_hooks) == 1
    assert e["layers"] and sum(losses[-20:]) / 20 < losses[0]



# ---------------------------------------------------------------- the doctor's state on resume
def _equal(a, b):
    """Recursively equal, tensors bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _saved(doctor):
    buffer = io.BytesIO()
    torch.save(doctor.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resume_keeps_the_rollback_states_and_the_trial_in_progress():
    """Saved mid-trial (a roll-back on trial, good states kept), loaded by a fresh doctor: the
    state round-trips exactly through torch.load(weights_only=True), and the resumed doctor ends
    the trial as the uninterrupted one does."""
    jolt = lambda step, w: w.add_(3.0) if step == 60 else None  # noqa: E731
    torch.manual_seed(0)
    model, doctor = Bowl(), StallDoctor(window=100, trial=5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    events, resumed = [], None
    for step in range(1, 80):
        opt.zero_grad()
        loss = model(None)
        loss.backward()
        opt.step()
        with torch.no_grad():
            jolt(step, model.w)
        if doctor._trial is not None and resumed is None:  # mid-trial: a checkpoint, a fresh doctor loads it
            state = _saved(doctor)
            assert state["trial"] is not None and len(state["good"]) == 2 and state["spike"] is None  # update 1 and 50
            resumed = StallDoctor(window=100, trial=5)
            resumed.load_state_dict(state)
            again = _saved(resumed)
            assert again.pop("events") == 0 and state.pop("events") == 1  # the events stay in the run's logs
            assert [k for k in state if not _equal(state[k], again[k])] == []
            original, doctor = doctor, resumed
        e = doctor.after_step(model, loss.item(), bowl_loss, BATCH, opt)
        events += [e] if e else []
    assert original._trial is not None and doctor._trial is None  # the resumed doctor ended the trial
    assert not [e for e in events if e["event"] == "trial"]  # kept, as uninterrupted: no second event
    assert original._steps < doctor._steps and opt.param_groups[0]["lr"] == 5e-4


def test_a_state_for_another_model_is_refused_in_one_sentence():
    jolt = lambda step, w: w.add_(3.0) if step == 60 else None  # noqa: E731
    doctor = StallDoctor(window=100, trial=5)
    _bowl_run(62, doctor, jolt=jolt)
    state = _saved(doctor)
    other = nn.Linear(3, 2)
    fresh = StallDoctor(window=100)
    fresh.load_state_dict(state)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    try:
        fresh.after_step(other, 1.0, nn.functional.mse_loss, (torch.zeros(4, 3), torch.zeros(4, 2)), opt)
    except tl.errors.ConfigError as error:
        message = str(error)
    else:
        raise AssertionError("a state for another model was taken")
    assert "another model" in message and "'w'" in message and message.count(". ") == 0 and "\n" not in message
    assert other.weight.grad is None  # nothing ran on the model


# ---------------------------------------------------------------- advice only
def _look(model, data, opt, *, updates=3, batch_size=None, **kwargs):
    """The doctor's first look at ``model`` as it is: it is told a loss that does not move (a
    stall, full-batch unless ``batch_size``), so the look comes at once on the real model and data."""
    doctor = StallDoctor(window=10, full_batch_window=2, **kwargs)
    for _ in range(updates if batch_size is None else 40):
        event = doctor.after_step(model, 2.0, nn.functional.cross_entropy, data, opt,
                                  full_batch=batch_size is None, batch_size=batch_size)
        if event is not None:
            return event
    raise AssertionError("no look")


def _digits(standardize=True):
    return tl.data.load_digits(test_fraction=0.2, seed=0, standardize=standardize)[0]


def test_unstandardised_features_are_an_elongated_bowl_advice_only():
    """Raw digits ×100 (pixel columns' RMS from ~0.1 to ~1,000): softmax regression at η = 1/λ_max
    is stable along the steep columns and crawls along the flat ones. Named, with standardising
    as the advice; nothing is changed."""
    x, y = _digits(standardize=False).tensors
    data = torch.utils.data.TensorDataset(100 * x, y)
    model = nn.Linear(64, 10)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    lam = float(torch.linalg.eigvalsh((100 * x).T @ (100 * x) / len(x)).max()) / 10  # H = XᵀX/n ⊗ (diag p − ppᵀ)
    opt = torch.optim.SGD(model.parameters(), lr=1 / lam)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = _look(model, data, opt)
    assert e["cause"] == "ill_conditioned_features" and e["action"] == "none" and not e["applied"]
    spread = x.pow(2).mean(0).sqrt()
    spread = spread[spread > 0]
    assert e["evidence"]["feature_spread"] == pytest.approx(float(spread.max() / spread.min()), rel=1e-6)
    assert "standardise" in e["message"] and opt.param_groups[0]["lr"] == 1 / lam
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_shuffled_labels_carry_no_signal_advice_only():
    """Labels permuted at random: the loss sits at the labels' marginal entropy (ln 10 for the
    near-balanced digits) with units and gradients healthy — no_signal, advice only."""
    x, y = _digits().tensors
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    data = torch.utils.data.TensorDataset(x, y)
    model = nn.Linear(64, 10)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)  # the loss is ln 10: the labels' frequencies
    lr = 10 / float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())  # η·λ_max = 1: not a crawl
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = _look(model, data, opt)
    p = torch.bincount(y).double() / len(y)
    assert e["cause"] == "no_signal" and e["action"] == "none" and not e["applied"]
    assert e["evidence"]["marginal"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-9)
    assert "labels" in e["message"] and opt.param_groups[0]["lr"] == lr
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_suggested_batch_is_never_above_the_data_set():
    """30 samples fitted almost exactly (loss 0.002), looked at with batches of 2: the gradient is
    small against its noise, B_simple ≈ 38 is above the data set, so the advice is the whole data set."""
    x, y = _digits().tensors
    x, y = x[:30], y[:30]
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(400):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    e = _look(model, torch.utils.data.TensorDataset(x, y), opt, batch_size=2)
    noise = next(f for f in e["findings"] if f["cause"] == "batch_noise")
    assert noise["value"] > 30 and "toward 30, the whole data set" in noise["remedy"]


# ---------------------------------------------------------------- a warm-up missing
def _tiny_lm(lr, warmup, doctor, updates=100):
    """A post-LN ``nn.TransformerEncoder`` char LM (width 16, 2 layers, context 16) trained with
    Adam, batch 16, on generated text; returns its losses and the updates of the doctor's events."""
    train, _, vocab, _ = char_data(16, chars=30_000)
    torch.manual_seed(0)
    model = CharLM(vocab, 16, 2, 16)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)) if warmup else None
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    losses, steps = [], []
    for x, y in loader:
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        if doctor is not None and doctor.after_step(model, losses[-1], lm_loss, train, opt, sched, batch_size=16):
            steps.append(len(losses))
        if len(losses) == updates:
            return losses, steps


def test_a_post_ln_transformer_without_warmup_gets_one_and_a_healthy_one_is_left_alone():
    """Adam η = 0.1 from the first update: the early update ratio is far above 1 % and the loss
    sits at the characters' unigram entropy — needs_warmup, named at the early look (update
    5 + window/2) without any curvature product;
    the warm-up (from the state after update 1) is kept, being no worse, and the run ends below
    the untreated one. The same LM with η = 1e-3 after a warm-up gets no event."""
    plain, _ = _tiny_lm(0.1, 0, None)
    doctor = StallDoctor(window=60, max_samples=64, warmup=20)
    treated, steps = _tiny_lm(0.1, 0, doctor)
    e = doctor.events[0]
    assert steps[0] == 5 + 60 // 2  # the early look: within a window of the onset (the first updates)
    assert e["cause"] == "needs_warmup" and e["applied"] and e["rolled_back_to"] == 1 and e["n_hvp"] == 0
    assert e["evidence"]["early_update_ratio"] > 1e-2 and e["evidence"]["update_ratio"] < 1e-2
    assert abs(e["evidence"]["loss"] - e["evidence"]["marginal"]) <= 0.02 * e["evidence"]["marginal"]
    assert e["kept"] is True and e["trial"]["loss_after"] <= e["trial"]["loss_before"]
    assert sum(treated[-10:]) < sum(plain[-10:]) - 1.0  # 10 updates, ≥ 0.1 lower on average

    healthy = StallDoctor(window=60, max_samples=64, warmup=20)
    _tiny_lm(1e-3, 30, healthy)
    assert healthy.events == []
