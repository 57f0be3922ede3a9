"""falstudy.parallel: TP == one process for every variant, exact collective counts (meter and
torch.profiler), DP == one process with the doubled batch, TP x DP, checkpoints across layouts,
launching, bad input, the cost model's counts, concurrent branches.

Multi-process tests spawn (never fork) gloo workers with a deadline; workers write their
findings to JSON and the assertions run here, in the pytest process."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from falstudy.config import ModelConfig, RunConfig
from falstudy.errors import FalstudyError
from falstudy.models import GPT, VARIANTS
from falstudy.parallel import costmodel, launch
from falstudy.parallel.comm import CommMeter
from falstudy.parallel.dp import mesh_ranks, shard_batch
from falstudy.parallel.tp import check_tp

TINY = dict(n_layer=3, n_embd=32, n_head=4, vocab_size=64, block_size=16)
REPO = Path(__file__).resolve().parents[1]


# -- harness ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(fn, nprocs: int, *args, timeout: float = 90.0) -> None:
    """Spawn ``fn(rank, *args)`` in ``nprocs`` processes; fail (and kill them) past the deadline."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__}: workers did not finish within {timeout:.0f}s")


def init_worker(rank: int, world: int, port: int, tp: int, dp: int):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from falstudy.parallel.launch import init_distributed

    # correctness runs: allowed even on a machine with fewer cores than ranks
    return init_distributed(tp=tp, dp=dp, backend="gloo", allow_oversubscribe=True, timeout_s=60)


def tiny_model(variant: str, seed: int = 0) -> GPT:
    """The tiny model, every norm, gate and bias random so each of them matters."""
    torch.manual_seed(seed)
    model = GPT(RunConfig(variant=variant, model=TINY).model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or "gate" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def batch(n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, TINY["vocab_size"], (n, TINY["block_size"]), generator=g),
            torch.randint(0, TINY["vocab_size"], (n, TINY["block_size"]), generator=g))


def max_err(a: dict, b: dict, names) -> float:
    return max((float((a[n] - b[n]).abs().max()) for n in names), default=0.0)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)


def write(out: str, rank: int, data: dict) -> None:
    Path(out, f"rank{rank}.json").write_text(json.dumps(data))


