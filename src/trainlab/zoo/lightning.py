"""Zoo cases with a Lightning module: a small CNN on digits trained by Lightning's ``Trainer``
(extra ``trainlab[lightning]``; ``lightning`` is imported only when a case is built)."""

from __future__ import annotations

import torch

from trainlab.data import load_digits
from trainlab.nn import cross_entropy, small_cnn
from trainlab.zoo.case import Case, Setup


def _module(seed: int, lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    import lightning as L

    class LitCNN(L.LightningModule):
        """``small_cnn`` as a LightningModule; records its training losses and gradient norms in the
        lists the zoo's runner gives it (``zoo_losses``, ``zoo_grad_norms``)."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net
            self.zoo_losses: list[float] = []
            self.zoo_grad_norms: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = cross_entropy(self(x), y)
            self.zoo_losses.append(loss.item())
            return loss

        def on_after_backward(self) -> None:
            squares = [p.grad.double().pow(2).sum() for p in self.parameters() if p.grad is not None]
            self.zoo_grad_norms.append(float(torch.stack(squares).sum().sqrt()))

        def configure_optimizers(self):
            return self.zoo_optimizer

    module = LitCNN(small_cnn(channels=(16, 32), seed=seed))
    module.zoo_optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    return module, module.zoo_optimizer


def _lit(size: str, seed: int, lr: float) -> Setup:
    module, opt = _module(seed, lr)
    train, test = load_digits(test_fraction=0.2, seed=0)
    return Setup(module, opt, None, train, test, 400 if size == "full" else 120, 32, loss_fn=cross_entropy,
                 framework="lightning")


def lightning_crawl(size: str, seed: int) -> Setup:
    """A Lightning CNN at SGD η = 1e-4: a crawl (the issue's Lightning case)."""
    return _lit(size, seed, 1e-4)


def lightning_healthy(size: str, seed: int) -> Setup:
    return _lit(size, seed, 0.05)


CASES = [
    Case("lightning_crawl", "step_too_small", "lightning", lightning_crawl, control="lightning_healthy", onset=0,
         why="Lightning CNN, SGD η=1e-4: steps far too short"),
    Case("lightning_healthy", None, "lightning", lightning_healthy, why="Lightning CNN, SGD η=0.05"),
]
