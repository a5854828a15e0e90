"""Run directories never lose a file: fresh-run refusals, the lock, unique names, log reading,
checks before a resume writes anything, and checkpoints that hold only good states."""

import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError, DataError, DivergenceError
from trainlab.train import Callback, Trainer, checkpoint, rundir

from callbacks import Counter, InterruptAt
from digests import tree_digest


def model_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def make(train, out, epochs=2, model=None, opt="sgd", **kw):
    model = model if model is not None else small_model()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if opt == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=1e-3))
    return Trainer(model, optimizer, F.cross_entropy, train, batch_size=50, epochs=epochs, out=out,
                   progress=False, device="cpu", **kw)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def finished(digits, tmp_path):
    """A finished two-epoch run (29 updates an epoch) in tmp_path/run."""
    out = tmp_path / "run"
    make(digits[0], out).fit()
    return out


# ---------------------------------------------------------------------------------------------- fresh runs
@pytest.mark.parametrize("present, fragment", [
    (["checkpoint.pt"], "already holds a run (checkpoint.pt)"),
    (["metrics.jsonl"], "already holds metrics.jsonl"),
    (["steps.jsonl"], "already holds steps.jsonl"),
    (["summary.json"], "already holds summary.json"),
    (["config.toml"], "already holds config.toml"),
    (["summary.json", "steps.jsonl"], "already holds steps.jsonl, summary.json"),
])
def test_check_fresh_refuses_any_run_file(tmp_path, present, fragment):
    for name in present:
        (tmp_path / name).write_text("mine\n")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        rundir.check_fresh(tmp_path)
    rundir.check_fresh(tmp_path, overwrite=True)
    rundir.check_fresh(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    rundir.check_fresh(tmp_path, names=["other.txt"])


def test_check_directory_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        rundir.check_directory(tmp_path / "f")
    assert e.value.filename == str(tmp_path / "f")


@pytest.mark.parametrize("name", ["metrics.jsonl", "steps.jsonl", "summary.json", "checkpoint.pt"])
def test_trainer_refuses_a_directory_with_any_of_its_files_and_changes_nothing(digits, tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("the user's own file\n")
    before = tree_digest(out)
    with pytest.raises(ConfigError, match="already holds"):
        make(digits[0], out).fit()
    assert tree_digest(out) == before


def test_overwrite_replaces_only_the_trainers_files(digits, finished):
    (finished / "notes.txt").write_text("mine\n")
    make(digits[0], finished, epochs=1, overwrite=True).fit()
    assert [r["epoch"] for r in read_jsonl(finished / "metrics.jsonl")] == [1]
    assert len(read_jsonl(finished / "steps.jsonl")) == 29
    assert (finished / "notes.txt").read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------- the lock
def test_lock_is_held_for_the_run_and_removed_after(digits, tmp_path):
    out = tmp_path / "run"
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, trainer, record):
            fd = os.open(out / rundir.LOCK_NAME, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):  # another open file description: as another process
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            seen.append(record["epoch"])

    make(digits[0], out, callbacks=[Probe()]).fit()
    assert seen == [1, 2]
    assert not (out / rundir.LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_thread_and_refused_to_another(tmp_path):
    errors = []
    with rundir.locked(tmp_path) as held:
        assert held == tmp_path
        with rundir.locked(tmp_path):
            assert (tmp_path / rundir.LOCK_NAME).read_text() == f"{os.getpid()}\n"

        def other():
            try:
                with rundir.locked(tmp_path):
                    pass
            except ConfigError as e:
                errors.append(str(e))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert (tmp_path / rundir.LOCK_NAME).exists()  # the inner release kept the outer lock
    assert len(errors) == 1 and "is in use by another trainlab run" in errors[0]
    assert not (tmp_path / rundir.LOCK_NAME).exists()
    with rundir.locked(tmp_path):  # free again
        pass


def test_lock_refuses_a_second_process_and_names_its_pid(tmp_path):
    script = ("import sys\nfrom trainlab.train import rundir\n"
              "with rundir.locked(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.readline()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"is in use by another trainlab run \(pid {holder.pid}\)"):
            with rundir.locked(tmp_path):
                pass
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with rundir.locked(tmp_path):
        pass


def test_lock_survives_a_holder_that_unlinks_between_open_and_flock(tmp_path, monkeypatch):
    """The race the inode check closes: we open the old lock file, its holder removes it and
    releases, and only then do we flock. We must not count that as holding the directory."""
    stale = os.open(tmp_path / rundir.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # the holder's release happens right here
            os.unlink(tmp_path / rundir.LOCK_NAME)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with rundir.locked(tmp_path):
        assert len(calls) == 3  # retried on the new file, then the directory itself (rundir.locked)
        assert os.fstat(stale).st_ino != os.stat(tmp_path / rundir.LOCK_NAME).st_ino
    os.close(stale)


def test_a_locked_run_directory_refuses_a_trainer_and_changes_nothing(digits, finished):
    before = tree_digest(finished)
    fd = os.open(finished / rundir.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ConfigError, match="in use by another trainlab run"):
            make(digits[0], finished, epochs=3, resume=True).fit()
        after = tree_digest(finished)
    finally:
        os.close(fd)
        os.unlink(finished / rundir.LOCK_NAME)
    after.pop(rundir.LOCK_NAME)
    assert after == before


# ---------------------------------------------------------------------------------------------- default names
def test_new_run_dir_is_unique_within_one_second(tmp_path):
    made = [rundir.new_run_dir(tmp_path / "runs", now=1_700_000_000) for _ in range(3)]
    assert len({p.name for p in made}) == 3 and all(p.is_dir() for p in made)
    assert made[1].name == made[0].name + "-2" and made[2].name == made[0].name + "-3"


def test_new_run_dir_is_unique_across_threads(tmp_path):
    made, start = [], threading.Barrier(8)

    def one():
        start.wait()
        made.append(rundir.new_run_dir(tmp_path, now=1_700_000_000))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8


# ---------------------------------------------------------------------------------------------- logs
@pytest.mark.parametrize("text, records, torn", [
    ('{"step": 1}\n{"step": 2}\n', [1, 2], False),
    ('{"step": 1}\n{"step": 2}', [1, 2], False),  # a complete last line without its newline is whole
    ('{"step": 1}\n{"step": 2, "lo', [1], True),  # torn by a crash: dropped
    ('{"step": 1}\n{"step": 2, "lo\n\n', [1], True),
    ('{"step": 1}\n\n{"step": 2}\n', [1, 2], False),  # blank lines carry nothing
    ('{"event": "escape", "step": 4}\n', [4], False),
    ("", [], False),
])
def test_read_log(tmp_path, text, records, torn):
    (tmp_path / "log.jsonl").write_text(text)
    got, was_torn = rundir.read_log(tmp_path / "log.jsonl", "step")
    assert [r["step"] for r in got] == records and was_torn == torn


@pytest.mark.parametrize("text, line, fragment", [
    ('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n', 2, "is damaged"),
    ('{"st\n{"step": 2}\n', 1, "is damaged"),
    (b'{"step": 1}\n\xff\xfe\n{"step": 3}\n', 2, "is damaged"),
    ('{"step": 1}\n[1, 2]\n{"step": 3}\n', 2, r"is not a trainlab record: it needs an integer 'step'"),
    ('{"step": "2"}\n{"step": 3}\n', 1, r"is not a trainlab record: it needs an integer 'step'"),
    ('{"step": true}\n', 1, r"is not a trainlab record: it needs an integer 'step'"),
    # parses, so it was not torn by a crash: refused, not dropped
    ('{"step": 1}\n{"loss": 2}\n', 2, r"is not a trainlab record: it needs an integer 'step'"),
])
def test_read_log_refuses_damage_with_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "log.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=rf"log.jsonl' line {line} {fragment}"):
        rundir.read_log(path, "step")


def test_read_log_metrics_events_need_a_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 29}\n{"event": "escape", "epoch": 2}\n{"epoch": 2, "step": 58}\n')
    with pytest.raises(DataError, match="line 2 is not a trainlab record: .*'step'"):
        rundir.read_log(path, "epoch")


# ---------------------------------------------------------------------------------------------- resume checks
def _tamper(state_edit):
    def setup(out):
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        state_edit(state)
        torch.save(state, out / "checkpoint.pt")
    return setup


def _damage(name, line):
    def setup(out):
        lines = (out / name).read_text().splitlines(keepends=True)
        lines[line - 1] = lines[line - 1][:9] + "\n"
        (out / name).write_text("".join(lines))
    return setup


def _write_bytes(data):
    return lambda out: (out / "checkpoint.pt").write_bytes(data)


RESUME_DAMAGE = [
    ("empty checkpoint", _write_bytes(b""), "is empty"),
    ("text checkpoint", _write_bytes(b"hello\n"), "cannot be read"),
    ("truncated checkpoint", lambda out: (out / "checkpoint.pt").write_bytes(
        (out / "checkpoint.pt").read_bytes()[:500]), "cannot be read"),
    ("not a dict", lambda out: torch.save(torch.ones(3), out / "checkpoint.pt"), "holds a Tensor"),
    ("missing model", _tamper(lambda s: s.pop("model")), "lacks 'model'"),
    ("missing scheduler key", _tamper(lambda s: s.pop("scheduler")), "lacks 'scheduler'"),
    ("extra model key", _tamper(lambda s: s["model"].update(extra=torch.ones(1))), "has 'extra'"),
    ("a weight that is not a tensor", _tamper(lambda s: s["model"].update({"2.bias": [0.0] * 10})),
     "'2.bias' is a list there, not a tensor"),
    ("wrong bias shape", _tamper(lambda s: s["model"].update({"2.bias": torch.zeros(11)})),
     r"'2.bias' has shape \(11,\)"),
    ("optimizer for other parameters", _tamper(lambda s: s["optimizer"]["param_groups"][0]["params"].pop()),
     "parameter groups of sizes"),
    ("momentum of another shape", _tamper(lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.ones(2))),
     "'momentum_buffer' of parameter 0"),
    ("NaN weight", _tamper(lambda s: s["model"]["0.weight"].fill_(math.nan)), "non-finite values in the model's"),
    ("inf momentum", _tamper(lambda s: s["optimizer"]["state"][1]["momentum_buffer"].fill_(math.inf)),
     "non-finite values in the optimizer's 'state.1.momentum_buffer'"),
    ("NaN first loss", _tamper(lambda s: s.update(first_loss=math.nan)), "first_loss = nan"),
    ("inside an epoch without a tally", _tamper(lambda s: s.update(batch=3, partial=None)), "lacks the epoch's tally"),
    ("rng of the wrong size", _tamper(lambda s: s["rng"].update(shuffle=torch.zeros(5, dtype=torch.uint8))),
     "random states"),
    ("damaged metrics line 1", _damage("metrics.jsonl", 1), "metrics.jsonl' line 1 is damaged"),
    ("damaged steps line 30", _damage("steps.jsonl", 30), "steps.jsonl' line 30 is damaged"),
]


@pytest.mark.parametrize("setup, fragment", [c[1:] for c in RESUME_DAMAGE], ids=[c[0] for c in RESUME_DAMAGE])
def test_resume_checks_everything_before_writing_or_loading(digits, finished, setup, fragment):
    setup(finished)
    before = tree_digest(finished)
    model = small_model(seed=7)
    untouched = model_state(model)
    trainer = make(digits[0], finished, epochs=3, model=model, resume=True)
    with pytest.raises(DataError, match=fragment):
        trainer.fit()
    assert tree_digest(finished) == before  # nothing rewritten, no lock file left
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())  # nor the model loaded
    assert trainer.optimizer.state_dict()["state"] == {}


def test_damaged_middle_line_is_never_truncated_and_resume_works_once_repaired(digits, finished):
    good = (finished / "metrics.jsonl").read_text()
    (finished / "metrics.jsonl").write_text(good.replace('{"epoch": 1', '{"epoch": 1,,', 1))
    damaged = (finished / "metrics.jsonl").read_text()
    with pytest.raises(DataError, match="line 1 is damaged"):
        make(digits[0], finished, epochs=3, resume=True).fit()
    assert (finished / "metrics.jsonl").read_text() == damaged
    (finished / "metrics.jsonl").write_text(good)
    make(digits[0], finished, epochs=3, resume=True).fit()
    assert [r["epoch"] for r in read_jsonl(finished / "metrics.jsonl")] == [1, 2, 3]


def test_resume_with_whole_logs_only_appends(digits, finished):
    metrics, steps = (finished / "metrics.jsonl").read_bytes(), (finished / "steps.jsonl").read_bytes()
    inode = os.stat(finished / "metrics.jsonl").st_ino
    make(digits[0], finished, epochs=3, resume=True).fit()
    assert (finished / "metrics.jsonl").read_bytes().startswith(metrics)
    assert (finished / "steps.jsonl").read_bytes().startswith(steps)
    assert os.stat(finished / "metrics.jsonl").st_ino == inode  # appended to, not rewritten


# ---------------------------------------------------------------------------------------------- good checkpoints
class Spoil(Callback):
    """After update ``step``, fill one tensor (a parameter or an optimizer state) with ``value``."""

    def __init__(self, step, what="param", value=math.inf, interrupt=False):
        self.at, self.what, self.value, self.interrupt = step, what, value, interrupt

    def on_step_end(self, trainer, record):
        if record["step"] != self.at:
            return
        with torch.no_grad():
            p = trainer.optimizer.param_groups[0]["params"][0]
            target = p if self.what == "param" else trainer.optimizer.state[p][self.what]
            target[0].fill_(self.value)
        if self.interrupt:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("spoil, fragment", [
    (Spoil(58, "param"), "the model's '0.weight' holds non-finite values"),
    (Spoil(58, "momentum_buffer"), "the optimizer's 'state.0.momentum_buffer' holds non-finite values"),
    (Spoil(58, "param", math.nan), "the model's '0.weight' holds non-finite values"),
], ids=["inf weight", "inf momentum", "nan weight"])
def test_a_non_finite_state_is_never_checkpointed(digits, tmp_path, spoil, fragment):
    """The last update of epoch 2 leaves a non-finite tensor while every loss so far was
    finite: the epoch-1 checkpoint must stay, and the error must say it holds epoch 1."""
    out = tmp_path / "run"
    epoch_1 = {}

    class Keep(Callback):
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 1:
                epoch_1.update(model_state(trainer.model))

    trainer = make(digits[0], out, epochs=3, callbacks=[spoil, Keep()])
    with pytest.raises(DivergenceError, match=rf"by step 58 \(epoch 2\): {fragment}, so it was not checkpointed;"
                                              rf".* the last good checkpoint is .*checkpoint.pt \(it holds epoch 1,"
                                              rf" step 29\)") as e:
        trainer.fit()
    assert e.value.checkpoint == str(out / "checkpoint.pt") and e.value.step == 58
    state = checkpoint.load(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 29)
    assert checkpoint.non_finite({"model": state["model"], "optimizer": state["optimizer"]}) is None
    assert all(torch.equal(v, epoch_1[k]) for k, v in state["model"].items())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_no_good_checkpoint_yet_says_so(digits, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"epoch 1\): .*no checkpoint was written yet") as e:
        make(digits[0], out, callbacks=[Spoil(29, "param")]).fit()
    assert e.value.checkpoint is None and not (out / "checkpoint.pt").exists()


def test_non_finite_eval_loss_is_not_checkpointed(digits, tmp_path):
    train, test = digits
    out = tmp_path / "run"

    def loss_fn(logits, y):  # finite while training, infinite in evaluation
        return F.cross_entropy(logits, y) + (0.0 if torch.is_grad_enabled() else math.inf)

    model = small_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), loss_fn, train, batch_size=50, epochs=2,
                      eval_data=test, out=out, progress=False, device="cpu")
    with pytest.raises(DivergenceError, match=r"eval_loss became inf, so it was not checkpointed.*no checkpoint"):
        trainer.fit()
    assert not (out / "checkpoint.pt").exists()


