"""Overlapped communication: ``MegatronComm.g_start`` / ``wait()`` (the Ladder residual's
asynchronous g) gives g's values and gradients, the meter tells exposed from hidden
communication, and the cost model's overlap term.

Multi-process checks spawn gloo workers (the harness of test_parallel.py); the assertions run
here, in the pytest process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from falstudy.parallel import costmodel, overlap
from falstudy.parallel.comm import FWD, CommMeter, Launch, MegatronComm, Ready
from test_parallel import free_port, init_worker, launch, read, run_workers, write  # noqa: E402  (tests/ is on sys.path)


# -- workers ---------------------------------------------------------------------------------
def _busy(n: int, work: torch.Tensor) -> None:
    """Compute without sleeping: n matmuls."""
    for _ in range(n):
        work = torch.tanh(work @ work)


def _overlap_worker(rank: int, port: int, out_dir: str) -> None:
    ctx = init_worker(rank, 2, port, tp=2, dp=1)
    res: dict = {}

    # g_start(...).wait() equals g, forward and backward; both metered as one all_reduce_fwd
    meter = CommMeter()
    comm = MegatronComm(ctx.tp_group, meter, tag="blocks.0")
    torch.manual_seed(rank)  # a different partial sum on each rank
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5, 5)
    torch.manual_seed(10)
    c = torch.randn(3, 5)  # the same downstream weights on every rank (a replicated loss)
    y_sync = comm.g(x @ w)
    (g_sync,) = torch.autograd.grad((y_sync * c).sum(), x)
    pending = comm.g_start(x @ w)
    y_async = pending.wait()
    assert pending.wait() is y_async  # waiting again is free
    (g_async,) = torch.autograd.grad((y_async * c).sum(), x)
    res["value"] = float((y_async - y_sync).detach().abs().max())
    res["grad"] = float((g_async - g_sync).abs().max())
    res["grad_scale"] = float(g_sync.abs().max())
    res["counts"] = meter.by_tag()

    # the behaviour under test: an all-reduce launched before compute that outlasts it is hidden.
    # The ranks take turns to lead: the leader launches at once, the other first computes a
    # little, so the leader's all-reduce cannot finish before the other launches; the leader then
    # computes five times as long before waiting.
    work = torch.randn(256, 256) / 16
    rows = {"async": [], "sync": []}
    for trial in range(6):
        leader = trial % 2
        for mode in ("async", "sync"):
            m = CommMeter()
            comm = MegatronComm(ctx.tp_group, m, tag="t")
            t = torch.full((1024,), float(rank + 1))
            dist.barrier(group=ctx.tp_group)
            if rank != leader:
                _busy(20, work)
            if mode == "async":
                p = comm.g_start(t)
                _busy(100 if rank == leader else 0, work)
                out = p.wait()
            else:
                out = comm.g(t)
                _busy(100 if rank == leader else 0, work)
            assert float(out[0]) == 3.0
            tot = m.totals()[FWD]
            rows[mode].append({"leader": rank == leader, "in_flight": tot["in_flight_seconds"],
                               "exposed": tot["exposed_seconds"], "seconds": tot["seconds"]})
    res["rows"] = rows
    write(out_dir, rank, res)
    launch.shutdown()


@pytest.fixture(scope="module")
def overlap_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("overlap")
    run_workers(_overlap_worker, 2, free_port(), str(out), timeout=120)
    return [read(out, 0), read(out, 1)]


# -- tests -----------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_g_start_wait_equals_g(overlap_results):
    for res in overlap_results:
        assert res["value"] < 1e-6 and res["grad"] < 1e-6, res
        assert res["grad_scale"] > 1e-3  # not vacuous
        assert res["counts"] == {"blocks.0": {FWD: 2}}  # one g, one g_start


@pytest.mark.timeout(150)
def test_exposed_below_in_flight_when_compute_outlasts_the_all_reduce(overlap_results):
    for res in overlap_results:
        led = [r for r in res["rows"]["async"] if r["leader"]]
        assert len(led) == 3
        # hidden communication exists: the leader was held up less than its all-reduce was in flight
        assert sum(r["exposed"] for r in led) < sum(r["in_flight"] for r in led), led
        for r in res["rows"]["async"]:
            assert r["seconds"] == r["exposed"] <= r["in_flight"]
        for r in res["rows"]["sync"]:  # a synchronous call hides nothing
            assert r["seconds"] == r["exposed"] == r["in_flight"]


def test_meter_accounts_an_asynchronous_collective():
    m = CommMeter()

    class Work:
        def wait(self):
            pass

    rec = Launch(m, FWD, 400, "blocks.1", cuda=False)
    rec.t0, rec.launch_s, rec.t_waited = 10.0, 0.5, 14.0
    m._finish(rec, t_done=12.0, wait_s=0.25)  # done at 12, waited 0.25 s at 13.75..14
    rec2 = Launch(m, FWD, 400, "blocks.1", cuda=False)
    rec2.t0, rec2.launch_s, rec2.t_waited = 20.0, 0.5, 23.0
    m._finish(rec2, t_done=None, wait_s=1.0)  # no completion callback yet: done when wait returned
    rec3 = Launch(m, FWD, 400, None, cuda=False)
    rec3.t0, rec3.launch_s, rec3.t_waited = 30.0, 0.5, 30.75
    m._finish(rec3, t_done=30.1, wait_s=0.25)  # finished inside its launch: in flight >= exposed
    tot = m.totals()[FWD]
    assert tot["count"] == 3 and tot["bytes"] == 1200
    assert tot["in_flight_seconds"] == pytest.approx(2.0 + 3.0 + 0.75)
    assert tot["exposed_seconds"] == pytest.approx(0.75 + 1.5 + 0.75)
    assert tot["seconds"] == tot["exposed_seconds"]
    assert m.tag_totals()["blocks.1"][FWD]["in_flight_seconds"] == pytest.approx(5.0)
    with m.paused():
        assert m.start(FWD, torch.ones(2)) is None


def test_single_process_g_start_is_ready():
    comm = MegatronComm(None)
    x = torch.ones(3)
    p = comm.g_start(x)
    assert isinstance(p, Ready) and p.wait() is x


# -- the cost model's overlap term -------------------------------------------------------------
def test_overlap_term_hides_behind_the_next_module_only():
    mods = [overlap.Module("a", 10.0, "async"), overlap.Module("b", 5.0, "async"), overlap.Module("c", 1.0, "async")]
    # a behind b (5 s of compute hides all 3 s), b behind c (1 s: 2 s exposed), c is last (3 s)
    assert overlap.exposed_forward(mods, 3.0, 1.0) == (9.0, 5.0)
    sync = [overlap.Module(m.name, m.flops, "sync") for m in mods]
    assert overlap.exposed_forward(sync, 3.0, 1.0) == (9.0, 9.0)


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal"])
@pytest.mark.parametrize("preset", ["pcie4", "nvlink"])
def test_overlap_model_equals_the_plain_model_without_async_collectives(wiring, preset):
    shape = costmodel.GPT2_SHAPES["gpt2-small"]
    plain = costmodel.breakdown(shape, 8, 4, preset, wiring, vocab_parallel=True)
    over = overlap.breakdown(shape, 8, 4, preset, wiring, vocab_parallel=True)
    assert over.total_s == pytest.approx(plain.total_s, rel=1e-12)
    assert over.exposed_s == pytest.approx(plain.comm_s, rel=1e-12) and over.hidden_s == pytest.approx(0.0, abs=1e-15)
    assert over.n_allreduce == plain.n_allreduce


def test_module_flops_add_up_to_the_step():
    shape = costmodel.GPT2_SHAPES["gpt2-medium"]
    attn, mlp = overlap.module_flops(shape, 8, 2)
    head = 3 * 8 * shape.seq_len * 2 * shape.n_embd * shape.vocab_size
    assert 3 * shape.n_layer * (attn + mlp) + head == pytest.approx(costmodel.step_flops(shape, 8, 2), rel=1e-12)


@pytest.mark.parametrize("variant", ["baseline", "parallel", "fal", "fal_first_block_fal", "no_attn", "llama_fal",
                                     "ladder", "fal_ladder"])
def test_forward_modules_match_the_forward_all_reduce_counts(variant):
    from falstudy.config import RunConfig

    cfg = RunConfig(variant=variant, model=dict(n_layer=4, n_embd=32, n_head=4, vocab_size=64, block_size=16)).model
    shape = costmodel.Shape.of(cfg)
    mods = overlap.forward_modules(cfg, shape, 2, 2)
    assert len(mods) == costmodel.allreduce_counts(cfg)["fwd"]  # one forward all-reduce after each module
    assert all(m.reduce == ("async" if "ladder" in variant else "sync") for m in mods)
    if variant == "fal_ladder":  # block 0 is a (serial) ladder block, then one module per block
        assert [m.name for m in mods] == ["blocks.0.attn", "blocks.0.mlp", "blocks.1", "blocks.2", "blocks.3"]


@pytest.mark.parametrize("preset", ["pcie4", "nvlink"])
@pytest.mark.parametrize("tp", [2, 8])
def test_ladder_hides_forward_communication_in_the_cost_model(preset, tp):
    shape = costmodel.GPT2_SHAPES["gpt2-medium"]
    p = {w: overlap.breakdown(shape, 8, tp, preset, w, vocab_parallel=True) for w in ("baseline", "ladder", "fal", "fal_ladder")}
    for plain, ladder in (("baseline", "ladder"), ("fal", "fal_ladder")):
        assert p[ladder].n_allreduce == p[plain].n_allreduce and p[ladder].comm_s == pytest.approx(p[plain].comm_s)
        assert p[ladder].hidden_s > 0 and p[ladder].total_s < p[plain].total_s
        # at most the forward all-reduces but the last one can hide; backward and the head's stay exposed
        fwd = costmodel.allreduce_counts(shape.config(ladder))["fwd"]
        t_ar = costmodel.get_preset(preset).link.allreduce_s(p[ladder].bytes_per_allreduce, tp)
        assert p[ladder].hidden_s <= (fwd - 1) * t_ar * (1 + 1e-12)
    rows = overlap.wide_projection(tps=(tp,), presets=(preset,))
    assert all(r["fal_ladder_over_baseline"] < r["fal_over_baseline"] < 1 for r in rows)
