"""Work done by each rank in the two-process tests (spawned; must be importable by name)."""

import os

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import trainlab as tl

N, B, STEPS = 160, 4, 20  # 160 samples, per-rank batch 4: 20 updates per epoch with 2 ranks


def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    return x, y


def model(seed=0):
    return tl.nn.mlp(6, [5], 3, activation="tanh", seed=seed).double()


def curvature_results(x, y, net):
    v = torch.randn(sum(p.numel() for p in net.parameters()), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    top = tl.curvature.eigs(net, F.cross_entropy, (x, y), k=3, which="largest", tol=1e-10)
    bottom = tl.curvature.eigs(net, F.cross_entropy, (x, y), k=3, which="smallest", tol=1e-10)
    return {"gradient": tl.curvature.gradient(net, F.cross_entropy, (x, y)),
            "hvp": tl.curvature.hvp(net, F.cross_entropy, (x, y), v), "top": top.values, "bottom": bottom.values}


def training_result(x, y, batch_size, seed=0):
    net = model(seed)
    trainer = tl.train.Trainer(net, tl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), F.cross_entropy,
                               TensorDataset(x, y), batch_size, epochs=1, seed=seed, progress=False, device="cpu")
    trainer.fit()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach(), trainer.step


def run(rank, world, port, out, scenario):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    tl.distributed.init("gloo")  # CPU processes, also on a machine with GPUs
    try:
        x, y = problem()
        if scenario == "curvature":
            result = curvature_results(x[rank::world], y[rank::world], model())
            result["params"], result["steps"] = training_result(x, y, B)
        elif scenario == "mismatch":
            try:
                tl.curvature.gradient(model() if rank == 0 else tl.nn.mlp(6, [7], 3).double(), F.cross_entropy,
                                      (x, y))
                result = {"error": None}
            except tl.errors.ConfigError as e:
                result = {"error": str(e)}
        elif scenario == "resume":
            result = {}
            for name, plan in (("whole", [(4, False)]), ("split", [(2, False), (4, True)])):
                for epochs, resume in plan:
                    net = model()
                    trainer = tl.train.Trainer(net, tl.optim.Adam(net.parameters(), lr=0.01), F.cross_entropy,
                                               TensorDataset(x, y), B, epochs, seed=0, progress=False, device="cpu",
                                               out=os.path.join(out, name), resume=resume)
                    trainer.fit()
                result[name] = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
        else:  # "too_many": more ranks than samples
            try:
                tl.curvature.gradient(model(), F.cross_entropy, (x[:1], y[:1]) if rank == 0 else (x[:0], y[:0]))
                result = {"error": None}
            except tl.errors.ConfigError as e:
                result = {"error": str(e)}
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()