def test_ctrl_c_refuses_to_checkpoint_a_non_finite_state(digits, tmp_path):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when the suite runs as a background job)
    trainer = make(digits[0], out, epochs=3, callbacks=[Spoil(40, "param", math.nan, interrupt=True)])
    with pytest.raises(DivergenceError, match=r"by step 40 \(epoch 2\): the model's '0.weight' holds non-finite"
                                              r" values.*\(it holds epoch 1, step 29\)"):
        trainer.fit()
    state = checkpoint.load(out / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["batch"]) == (1, 29, 0)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored


def test_divergence_after_a_resume_names_the_resumed_checkpoint(digits, tmp_path):
    out = tmp_path / "run"
    cut = make(digits[0], out, epochs=3, callbacks=[InterruptAt(40)])
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = make(digits[0], out, epochs=3, callbacks=[Spoil(45, "param", math.nan)], resume=True)
    with pytest.raises(DivergenceError, match=r"step 46 .*loss became nan.*\(it holds step 40, inside epoch 2\)"):
        resumed.fit()


# ---------------------------------------------------------------------------------------------- faults
def test_a_failed_write_names_its_file(tmp_path, monkeypatch):
    def full(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        checkpoint.save({"a": 1}, tmp_path / "checkpoint.pt")
    assert e.value.filename == str(tmp_path / "checkpoint.pt") and e.value.strerror == "No space left on device"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [0, 0.1, 0.5, 0.9, 0.99, "text", "zip header"])
