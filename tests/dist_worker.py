"""Work done by each rank in the two-process tests (spawned; must be importable by name)."""

import os
import sys

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


def units_model():
    """A ReLU MLP with one unit dead everywhere and one alive only where x₀ > 2.2 (two samples, both on rank 0's share,
    not on every rank's share): units is right only if ranks agree on which units are stuck."""
    net = tl.nn.mlp(6, [5], 3, activation="relu", seed=0).double()
    first = next(m for m in net if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight[0].zero_()
        first.bias[0] = -1.0
        first.weight[1] = torch.tensor([10.0, 0, 0, 0, 0, 0], dtype=torch.float64)
        first.bias[1] = -22.0
    return net


def instrument_readings(x, y, net, optimizer=None):
    """Every instrument that reads the sample, once, on ``(x, y)`` (the whole of it)."""
    from trainlab.instruments import GradNorm, HessianTrace, Monitor, Sharpness, Stability, Units
    from trainlab.instruments.noise import GSNR, NoiseScale

    optimizer = optimizer or torch.optim.SGD(net.parameters(), lr=0.1)
    monitor = Monitor(every=1, sample=len(y), seed=0, progress=False,
                      instruments=[GradNorm(), NoiseScale(every=1), GSNR(every=1), Units(), Sharpness(every=1, tol=1e-10),
                                   Stability(every=1, tol=1e-10), HessianTrace(every=1, samples=12)])
    readings = monitor.after_step(net, 0.0, F.cross_entropy, (x, y), optimizer, batch_size=8)
    return {r.instrument: {"value": r.value, **{k: v for k, v in r.extra.items() if k in ("parts", "trace_sigma",
                                                                                          "samples", "coordinates")}}
            for r in readings}


def watched_and_trained(out, rank, world, epochs=2):
    """The same data-parallel run twice, each with a Monitor of every instrument: by the Trainer, and by a
    plain loop (DistributedDataParallel, the Trainer's batches of this rank) under ``trainlab.watch``."""
    from torch.nn.parallel import DistributedDataParallel

    from trainlab.instruments import Monitor

    x, y = problem()
    data = TensorDataset(x, y)
    monitor = lambda: Monitor(every=1, instruments="full", progress=False)  # noqa: E731
    net = model()
    tl.train.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.5), F.cross_entropy, data, B, epochs,
                     seed=0, device="cpu", callbacks=[monitor()], out=os.path.join(out, "trainer"),
                     progress=False).fit()
    net = model()
    ddp = DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.5)
    gen = torch.Generator().manual_seed(0)
    shard = -(-N // world)
    # rank 0 alone names the run directory, as loops often do
    with tl.watch(ddp, opt, F.cross_entropy, data, out=os.path.join(out, "watched") if rank == 0 else None,
                  monitor=monitor(), batch_size=B) as w:
        for _ in range(epochs):
            order = torch.randperm(N, generator=gen)
            mine = torch.cat([order, order[:shard * world - N]])[rank::world]  # as the Trainer deals it
            for i in range(0, shard, B):
                idx = mine[i:i + B]
                loss = F.cross_entropy(ddp(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                w.log(loss=loss)
    return {"steps": w.step, "params": torch.nn.utils.parameters_to_vector(net.parameters()).detach()}


def run(rank, world, port, out, scenario):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    tl.distributed.init("gloo")  # CPU processes, also on a machine with GPUs
    try:
        x, y = problem()
        if scenario == "curvature":
            result = curvature_results(x[rank::world], y[rank::world], model())
            result["params"], result["steps"] = training_result(x, y, B)
        elif scenario == "instruments":
            result = {"readings": instrument_readings(x[rank::world], y[rank::world], units_model())}
        elif scenario == "doctor_sample_loss":  # each rank's own shard: the confirming loss must agree
            doctor = tl.train.StallDoctor(max_samples=50)
            result = {"loss": doctor._sample_loss(model(), F.cross_entropy, (x[rank::world], y[rank::world]))}
        elif scenario == "watch":
            result = watched_and_trained(out, rank, world)
        elif scenario == "watch_refused":  # rank 0's directory holds a run; rank 1 names none
            taken = os.path.join(out, "taken")
            if rank == 0:
                os.makedirs(taken, exist_ok=True)
                with open(os.path.join(taken, "steps.jsonl"), "w") as f:
                    f.write('{"step": 1}\n')
            torch.distributed.barrier()
            net = model()
            try:
                tl.watch(net, torch.optim.SGD(net.parameters(), lr=0.1), out=taken if rank == 0 else None, monitor=None)
                result = {"error": None}
            except tl.errors.ConfigError as e:
                result = {"error": str(e)}
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
    # Why: the interpreter's teardown after gloo and torch.func's threads has aborted a finished worker
    # ("terminate called without an active exception", SIGABRT) now and then; its results are saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