def read(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


# -- workers (module level: spawn imports them by name) -------------------------------------
def _variant_check(ctx, variant: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from falstudy.parallel.tp import gather_grads, parallelize

    ref = tiny_model(variant)
    model = copy.deepcopy(ref)
    meter = CommMeter()
    parallelize(model, ctx.tp_group, meter)
    x, y = batch()
    ref_logits, ref_loss = ref(x, y)
    ref_loss.backward()
    meter.reset()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits, loss = model(x, y)
        loss.backward()
    n_prof = sum(1 for e in prof.events() if e.name == "gloo:all_reduce")
    totals = meter.totals()
    out = {
        "logits": float((logits - ref_logits).detach().abs().max()),
        "loss": abs(loss.item() - ref_loss.item()),
        "fwd": totals.get("all_reduce_fwd", {}).get("count", 0),
        "bwd": totals.get("all_reduce_bwd", {}).get("count", 0),
        "by_tag": meter.by_tag(),
        "profiler": n_prof,
        # all-reduce seconds in flight but not waited for (ladder: launched by g_start, waited later)
        "hidden": {k: v["in_flight_seconds"] - v["exposed_seconds"] for k, v in totals.items()},
    }
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    plan = model.tp_plan
    mine = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    replicated = [n for n in mine if n not in plan.sharded]
    out["replicated_grads"] = max_err(mine, ref_grads, replicated)  # on every rank
    full = gather_grads(model)
    if full is not None:
        out["missing_grads"] = sorted(set(ref_grads) - set(full))
        out["grads"] = max_err(full, ref_grads, [n for n in full if n in ref_grads])
        out["grad_scale"] = max(float(g.abs().max()) for g in ref_grads.values())
    return out


def _checkpoint_check(ctx, out_dir: str) -> dict:
    """Train one step under TP and in one process (AdamW + clipping); gather the state and the
    optimizer to one process; load both back into a fresh TP model and step again."""
    from falstudy.parallel.tp import (clip_grad_norm_, gather_optimizer_state_dict, gather_state_dict,
                                      load_full_optimizer_state_dict, load_full_state_dict, parallelize)

    res: dict = {}
    ref = tiny_model("fal")
    model = parallelize(copy.deepcopy(ref), ctx.tp_group)
    ref_opt, opt = adamw(ref), adamw(model)
    x, y = batch()

    def step(m, o, clip):
        m(x, y)[1].backward()
        norm = clip(m)
        o.step()
        o.zero_grad(set_to_none=True)
        return float(norm)

    n_ref = step(ref, ref_opt, lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05))
    n_tp = step(model, opt, lambda m: clip_grad_norm_(m, 0.05))
    res["grad_norm"] = abs(n_ref - n_tp) / n_ref
    res["clipped"] = n_ref > 0.05
    full = gather_state_dict(model)
    full_opt = gather_optimizer_state_dict(model, opt)
    path = Path(out_dir, "full.pt")
    if full is not None:
        ref_sd = ref.state_dict()
        res["keys_match"] = list(full) == list(ref_sd)
        res["params_after_step"] = max_err(full, ref_sd, ref_sd)
        single = GPT(ref.config)  # a plain process loads what TP saved
        single.load_state_dict(full)
        res["single_logits"] = float((single(x)[0] - ref(x)[0]).detach().abs().max())
        ref_osd = ref_opt.state_dict()
        res["opt_state"] = max(float((full_opt["state"][i][k] - ref_osd["state"][i][k]).abs().max())
                               for i in ref_osd["state"] for k in ("exp_avg", "exp_avg_sq"))
        torch.save({"model": full, "optimizer": full_opt}, path)
    ctx.barrier()
    # back into TP: a fresh model (another init), its own optimizer; then one more step on both
    state = torch.load(path, weights_only=True)
    fresh = parallelize(tiny_model("fal", seed=7), ctx.tp_group)
    load_full_state_dict(fresh, state["model"])
    fresh_opt = adamw(fresh)
    load_full_optimizer_state_dict(fresh, fresh_opt, state["optimizer"])
    res["reloaded_logits"] = float((fresh(x)[0] - ref(x)[0]).detach().abs().max())
    step(ref, ref_opt, lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05))
    step(fresh, fresh_opt, lambda m: clip_grad_norm_(m, 0.05))
    again = gather_state_dict(fresh)
    if again is not None:
        res["params_after_resumed_step"] = max_err(again, ref.state_dict(), again)
    return res


def _error_check(ctx) -> dict:
    from falstudy.parallel.tp import parallelize

    res = {}
    torch.manual_seed(0)
    try:  # tp=2 does not divide n_head=1
        parallelize(GPT(ModelConfig(**{**TINY, "n_head": 1})), ctx.tp_group)
        res["n_head"] = "no error"
    except FalstudyError as err:
        res["n_head"] = str(err)
    torch.manual_seed(ctx.rank)  # a different init on each rank
    try:
        parallelize(GPT(ModelConfig(**TINY)), ctx.tp_group)
        res["seed"] = "no error"
    except FalstudyError as err:
        res["seed"] = str(err)
    return res


def _tp_worker(rank: int, port: int, out_dir: str) -> None:
    ctx = init_worker(rank, 2, port, tp=2, dp=1)
    res = {"variants": {v: _variant_check(ctx, v) for v in VARIANTS}}
    res["checkpoint"] = _checkpoint_check(ctx, out_dir)
    res["errors"] = _error_check(ctx)
    write(out_dir, rank, res)
    launch.shutdown()


