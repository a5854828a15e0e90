"""Zoo cases on scikit-learn's digits and wine: MLPs, a CNN and an RNN, failing and healthy.

Every model is built from ``seed`` with its own generator state, trained on digits (1,437 training,
360 held-out samples, standardised unless said) with cross-entropy in mini-batches.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.data import load, load_digits
from trainlab.nn import cross_entropy, mse_onehot, mlp, small_cnn
from trainlab.zoo.case import Case, Setup

#: The entropy of ten equally frequent classes, log 10: the loss of a net that ignores its input.
LABEL_ENTROPY = math.log(10)


def _updates(size: str, full: int, small: int) -> int:
    return full if size == "full" else small


def _digits(standardize: bool = True) -> tuple[TensorDataset, TensorDataset]:
    return load_digits(test_fraction=0.2, seed=0, standardize=standardize)


def relu_mlp(seed: int, bias: float | None = None, width: int = 64) -> nn.Sequential:
    """``64 → width → width → 10`` with ReLU (PyTorch's default initialisation); ``bias`` fills
    the hidden biases."""
    model = mlp(64, [width, width], 10, activation="relu", seed=seed)
    if bias is not None:
        with torch.no_grad():
            for layer in (model[1], model[3]):
                layer.bias.fill_(bias)
    return model


def _setup(model: nn.Module, opt: torch.optim.Optimizer, updates: int, batch_size: int = 32,
           loss_fn=cross_entropy, data: tuple[TensorDataset, TensorDataset] | None = None,
           scheduler=None, **info) -> Setup:
    train, test = data if data is not None else _digits()
    return Setup(model, opt, scheduler, train, test, updates, batch_size, loss_fn=loss_fn, info=info)


# ------------------------------------------------------------------ failures
def saddle_zero_init(size: str, seed: int) -> Setup:
    """A tanh MLP with every parameter zero: ∂L/∂W₁ = W₂ᵀδ·x = 0 and ∂L/∂W₂ = δ·tanh(0)ᵀ = 0, so
    only the output bias learns — to the label frequencies — and the weights never leave zero."""
    model = mlp(64, [32], 10, activation="tanh", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _updates(size, 900, 300))


def mse_softmax_plateau(size: str, seed: int) -> Setup:
    """MSE on softmax outputs, η = 0.01: ∂L/∂z = J_softmax·(p − y) is small wherever the softmax is
    flat or saturated, so the loss creeps along a plateau that cross-entropy crosses at once — the
    lecture's flat MSE error surface."""
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.01), _updates(size, 900, 300), loss_fn=mse_onehot)


def crawl(size: str, seed: int) -> Setup:
    """SGD at η = 1e-5: every step is ~10⁴ times smaller than the curvature allows (η·λ_max ≪ 1)."""
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=1e-5), _updates(size, 900, 300))


def too_large(size: str, seed: int) -> Setup:
    """Adam at η = 0.05: the preconditioned step overshoots the valley, η·λ_max(P⁻¹H) above its
    threshold 2(1+β₁)/(1−β₁) (Cohen et al. 2022); the loss oscillates high instead of settling."""
    model = relu_mlp(seed)
    return _setup(model, torch.optim.Adam(model.parameters(), lr=0.05), _updates(size, 900, 300))


def spike_damage(size: str, seed: int) -> Setup:
    """SGD at η = 2.0: a spike at update 41 (loss 19.7, ‖g‖ ×9; seed 0, size "full") drives every
    hidden ReLU dead; the net then predicts the label frequencies (loss log 10) for good."""
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=2.0), _updates(size, 900, 300))


def vanishing_sigmoid(size: str, seed: int) -> Setup:
    """Ten Linear layers with nine sigmoids between them: σ' ≤ 1/4 per layer, so the first layer's
    gradient is ≲ 4⁻⁹ of the last's (Glorot & Bengio 2010)."""
    model = mlp(64, [32] * 9, 10, activation="sigmoid", seed=seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _updates(size, 900, 300))


