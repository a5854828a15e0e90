"""Two CPU processes (gloo, loopback) against one process on the same data."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import dist_worker
import trainlab as tl
from trainlab.errors import ConfigError


def spawn(scenario, tmp_path, world=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(dist_worker.run, args=(world, port, str(tmp_path), scenario), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return spawn("curvature", tmp_path_factory.mktemp("dist"))


def test_gradient_and_hvp_equal_one_process(two_ranks):
    x, y = dist_worker.problem()
    single = dist_worker.curvature_results(x, y, dist_worker.model())
    for rank in two_ranks:  # every rank holds the full-data result
        torch.testing.assert_close(rank["gradient"], single["gradient"], rtol=0, atol=1e-10)
        torch.testing.assert_close(rank["hvp"], single["hvp"], rtol=0, atol=1e-10)


def test_extreme_eigenvalues_equal_one_process(two_ranks):
    x, y = dist_worker.problem()
    single = dist_worker.curvature_results(x, y, dist_worker.model())
    for rank in two_ranks:
        torch.testing.assert_close(rank["top"], single["top"], rtol=1e-8, atol=0)
        torch.testing.assert_close(rank["bottom"], single["bottom"], rtol=1e-8, atol=0)


def test_ddp_steps_equal_single_process_steps_at_twice_the_batch(two_ranks):
    x, y = dist_worker.problem()
    params, steps = dist_worker.training_result(x, y, 2 * dist_worker.B)
    assert steps == dist_worker.STEPS
    for rank in two_ranks:
        assert rank["steps"] == dist_worker.STEPS
        torch.testing.assert_close(rank["params"], params, rtol=0, atol=1e-6)


def test_resume_under_two_processes_is_bitwise(tmp_path):
    results = spawn("resume", tmp_path)
    for rank in results:
        assert torch.equal(rank["whole"], rank["split"])
    assert (tmp_path / "split" / "checkpoint.pt").exists() and (tmp_path / "split" / "metrics.jsonl").exists()
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # written by rank 0 only, once per epoch


def test_ranks_with_different_models_get_one_clear_error(tmp_path):
    results = spawn("mismatch", tmp_path)
    assert all(r["error"] and "ranks hold different models" in r["error"] for r in results)


def test_more_ranks_than_samples(tmp_path):
    results = spawn("too_many", tmp_path)
    assert all(r["error"] and "world size 2 is larger than the 1 samples" in r["error"] for r in results)


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert tl.distributed.init() is False and not tl.distributed.active()
    with pytest.raises(ConfigError, match="distributed=True needs an initialised process group"):
        tl.distributed.active(True)


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_backend_is_nccl_only_with_a_gpu_for_every_local_process(monkeypatch, gpus):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    choose = tl.distributed.choose_backend
    for local_world in (1, 2, 4):
        if gpus >= local_world:
            assert choose(None, 0, local_world) == "nccl"
        elif gpus:
            with pytest.warns(UserWarning, match=f"{local_world} processes on this node but {gpus} GPU"):
                assert choose(None, 0, local_world) == "gloo"
        else:
            assert choose(None, 0, local_world) == "gloo"
    assert choose("gloo", 3, 4) == "gloo"
    with pytest.raises(ConfigError, match="backend 'mpi' is not allowed"):
        choose("mpi", 0, 1)
    if gpus == 0:
        with pytest.raises(ConfigError, match="backend 'nccl' needs CUDA"):
            choose("nccl", 0, 1)
    else:
        assert choose("nccl", gpus - 1, gpus) == "nccl"
        with pytest.raises(ConfigError, match=f"LOCAL_RANK={gpus} and only {gpus} GPU"):
            choose("nccl", gpus, gpus + 1)


def test_instruments_read_the_union_of_the_ranks_samples(tmp_path):
    """Every rank reads what one process reads on all the ranks' samples together (float64)."""
    x, y = dist_worker.problem()
    single = dist_worker.instrument_readings(x, y, dist_worker.units_model())
    assert 0 < single["units"]["value"] < 0.5 and single["units"]["parts"]  # one unit of five dead, not two
    for rank in spawn("instruments", tmp_path):
        got = rank["readings"]
        assert set(got) == set(single)
        for name, reading in single.items():
            assert got[name]["value"] == pytest.approx(reading["value"], rel=1e-8, abs=1e-12), name
        assert got["units"]["parts"] == single["units"]["parts"]
        assert got["noise_scale"]["samples"] == len(y)
        assert got["grad_norm"]["parts"] == pytest.approx(single["grad_norm"]["parts"], rel=1e-8)


def test_the_doctors_confirming_loss_is_the_same_on_every_rank(tmp_path):
    """A mini-batch stall is confirmed on the sample loss; ranks that disagreed would enter the
    (collective) diagnosis alone and hang. It is the mean over all ranks' samples."""
    x, y = dist_worker.problem()
    ranks = spawn("doctor_sample_loss", tmp_path)
    union = torch.cat([x[0::2][:50], x[1::2][:50]]), torch.cat([y[0::2][:50], y[1::2][:50]])
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(dist_worker.model()(union[0]), union[1]))
    assert ranks[0]["loss"] == ranks[1]["loss"] == pytest.approx(expected, rel=1e-12)


def test_a_watched_ddp_loop_reads_as_the_trainer_and_rank_0_writes(tmp_path):
    """Two gloo ranks: trainlab.watch on a plain DistributedDataParallel loop writes (rank 0 only) the
    readings the Trainer's Monitor writes on the same updates (float64, 1e-10)."""
    import json

    ranks = spawn("watch", tmp_path)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * dist_worker.STEPS
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])

    def lines(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    watched, trained = lines(tmp_path / "watched" / "instruments.jsonl"), lines(tmp_path / "trainer" / "instruments.jsonl")
    assert [(r["step"], r["instrument"]) for r in watched] == [(r["step"], r["instrument"]) for r in trained]
    assert len({r["instrument"] for r in watched}) == 8
    for a, b in zip(watched, trained):
        assert a["value"] == pytest.approx(b["value"], rel=1e-10), (a["step"], a["instrument"])
    steps = lines(tmp_path / "watched" / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 2 * dist_worker.STEPS + 1))  # once, by rank 0
    summary = json.loads((tmp_path / "watched" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 * dist_worker.STEPS


def test_a_refused_run_directory_stops_every_rank_together(tmp_path):
    """Rank 0's directory holds a run, rank 1 names none: both refuse at once, none waits in a collective."""
    ranks = spawn("watch_refused", tmp_path)
    assert "already holds steps.jsonl" in ranks[0]["error"]
    assert "1 other rank(s) refused their run directory" in ranks[1]["error"]
    assert (tmp_path / "taken" / "steps.jsonl").read_text() == '{"step": 1}\n'