def _dp_worker(rank: int, port: int, out_dir: str, tp: int, dp: int) -> None:
    """TP x DP (tp*dp ranks) vs one process with the global batch: one AdamW step (+clipping)."""
    from falstudy.parallel.dp import allreduce_grads, wrap_ddp
    from falstudy.parallel.tp import clip_grad_norm_, gather_state_dict, parallelize

    ctx = init_worker(rank, tp * dp, port, tp=tp, dp=dp)
    variant = "fal"
    x, y = batch(n=2 * dp)  # the global batch: 2 sequences per DP rank
    ref = tiny_model(variant)
    ref_opt = adamw(ref)
    ref(x, y)[1].backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    ref_opt.step()
    ref_sd = ref.state_dict()
    res = {}

    meter = CommMeter()
    model = parallelize(tiny_model(variant), ctx.tp_group, meter)
    opt = adamw(model)
    xs, ys = shard_batch(x, y, ctx.dp_rank, ctx.dp)
    with meter.step():
        model(xs, ys)[1].backward()
        allreduce_grads(model, ctx.dp_group, meter)
        clip_grad_norm_(model, 0.05)
        opt.step()
    res["rows"] = meter.rows("r", 1, ctx.rank)
    full = gather_state_dict(model)
    if full is not None:
        res["hand"] = max_err(full, ref_sd, ref_sd)

    if tp == 1:  # torch DDP gives the same step
        ddp_ref = tiny_model(variant)
        ddp = wrap_ddp(ddp_ref, ctx.dp_group)
        opt = adamw(ddp_ref)
        ddp(xs, ys)[1].backward()
        torch.nn.utils.clip_grad_norm_(ddp_ref.parameters(), 0.05)
        opt.step()
        res["ddp"] = max_err(ddp_ref.state_dict(), ref_sd, ref_sd)
    write(out_dir, rank, res)
    launch.shutdown()