def dead_relu(size: str, seed: int) -> Setup:
    """ReLU MLP with its hidden biases at −5: almost every unit's input is negative for every
    sample, so almost no gradient reaches the hidden layers."""
    model = relu_mlp(seed, bias=-5.0)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _updates(size, 900, 300))


def unstandardised_wine(size: str, seed: int) -> Setup:
    """Softmax regression on raw wine features (proline ~750, hue ~1): the Hessian's condition
    number is ~10⁶, so the η stable for the steep direction crawls along the flat ones — the
    lecture's elongated error surface, cured by standardising the features."""
    data = load("wine", test_fraction=0.2, seed=0, standardize=False)
    model = mlp(13, [], 3, seed=seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=1e-6), _updates(size, 800, 300), data=data,
                  batch_size=16)


def batch_noise(size: str, seed: int) -> Setup:
    """Batches of 2 at η = 0.1: the gradient noise of two samples swamps the mean gradient
    (batch ≪ B_simple, McCandlish et al. 2018); the same η with batch 64 trains."""
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _updates(size, 900, 300), batch_size=2)


def shuffled_labels(size: str, seed: int) -> Setup:
    """Labels permuted at random: the input carries no information about them, so no held-out loss
    falls below the label entropy (Zhang et al. 2017, "Understanding deep learning requires
    rethinking generalization")."""
    train, test = _digits()
    g = torch.Generator().manual_seed(1234)
    x, y = train.tensors
    train = TensorDataset(x, y[torch.randperm(len(y), generator=g)])
    x, y = test.tensors
    test = TensorDataset(x, y[torch.randperm(len(y), generator=g)])
    model = relu_mlp(seed)
    return _setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), _updates(size, 900, 300),
                  data=(train, test))


def exploding_rnn(size: str, seed: int) -> Setup:
    """An Elman ReLU RNN reading a digit two pixels at a time (32 steps), its recurrent matrix
    scaled to spectral radius 1.3: the backward pass multiplies by up to ~1.3 per step (1.3³² ≈ 4,000),
    the gradient grows by orders of magnitude and SGD without clipping blows up (Pascanu et al. 2013)."""
    model = RowRNN(seed, radius=1.3 if size == "full" else 1.5, steps=32)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.05), _updates(size, 600, 300))


class RowRNN(nn.Module):
    """``nn.RNN`` (ReLU, 64 hidden) over the eight 8-pixel rows of a digit, then a linear read-out;
    ``radius`` rescales the recurrent matrix to that spectral radius (``None``: PyTorch's init)."""

    def __init__(self, seed: int, radius: float | None = None, hidden: int = 64, steps: int = 8):
        super().__init__()
        self.steps = steps
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.rnn = nn.RNN(64 // steps, hidden, nonlinearity="relu", batch_first=True)
            self.out = nn.Linear(hidden, 10)
        if radius is not None:
            with torch.no_grad():
                w = self.rnn.weight_hh_l0
                w.mul_(radius / torch.linalg.eigvals(w).abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x.reshape(len(x), self.steps, -1))
        return self.out(h[:, -1])


# ------------------------------------------------------------------ healthy controls
def healthy_sgd(size: str, seed: int) -> Setup:
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.05), _updates(size, 900, 300))


def healthy_momentum(size: str, seed: int) -> Setup:
    model = relu_mlp(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), _updates(size, 900, 300))


def healthy_adam(size: str, seed: int) -> Setup:
    model = relu_mlp(seed)
    return _setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), _updates(size, 900, 300))


def healthy_adamw_cosine(size: str, seed: int) -> Setup:
    model = relu_mlp(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    updates = _updates(size, 900, 300)
    return _setup(model, opt, updates, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, updates))


def healthy_bn_cnn(size: str, seed: int) -> Setup:
    model = small_cnn(channels=(16, 32), batch_norm=True, seed=seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), _updates(size, 600, 200))