def test_load_raises_data_error_naming_the_path(tmp_path, cut):
    """Cut anywhere (torch reports some cuts as OSError EINVAL), or not a checkpoint at all."""
    checkpoint.save({"w": torch.ones(1000), "step": 3}, tmp_path / "c.pt")
    whole = (tmp_path / "c.pt").read_bytes()
    content = {"text": b"text", "zip header": b"PK\x03\x04 not really a zip"}.get(cut)
    (tmp_path / "c.pt").write_bytes(content if content is not None else whole[:int(cut * len(whole))])
    with pytest.raises(DataError, match=f"checkpoint '{tmp_path / 'c.pt'}'"):
        checkpoint.load(tmp_path / "c.pt")


def test_load_passes_environment_faults_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError):
        checkpoint.load(tmp_path)


def test_a_full_disk_when_taking_the_lock_names_the_lock_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as e:
        with rundir.locked(tmp_path):
            pass
    monkeypatch.undo()
    assert e.value.filename == str(tmp_path / rundir.LOCK_NAME)
    assert list(tmp_path.iterdir()) == []
    with rundir.locked(tmp_path):  # and the lock is free
        pass


def test_a_modules_extra_state_is_left_to_the_module(tmp_path):
    class WithExtra(nn.Linear):
        def get_extra_state(self):
            return {"note": "kept"}

        def set_extra_state(self, state):
            self.note = state["note"]

    model = nn.Sequential(WithExtra(3, 2))
    checkpoint.save({"model": model.state_dict()}, tmp_path / "c.pt")
    state = checkpoint.load(tmp_path / "c.pt", require=["model"])
    checkpoint.check_module_state(state["model"], model, tmp_path / "c.pt")
    model.load_state_dict(state["model"])
    assert model[0].note == "kept"


