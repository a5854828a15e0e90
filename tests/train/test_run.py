import inspect

import pytest
import torch

import trainlab as tl
from trainlab.errors import ConfigError
from trainlab.train import config, run
from tolerance import tol


def test_every_config_name_has_a_builder():
    assert set(run.OPTIMIZERS) == set(config.OPTIMIZERS)
    assert set(run.LOSSES) == set(config.LOSSES)
    for name, keys in config.OPTIMIZER_KEYS.items():
        assert set(keys) < set(inspect.signature(run.OPTIMIZERS[name]).parameters)


@pytest.mark.parametrize("name, cls", [("sgd", tl.optim.SGD), ("adagrad", tl.optim.Adagrad),
                                       ("rmsprop", tl.optim.RMSProp), ("adam", tl.optim.Adam)])
def test_build_optimizer_from_config(name, cls):
    parts = run.build(config.load(None, [f"optimizer.name={name}", "optimizer.lr=0.02", "data.name=iris"]))
    assert isinstance(parts.optimizer, cls) and parts.optimizer.param_groups[0]["lr"] == 0.02
    assert parts.model[-1].out_features == 3 and parts.model[2].in_features == 4


def test_optimizer_keys_reach_the_optimizer():
    opt = run.build(config.load(None, ["optimizer.name=adam", "optimizer.betas=[0.8, 0.99]", "optimizer.decoupled=true",
                                       "optimizer.weight_decay=0.01"])).optimizer
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["decoupled"]
    opt = run.build(config.load(None, ["optimizer.name=rmsprop", "optimizer.init=zero", "optimizer.alpha=0.99"])).optimizer
    assert opt.param_groups[0]["init"] == "zero" and opt.param_groups[0]["alpha"] == 0.99
    with pytest.raises(ConfigError, match="RMSProp: init='ones' is not allowed"):
        run.build(config.load(None, ["optimizer.name=rmsprop", "optimizer.init=ones"]))


def test_warmup_cosine_spans_the_whole_run_by_default(tmp_path):
    c = config.load(None, ["data.name=iris", "schedule.name=warmup_cosine", "schedule.warmup_steps=4",
                           "schedule.min_lr=0.0001", "train.epochs=3", "train.batch_size=40"])
    run.train(c, tmp_path / "run", progress=False)
    lrs = [r["lr"] for r in map(__import__("json").loads, (tmp_path / "run" / "steps.jsonl").read_text().splitlines())]
    assert len(lrs) == 3 * 3  # 120 training samples in batches of 40
    expected = tl.optim.schedules.trace("warmup_cosine", 9, lr=0.001, warmup_steps=4, total_steps=9, min_lr=0.0001)
    assert lrs == pytest.approx(expected)


def test_step_decay_needs_its_step_size():
    with pytest.raises(ConfigError, match="step_decay: step_size=0 is not allowed"):
        run.build(config.load(None, ["schedule.name=step_decay"]))


def test_model_standardises_raw_inputs_with_training_statistics(tmp_path):
    parts = run.build(config.load(None, ["data.name=wine"]))
    x_train = parts.train_data.tensors[0]
    assert x_train.mean(0).abs().max() > 1  # the data stay raw ...
    scaler = parts.model[0]
    assert isinstance(scaler, tl.nn.Standardizer)
    z = scaler(x_train)  # ... and the model's first module standardises them with training statistics
    # Standardizer's statistics are float64, stored and applied in float32; the means and deviations here
    # are float32 sums over the training samples of values up to `scale` standard deviations from zero
    scale = float((x_train.abs().max(0).values / x_train.std(0)).max())
    atol = tol(torch.float32, len(x_train), scale)
    torch.testing.assert_close(z.mean(0), torch.zeros(13), atol=atol, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(13), atol=atol, rtol=0)
    summary = run.train(config.load(None, ["data.name=wine", "train.epochs=5", "optimizer.lr=0.01"]), tmp_path / "run",
                        progress=False)
    state = tl.train.checkpoint.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu")  # trained on any device
    assert torch.equal(state["model"]["0.mean"], scaler.mean)  # the statistics travel with the checkpoint
    assert summary["eval_accuracy"] > 0.8


def test_build_small_cnn_for_digits():
    parts = run.build(config.load(None, ["model.name=small_cnn"]))
    assert parts.model(parts.train_data.tensors[0][:3]).shape == (3, 10)


def test_small_cnn_needs_square_images():
    with pytest.raises(ConfigError, match=r"needs square images.*shape \(13,\)"):
        run.build(config.load(None, ["model.name=small_cnn", "data.name=wine"]))


def test_mse_loss_trains(tmp_path):
    c = config.load(None, ["train.loss=mse", "train.epochs=3", "data.name=iris", "optimizer.lr=0.05"])
    summary = run.train(c, tmp_path / "run", progress=False)
    assert summary["train_accuracy"] > 0.8


def test_resume_refuses_a_changed_config_but_allows_more_epochs(tmp_path):
    out = tmp_path / "run"
    run.train(config.load(None, ["train.epochs=1", "data.name=iris"]), out, progress=False)
    with pytest.raises(ConfigError, match="cannot resume .* with train.batch_size = 16: the run was trained"
                                          " with 32, and only train.epochs, train.checkpoint_every, train.device"):
        run.train(config.load(None, ["train.epochs=2", "data.name=iris", "train.batch_size=16"]), out, resume=True)
    summary = run.train(config.load(None, ["train.epochs=2", "data.name=iris"]), out, resume=True, progress=False)
    assert summary["epochs"] == 2
    assert config.load(out / "config.toml").train.epochs == 2