def healthy_wine(size: str, seed: int) -> Setup:
    data = load("wine", test_fraction=0.2, seed=0, standardize=True)
    model = mlp(13, [], 3, seed=seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _updates(size, 800, 300), data=data,
                  batch_size=16)


def healthy_rnn(size: str, seed: int) -> Setup:
    model = RowRNN(seed)
    return _setup(model, torch.optim.SGD(model.parameters(), lr=0.05), _updates(size, 900, 300))


CASES = [
    Case("saddle_zero_init", "saddle", "mlp", saddle_zero_init, control="healthy_sgd", onset=0,
         why="all weights zero: a saddle of the tanh MLP, gradient zero for every weight (lecture: critical points)"),
    Case("mse_softmax_plateau", "plateau", "mlp", mse_softmax_plateau, control="healthy_sgd", onset=0,
         why="MSE on softmax, η=0.01: a flat error surface (lecture: classification, MSE vs cross-entropy)"),
    Case("crawl", "step_too_small", "mlp", crawl, control="healthy_sgd", onset=0,
         why="SGD η=1e-5: η·λ_max ≪ 1, every step far shorter than the curvature allows (lecture: learning rate)"),
    Case("too_large", "step_too_large", "mlp", too_large, control="healthy_adam", onset=164,
         why="Adam η=0.05: preconditioned η·λ_max above 2(1+β₁)/(1−β₁), oscillation (Cohen et al. 2022)"),
    Case("spike_damage", "spike_damage", "mlp", spike_damage, control="healthy_sgd", onset=41,
         why="SGD η=2.0: one spike kills the hidden ReLUs, the loss sits at log 10 after it"),
    Case("vanishing_sigmoid", "vanishing_gradient", "mlp", vanishing_sigmoid, control="healthy_sgd", onset=0,
         why="nine sigmoid layers: σ' ≤ 1/4 per layer shrinks the first layers' gradients (Glorot & Bengio 2010)"),
    Case("exploding_rnn", "exploding_gradient", "rnn", exploding_rnn, control="healthy_rnn", onset=114,
         why="ReLU RNN over 32 steps, recurrent spectral radius 1.3, no clipping: the gradient blows up (Pascanu et al. 2013)"),
    Case("dead_relu", "dead_units", "mlp", dead_relu, control="healthy_sgd", onset=0,
         why="hidden biases −5: almost every ReLU is off for every sample (lecture: initialisation)"),
    Case("unstandardised_wine", "ill_conditioned_features", "linear", unstandardised_wine, control="healthy_wine",
         onset=0, why="raw wine features (scales 0.1–1,000): an elongated bowl, condition ~10⁶ (lecture: normalisation)"),
    Case("batch_noise", "batch_noise", "mlp", batch_noise, control="healthy_sgd", onset=315,
         why="batch 2 at η=0.1: far below the noise scale B_simple (McCandlish et al. 2018)"),
    Case("shuffled_labels", "no_signal", "mlp", shuffled_labels, control="healthy_adam", onset=0,
         why="labels permuted: no input information, held-out loss ≥ label entropy (Zhang et al. 2017)"),
    Case("healthy_sgd", None, "mlp", healthy_sgd, why="ReLU MLP, SGD η=0.05"),
    Case("healthy_momentum", None, "mlp", healthy_momentum, why="ReLU MLP, SGD η=0.05, momentum 0.9"),
    Case("healthy_adam", None, "mlp", healthy_adam, why="ReLU MLP, Adam η=1e-3"),
    Case("healthy_adamw_cosine", None, "mlp", healthy_adamw_cosine, why="ReLU MLP, AdamW η=3e-3, cosine decay"),
    Case("healthy_bn_cnn", None, "cnn", healthy_bn_cnn, why="CNN with BatchNorm, SGD momentum"),
    Case("healthy_wine", None, "linear", healthy_wine, why="softmax regression on standardised wine features"),
    Case("healthy_rnn", None, "rnn", healthy_rnn, why="ReLU RNN over 8 rows, PyTorch's init, SGD η=0.05"),
]