# -- tests: tensor parallel --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tp_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("tp")
    run_workers(_tp_worker, 2, free_port(), str(out), timeout=150)
    return [read(out, 0), read(out, 1)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp2_equals_single_process(tp_results, variant):
    for rank, res in enumerate(tp_results):
        r = res["variants"][variant]
        assert r["logits"] < 1e-5, (rank, r)
        assert r["loss"] < 1e-5, (rank, r)
        assert r["replicated_grads"] < 1e-5, (rank, r)
    r0 = tp_results[0]["variants"][variant]
    assert r0["missing_grads"] == []
    assert r0["grad_scale"] > 1e-3  # the comparison is not vacuous
    assert r0["grads"] < 1e-5, r0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collective_counts_meter_and_profiler(tp_results, variant):
    counts = costmodel.allreduce_counts(RunConfig(variant=variant, model=TINY).model)
    last_source = max(RunConfig(variant=variant, model=TINY).model.fal_source_layers)
    for res in tp_results:
        r = res["variants"][variant]
        assert (r["fwd"], r["bwd"]) == (counts["fwd"], counts["bwd"])
        assert r["profiler"] == r["fwd"] + r["bwd"]  # torch.profiler sees the same gloo all_reduces
        for i, (fwd, bwd) in enumerate(counts["blocks"]):  # the stack's f is paid at the source block
            bwd += counts["stack"] if i == last_source else 0
            tag = r["by_tag"][f"blocks.{i}"]
            assert (tag.get("all_reduce_fwd", 0), tag.get("all_reduce_bwd", 0)) == (fwd, bwd), (i, tag)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_only_ladder_all_reduces_run_behind_compute(tp_results, variant):
    """Ladder blocks launch each forward all-reduce (g_start) and wait one module later, so some
    of its time is in flight while the rank computes; synchronous g and f hide nothing."""
    ladder = RunConfig(variant=variant, model=TINY).model.residual == "ladder"
    hidden = [res["variants"][variant]["hidden"] for res in tp_results]
    for h in hidden:
        assert h.get("all_reduce_bwd", 0.0) == 0.0
        if not ladder:
            assert h.get("all_reduce_fwd", 0.0) == 0.0
    if ladder:  # summed over the ranks: a rank that launches last may find its peer done already
        assert sum(h["all_reduce_fwd"] for h in hidden) > 0


@pytest.mark.timeout(180)
def test_per_block_counts_of_the_paper(tp_results):
    """baseline and fal_plus: 2 + 2 per block; parallel: 1 + 1; fal: 1 + 1 after the first block,
    plus one backward all-reduce for the whole stack."""
    v = {name: tp_results[0]["variants"][name]["by_tag"] for name in ("baseline", "fal_plus", "parallel", "fal")}
    both = lambda tag: (tag.get("all_reduce_fwd", 0), tag.get("all_reduce_bwd", 0))  # noqa: E731
    for i in range(3):
        assert both(v["baseline"][f"blocks.{i}"]) == (2, 2)
        assert both(v["fal_plus"][f"blocks.{i}"]) == (2, 2)
        assert both(v["parallel"][f"blocks.{i}"]) == (1, 1)
    assert both(v["fal"]["blocks.0"]) == (2, 2 + 1)  # baseline block 1 + the stack's f
    assert both(v["fal"]["blocks.1"]) == both(v["fal"]["blocks.2"]) == (1, 1)


@pytest.mark.timeout(180)
def test_checkpoint_across_layouts(tp_results):
    c = tp_results[0]["checkpoint"]
    assert c["clipped"] and c["grad_norm"] < 1e-5  # the TP norm is the full model's norm
    assert c["keys_match"]
    assert c["params_after_step"] < 1e-5
    assert c["single_logits"] < 1e-5
    assert c["opt_state"] < 1e-6
    for res in tp_results:
        assert res["checkpoint"]["reloaded_logits"] < 1e-5
    assert c["params_after_resumed_step"] < 1e-5


@pytest.mark.timeout(180)
def test_tp_bad_input(tp_results):
    for res in tp_results:
        assert "does not divide model.n_head=1" in res["errors"]["n_head"]
        assert "same seed" in res["errors"]["seed"]  # every rank raises, none hangs


# -- tests: data parallel ------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_dp2_equals_doubled_batch(tmp_path):
    run_workers(_dp_worker, 2, free_port(), str(tmp_path), 1, 2, timeout=100)
    r0, r1 = read(tmp_path, 0), read(tmp_path, 1)
    assert r0["hand"] < 1e-6 and r1["hand"] < 1e-6
    assert r0["ddp"] < 1e-6 and r1["ddp"] < 1e-6
    kinds = {row["kind"]: row for row in r0["rows"]}
    assert kinds["dp_all_reduce"]["count"] == 1  # one flat all-reduce of all gradients
    assert set(kinds) == {"dp_all_reduce", "compute", "step"}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_tp2_x_dp2_equals_one_process(tmp_path):
    """4 ranks on this 2-core machine: correctness only (allow_oversubscribe), never timing."""
    run_workers(_dp_worker, 4, free_port(), str(tmp_path), 2, 2, timeout=140)
    for rank in (0, 2):  # TP rank 0 of each DP replica holds the gathered state
        # after one AdamW step (update ~ lr * g / |g|): summation order over 4 ranks moves
        # near-zero gradients' updates by ~1e-6 (measured up to 1.2e-6), so the issue's 1e-5
        assert read(tmp_path, rank)["hand"] < 1e-5
    kinds = {row["kind"]: row["count"] for row in read(tmp_path, 1)["rows"]}
    counts = costmodel.allreduce_counts(RunConfig(variant="fal", model=TINY).model)
    assert kinds["all_reduce_fwd"] == counts["fwd"] and kinds["all_reduce_bwd"] == counts["bwd"]
    assert kinds["dp_all_reduce"] == 1 and kinds["norm_all_reduce"] == 1


# -- tests: launching ------------------------------------------------------------------------------
def test_layout_tp_ranks_adjacent():
    tp_groups, dp_groups = mesh_ranks(8, tp=4, dp=2)
    assert tp_groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert dp_groups == [[0, 4], [1, 5], [2, 6], [3, 7]]
    with pytest.raises(FalstudyError, match="world size 6"):
        mesh_ranks(6, tp=4, dp=2)


def test_shard_batch_slices_the_global_batch():
    x = torch.arange(8).view(4, 2)
    assert shard_batch(x, None, 1, 2)[0].tolist() == [[4, 5], [6, 7]]
    with pytest.raises(FalstudyError, match="not divisible by dp=3"):
        shard_batch(x, x, 0, 3)


def test_torchrun_command(monkeypatch):
    cmd = launch.torchrun_command(2, 1, argv=["train.py", "--tp", "2"], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py", "--tp", "2"]
    cmd = launch.torchrun_command(4, 2, nnodes=2, rdzv_endpoint="h0:29500", argv=["-m", "falstudy.cli", "train"], python="py")
    assert cmd[3:] == ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=h0:29500", "--nproc-per-node=4",
                       "-m", "falstudy.cli", "train"]
    with pytest.raises(FalstudyError, match="rdzv_endpoint"):
        launch.torchrun_command(2, 2, nnodes=2, argv=["x.py"])
    with pytest.raises(FalstudyError, match="split evenly"):
        launch.torchrun_command(3, 1, nnodes=2, rdzv_endpoint="h:1", argv=["x.py"])


def test_relaunch_refuses_more_ranks_than_cores(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(launch, "cpu_cores", lambda: 2)
    calls = []
    with pytest.raises(FalstudyError, match="4 ranks on this host but only 2 cores"):
        launch.maybe_relaunch(2, 2, argv=["x.py"], exec_fn=lambda *a: calls.append(a))
    assert calls == []
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launch.maybe_relaunch(2, 2, allow_oversubscribe=True, argv=["x.py"], exec_fn=lambda *a: calls.append(a))
    assert calls and calls[0][1][-1] == "x.py" and "--nproc-per-node=4" in calls[0][1]
    monkeypatch.delenv(launch.OVERSUBSCRIBE_ENV)
    launch.maybe_relaunch(1, 1, argv=["x.py"], exec_fn=lambda *a: pytest.fail("no relaunch for one process"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    launch.maybe_relaunch(2, 1, argv=["x.py"], exec_fn=lambda *a: pytest.fail("inside torchrun: no relaunch"))


def test_init_distributed_bad_input(monkeypatch):
    with pytest.raises(FalstudyError, match="unknown distributed backend 'mpi2'"):
        launch.init_distributed(2, backend="mpi2")
    if not torch.cuda.is_available():
        with pytest.raises(FalstudyError, match="nccl needs CUDA"):
            launch.init_distributed(2, backend="nccl")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(FalstudyError, match="launch with torchrun"):
        launch.init_distributed(2)
    ctx = launch.init_distributed(1)  # one process: no process group at all
    assert not ctx.distributed and ctx.is_main and ctx.world == 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(FalstudyError, match="started 3 processes but tp x dp"):
        launch.init_distributed(2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(launch, "cpu_cores", lambda: 2)
    monkeypatch.delenv(launch.OVERSUBSCRIBE_ENV, raising=False)
    with pytest.raises(FalstudyError, match="only 2 cores"):
        launch.init_distributed(2, 2)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_relaunch_under_torchrun_end_to_end(tmp_path):
    """A script calling maybe_relaunch(tp=2) comes back as two ranks with their groups."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from falstudy.parallel.launch import maybe_relaunch, init_distributed, shutdown
        maybe_relaunch(tp=2, allow_oversubscribe=True)
        ctx = init_distributed(tp=2)
        t = torch.ones(1)
        dist.all_reduce(t, group=ctx.tp_group)
        print(f"rank={ctx.rank} tp_rank={ctx.tp_rank} sum={int(t.item())} threads={torch.get_num_threads()} "
              f"args={sys.argv[1:]}", flush=True)
        shutdown()
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, str(script), "--flag"], capture_output=True, text=True, env=env, timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    lines = sorted(re.findall(r"rank=\d tp_rank=\d sum=\d threads=\d+ args=\[[^\]]*\]", proc.stdout))  # ranks interleave
    threads = max(1, launch.cpu_cores() // 2)
    assert lines == [f"rank={r} tp_rank={r} sum=2 threads={threads} args=['--flag']" for r in (0, 1)]


# -- tests: single process ---------------------------------------------------------------------------
def test_check_tp_names_the_problem():
    with pytest.raises(FalstudyError, match=r"tp=3 does not divide model.n_head=4; use tp in \[1, 2, 4\]"):
        check_tp(ModelConfig(**TINY), 3)
    with pytest.raises(FalstudyError, match="MLP width"):
        check_tp(ModelConfig(**{**TINY, "mlp_ratio": 1.5, "n_embd": 36, "n_head": 4}), 4)  # width 54
    check_tp(ModelConfig(**TINY), 4)


def test_parallelize_without_process_group_is_a_no_op():
    from falstudy.parallel.tp import clip_grad_norm_, gather_state_dict, parallelize

    ref = tiny_model("fal")
    model = parallelize(copy.deepcopy(ref), None)  # tp=1: the trainer can always call it
    x, y = batch()
    assert torch.equal(model(x)[0], ref(x)[0])
    model(x, y)[1].backward()
    ref(x, y)[1].backward()
    assert torch.allclose(clip_grad_norm_(model, 1.0), torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0))
    assert gather_state_dict(model).keys() == ref.state_dict().keys()


def test_meter_rows():
    m = CommMeter()
    with m.step():
        m.add("all_reduce_fwd", 100, 0.25, tag="blocks.0")
        m.add("all_reduce_bwd", 100, 0.5, tag="blocks.0")
        time.sleep(0.01)
    m.step_seconds = 2.0  # a known step time
    rows = {r["kind"]: r for r in m.rows("run", 7, 1)}
    assert rows["all_reduce_fwd"] == {"run_id": "run", "step": 7, "rank": 1, "kind": "all_reduce_fwd",
                                      "count": 1, "bytes": 100, "seconds": 0.25,
                                      "in_flight_seconds": 0.25, "exposed_seconds": 0.25}  # synchronous
    assert rows["compute"]["seconds"] == pytest.approx(1.25) and rows["step"]["seconds"] == 2.0
    assert rows["compute"]["exposed_seconds"] is None  # not a collective
    assert m.rows("run", 8, 1) == []  # reset after reading
    with m.paused():
        with m.timed("all_reduce_fwd", torch.ones(4)):
            pass
    assert m.totals() == {}


def test_measure_compute_restores_the_comms():
    from falstudy.parallel.tp import parallelize

    model = parallelize(tiny_model("fal"), None)
    comms = [b.comm for b in model.blocks]
    x, y = batch()
    seconds = costmodel.measure_compute(lambda: model(x, y)[1].backward(), model, reps=2, warmup=1)
    assert seconds > 0 and [b.comm for b in model.blocks] == comms


def test_allreduce_counts_per_wiring():
    def c(**kw):
        r = costmodel.allreduce_counts(ModelConfig(**{**TINY, "n_layer": 12, **kw}))
        return r["fwd"], r["bwd"]

    assert c(wiring="baseline") == (24, 24)
    assert c(wiring="parallel") == (12, 12)
    assert c(wiring="fal") == (2 + 11, 2 + 11 + 1)
    assert c(wiring="fal_plus") == (24, 24)
    assert c(wiring="baseline", residual="ladder") == c(wiring="baseline")  # ladder moves the adds, not the reduces
    assert c(wiring="fal", residual="ladder") == c(wiring="fal")


def test_cost_model_saving_grows_with_tp_and_comm_share():
    shape = costmodel.GPT2_SHAPES["gpt2-medium"]

    def ratio(tp, preset):
        return costmodel.predict(shape, 8, tp, preset, "fal", vocab_parallel=True) / costmodel.predict(
            shape, 8, tp, preset, "baseline", vocab_parallel=True)

    assert ratio(8, "pcie4") < ratio(2, "pcie4") < 1
    assert ratio(4, "pcie4") < ratio(4, "nvlink") < 1  # slower links: more to save
    a, b = costmodel.fit_alpha_beta([1e3, 1e5, 1e7], [1e-4 + 1e-9 * n for n in (1e3, 1e5, 1e7)])
    assert a == pytest.approx(1e-4, rel=1e-6) and b == pytest.approx(1e-9, rel=1e-6)
    link = costmodel.loopback_preset(a, b, 2).link
    assert link.allreduce_s(1e6, 2) == pytest.approx(a + b * 1e6)
    with pytest.raises(FalstudyError, match="unknown interconnect preset"):
        costmodel.predict(shape, 8, 2, "carrier-pigeon")
    with pytest.raises(FalstudyError, match="measured compute_s"):
        costmodel.predict(shape, 8, 2, costmodel.loopback_preset(a, b, 2))


@pytest.mark.parametrize("variant", ["parallel", "fal", "llama_fal", "fal_ladder"])
def test_concurrent_branches_same_numerics(variant):
    from falstudy.parallel.concurrent import concurrent_branches

    ref = tiny_model(variant)
    model = copy.deepcopy(ref)
    assert concurrent_branches(model) == (3 if variant == "parallel" else 2)
    x, y = batch()
    ref_logits, ref_loss = ref(x, y)
    logits, loss = model(x, y)
    ref_loss.backward()
    loss.backward()
    assert torch.equal(logits, ref_logits)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n
    concurrent_branches(model, enabled=False)
    assert all(b.run_branches.__name__ == "run_sequential" for b in model.blocks)
