import pytest
import torch

from trainlab.errors import ConfigError
from trainlab.train import config, run


def test_every_config_name_has_a_builder():
    assert set(run.OPTIMIZERS) == set(config.OPTIMIZERS)
    assert set(run.LOSSES) == set(config.LOSSES)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adagrad", torch.optim.Adagrad),
                                       ("rmsprop", torch.optim.RMSprop), ("adam", torch.optim.Adam)])
def test_build_optimizer_from_config(name, cls):
    parts = run.build(config.load(None, [f"optimizer.name={name}", "optimizer.lr=0.02", "data.name=iris"]))
    assert isinstance(parts.optimizer, cls) and parts.optimizer.param_groups[0]["lr"] == 0.02
    assert parts.model[-1].out_features == 3 and parts.model[1].in_features == 4


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
