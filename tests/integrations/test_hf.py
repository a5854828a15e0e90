"""The Hugging Face callback on a real ``transformers.Trainer``: a tiny causal language model
built from a config (no download), random token data, CPU."""

import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from trainlab.curvature import eigs  # noqa: E402
from trainlab.errors import ConfigError  # noqa: E402
from trainlab.instruments import Monitor  # noqa: E402
from trainlab.instruments.noise import NoiseScale  # noqa: E402
from trainlab.instruments.sharpness import Sharpness  # noqa: E402
from trainlab.integrations.hf import TrainlabCallback, model_loss  # noqa: E402
from trainlab.train.doctor import StallDoctor  # noqa: E402

from schedule import due  # noqa: E402

hf_logging.set_verbosity_error()  # the tiny config's own notes (eos token, loss type) are not ours
VOCAB, LENGTH = 128, 16


def tiny_lm(dtype=torch.float64, layers=2, width=64):
    """GPT-2 with 2 layers, width 64, vocabulary 128, no dropout, seeded."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=2, vocab_size=VOCAB, n_positions=LENGTH, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).to(dtype)


def token_data(n=256, learnable=False):
    """``n`` sequences of random tokens (``learnable``: each token the previous one + 1, from a
    random start, so there is something to learn), as the dicts an HF dataset yields."""
    gen = torch.Generator().manual_seed(1)
    if learnable:
        ids = (torch.randint(0, VOCAB, (n, 1), generator=gen) + torch.arange(LENGTH)) % VOCAB
    else:
        ids = torch.randint(0, VOCAB, (n, LENGTH), generator=gen)
    return [{"input_ids": t, "labels": t.clone()} for t in ids]


def hf_trainer(tmp_path, model, data, **args):
    defaults = dict(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=8, max_steps=20, learning_rate=1e-3,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                    dataloader_num_workers=0)
    return Trainer(model=model, args=TrainingArguments(**{**defaults, **args}), train_dataset=data)


class Snapshots(TrainerCallback):
    """Keeps a copy of the model's parameters at the given updates (after the callbacks before it)."""

    def __init__(self, steps):
        self.steps, self.models = set(steps), {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.models[state.global_step] = copy.deepcopy(model)


def logged(trainer, key):
    """``{step: value}`` of ``key`` in the Trainer's log history."""
    return {r["step"]: r[key] for r in trainer.state.log_history if key in r}


def brute_force_noise_scale(model, batch):
    """``tr Σ / ‖G‖²`` from per-sample gradients taken one sample at a time with autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for i in range(len(batch["input_ids"])):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(**one).loss, params)]).double())
    g = torch.stack(grads)
    mean = g.mean(0)
    return float(((g - mean) ** 2).sum(0).sum() / (len(g) - 1) / (mean ** 2).sum())


@pytest.mark.parametrize("accumulation", [1, 2])
def test_readings_equal_trainlab_curvature_called_directly(tmp_path, accumulation):
    """Sharpness and noise scale logged at updates 1 (a baseline), 10 and 20 equal eigs() and brute-force
    per-sample gradients on the same model and batch; the Trainer's own loss is still logged at
    every update, and the loss the doctor watches is the loss the Trainer logs."""
    data = token_data()
    trainer = hf_trainer(tmp_path, tiny_lm(), data, gradient_accumulation_steps=accumulation)
    monitor = Monitor(sample=32, instruments=[Sharpness(every=10, tol=1e-10, max_hvp=300), NoiseScale(every=10)])
    doctor = StallDoctor(window=100)  # watches, never acts in 20 updates
    snapshots = Snapshots(due(10, 20))
    trainer.add_callback(TrainlabCallback(monitor, doctor, trainer=trainer))
    trainer.add_callback(snapshots)
    trainer.train()

    sharpness, noise = logged(trainer, "trainlab/sharpness"), logged(trainer, "trainlab/noise_scale")
    assert sorted(sharpness) == sorted(noise) == due(10, 20) == [1, 10, 20]
    batch = {k: torch.stack([d[k] for d in data[:32]]) for k in ("input_ids", "labels")}
    for step, model in snapshots.models.items():
        model.eval()
        direct = eigs(model, None, batch, k=1, tol=1e-10, batch_loss=model_loss, progress=False)
        assert sharpness[step] == pytest.approx(float(direct.values[0]), rel=1e-7)
        assert noise[step] == pytest.approx(brute_force_noise_scale(model, batch), rel=1e-9)
    losses = logged(trainer, "loss")
    assert sorted(losses) == list(range(1, 21))  # logging the readings did not swallow the Trainer's own records
    assert doctor.state_dict()["losses"] == pytest.approx([losses[s] for s in range(1, 21)], rel=1e-6)


def crawl_run(tmp_path, doctor):
    """Plain SGD at a learning rate 1,000× too small on learnable tokens: the loss crawls. (One
    layer of width 32, so that a diagnosis takes seconds.)"""
    trainer = hf_trainer(tmp_path, tiny_lm(torch.float32, 1, 32), token_data(learnable=True), optim="sgd",
                         learning_rate=1e-4, max_steps=60, lr_scheduler_type="linear")
    if doctor is not None:
        trainer.add_callback(TrainlabCallback(doctor=doctor, trainer=trainer))
    trainer.train()
    return trainer


def test_the_doctor_raises_a_crawling_step_on_the_hf_optimizer_and_its_schedule(tmp_path):
    doctor = StallDoctor(window=10, max_samples=16, k=1)
    treated, plain = crawl_run(tmp_path / "treated", doctor), crawl_run(tmp_path / "plain", None)
    event = doctor.events[0]
    assert event["reading"] == "stability" and event["action"].startswith("raise η") and event["applied"]
    factor = event["lr_after"] / event["lr_before"]
    assert factor > 10
    step = sorted(logged(treated, "trainlab/doctor/event"))
    at = step[0]  # each event logged at its update with its numbers
    assert step == [e["step"] for e in doctor.events]
    assert logged(treated, "trainlab/doctor/lr_after")[at] == event["lr_after"]
    # the linear schedule kept its shape, rescaled: η(s) = factor · 1e-4 · (1 − (s − 1)/60) after the
    # event, up to the doctor's next change (η raised from λ_max read at the crawl can meet a
    # sharpening landscape: the next look may lower it again)
    lrs = logged(treated, "learning_rate")
    changed = [e["step"] for e in doctor.events[1:] if e.get("applied")]
    for s in range(at + 1, (changed[0] if changed else 60) + 1):
        assert lrs[s] == pytest.approx(factor * 1e-4 * (1 - (s - 1) / 60), rel=1e-9)
    for s in range(1, at + 1):
        assert lrs[s] == pytest.approx(1e-4 * (1 - (s - 1) / 60), rel=1e-9)
    # and the loss then falls, where the untreated run still crawls
    treated_loss, plain_loss = logged(treated, "loss"), logged(plain, "loss")
    assert [plain_loss[s] for s in range(1, at + 1)] == pytest.approx([treated_loss[s] for s in range(1, at + 1)])
    assert treated_loss[60] < 0.95 * plain_loss[60]
    assert plain_loss[60] > 0.98 * plain_loss[1]


def test_without_the_trainer_the_readings_go_to_the_log_history(tmp_path):
    trainer = hf_trainer(tmp_path, tiny_lm(), token_data(64), max_steps=4)
    monitor = Monitor(sample=16, instruments=[NoiseScale(every=2)])
    trainer.add_callback(TrainlabCallback(monitor))
    trainer.train()
    records = [r for r in trainer.state.log_history if "trainlab/noise_scale" in r]
    assert [(r["step"], r["trainlab/noise_scale"]) for r in records] == [(r.step, r.value) for r in monitor.history]
    assert [r["epoch"] for r in records] == [s / 8 for s in due(2, 4)]  # 64 samples, 8 per update: 8 updates an epoch


def test_resume_from_an_hf_checkpoint_keeps_the_callback_state(tmp_path):
    """Stopped at update 10 and resumed from checkpoint-10: the Monitor and the doctor end as in
    an uninterrupted run, and read the same values."""
    def run(out, resume, stop_at=None):
        monitor = Monitor(sample=16, instruments=[Sharpness(every=5), NoiseScale(every=5)])
        doctor = StallDoctor(window=100)
        trainer = hf_trainer(out, tiny_lm(), token_data(), save_strategy="steps", save_steps=10)
        trainer.add_callback(TrainlabCallback(monitor, doctor, trainer=trainer))
        if stop_at is not None:
            trainer.add_callback(StopAt(stop_at))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, monitor, doctor

    whole, whole_monitor, whole_doctor = run(tmp_path / "whole", None)
    run(tmp_path / "parts", None, stop_at=10)
    resumed, monitor, doctor = run(tmp_path / "parts", str(tmp_path / "parts" / "hf" / "checkpoint-10"))
    assert (tmp_path / "parts" / "hf" / "checkpoint-10" / "trainlab_callback.pt").exists()
    state, whole_state = doctor.state_dict(), whole_doctor.state_dict()
    assert state["losses"] == pytest.approx(whole_state["losses"], rel=1e-6) and len(state["losses"]) == 20
    timed = {"losses", "forward_cost"}  # forward_cost: a timing, the seconds per sample of the check-ups' forward pass
    assert same({k: v for k, v in state.items() if k not in timed}, {k: v for k, v in whole_state.items() if k not in timed})
    assert state["steps"] == 20 and monitor.step == 20
    for name in ("trainlab/sharpness", "trainlab/noise_scale"):
        after = {s: v for s, v in logged(resumed, name).items() if s > 10}
        assert sorted(after) == [15, 20]
        assert after == pytest.approx({s: logged(whole, name)[s] for s in after}, rel=1e-6)


def same(a, b):
    """Equal, tensors (the doctor's kept states) bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("kwargs, message", [
    ({}, "monitor=None and doctor=None leave nothing to do"),
    ({"monitor": "full"}, "monitor='full' is not allowed; expected a trainlab.instruments.Monitor"),
    ({"doctor": 3}, "doctor=3 is not allowed; expected a trainlab.train.StallDoctor"),
    ({"doctor": StallDoctor(), "trainer": "hf"}, "trainer='hf' is not allowed; expected the transformers.Trainer"),
    ({"doctor": StallDoctor(), "batch_loss": 1}, "batch_loss=1 is not allowed; expected a function"),
])
def test_bad_arguments_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError) as e:
        TrainlabCallback(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_batches_without_labels_are_named():
    model = tiny_lm()
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel returned no loss for a batch with keys \['input_ids'\];"
                                          " the batches need labels"):
        model_loss(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long)})