def test_a_callback_state_it_cannot_load_is_refused_before_any_write(digits, tmp_path):
    out = tmp_path / "run"
    make(digits[0], out, callbacks=[Counter()]).fit()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["callbacks"] == [{"steps": 58}]
    state["callbacks"] = [{"count": 58}]
    torch.save(state, out / "checkpoint.pt")
    before = tree_digest(out)
    model = small_model(seed=3)
    untouched = model_state(model)
    with pytest.raises(DataError, match=r"callback Counter cannot load \(KeyError: 'steps'\)"):
        make(digits[0], out, epochs=3, model=model, callbacks=[Counter()], resume=True).fit()
    assert tree_digest(out) == before
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())


KILLED_RUN = """
import os, signal, sys
import torch, torch.nn.functional as F
from torch import nn
import trainlab as tl
from trainlab.train import Callback, Trainer

class Kill(Callback):
    def on_step_end(self, trainer, record):
        if record["step"] == 40:  # after epoch 1's checkpoint, in the middle of epoch 2
            os.kill(os.getpid(), signal.SIGKILL)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), F.cross_entropy, tl.data.load_digits()[0],
        batch_size=50, epochs=3, out=sys.argv[1], progress=False, device="cpu", callbacks=[Kill()]).fit()
"""


def test_a_killed_run_leaves_a_stale_lock_and_resumes_bit_for_bit(digits, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / rundir.LOCK_NAME).exists()  # left behind, but no process holds it any more
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    whole = make(digits[0], tmp_path / "whole", epochs=3)
    whole.fit()
    resumed = make(digits[0], out, epochs=3, model=small_model(seed=5), resume=True)
    resumed.fit()
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert read_jsonl(out / "steps.jsonl") == read_jsonl(tmp_path / "whole" / "steps.jsonl")
    assert not (out / rundir.LOCK_NAME).exists()


def test_a_file_system_without_flock_names_the_lock_file(tmp_path, monkeypatch):
    def unsupported(fd, op):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.raises(OSError) as e:
        with rundir.locked(tmp_path):
            pass
    assert e.value.filename == str(tmp_path / rundir.LOCK_NAME)


def test_run_train_refuses_a_bad_callback_state_before_rewriting_config_toml(tmp_path):
    from trainlab.train import config, run

    out = tmp_path / "run"
    run.train(config.load(None, ["data.name=iris", "train.epochs=1"]), out, progress=False, callbacks=[Counter()])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["callbacks"] = [{"count": 1}]
    torch.save(state, out / "checkpoint.pt")
    before = tree_digest(out)
    with pytest.raises(DataError, match="callback Counter cannot load"):
        run.train(config.load(None, ["data.name=iris", "train.epochs=2"]), out, resume=True, progress=False,
                  callbacks=[Counter()])
    assert tree_digest(out) == before  # config.toml (train.epochs = 2) not written
