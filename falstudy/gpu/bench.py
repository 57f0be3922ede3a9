"""``falstudy bench gpu``: every GPU figure of docs/gpu.md from one command, within a time budget.

Sections, in this order (each writes its file as soon as it is done, so a run stopped at its
limit still leaves what it measured):

1. ``env.parquet``: torch, CUDA, the device, the settings of this run;
2. ``checks.parquet``: numerics (device vs CPU loss curves in fp32 and bf16, two streams vs
   one) and the one-GPU distributed checks (``falstudy.gpu.checks``);
3. ``throughput.parquet``, group ``eager``: for each shape, tokens/s and memory of baseline,
   parallel, fal and fal_plus in eager mode, and of parallel and fal with two streams;
4. ``train.parquet``: a training run of ``fal`` on the corpus for ``train_s`` seconds (steps
   from the measured throughput) whose validation loss must fall;
5. ``throughput.parquet``, group ``compile``: the first shape again, eager and torch.compile'd,
   cold compile time recorded; variants are compiled while the budget lasts (baseline and fal
   first, the ratio the paper's 1.18x is about).

``summary.txt`` is the one-screen digest, printed at the end. With ``tiny`` the same code runs
on tiny shapes and few steps (CPU, seconds; compile off unless asked).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from falstudy.errors import FalstudyError
from falstudy.gpu import cases as C
from falstudy.gpu import checks

PAPER_SINGLE_GPU = 1.18  # the paper: up to 1.18x single-GPU throughput, fal over baseline


@dataclass
class Options:
    out: Path = Path("results/gpu")
    tiny: bool = False
    device: str = "auto"
    budget_s: float = 390.0
    rounds: int | None = None
    steps: int | None = None
    compile: bool | None = None
    train_s: float | None = None
    data: str = "data/shakespeare-byte"
    variants: tuple[str, ...] = C.VARIANTS

    def resolved(self) -> "Options":
        tiny = self.tiny
        variants = ("baseline",) + tuple(v for v in self.variants if v != "baseline")
        return replace(
            self,
            rounds=self.rounds or (2 if tiny else 5),
            steps=self.steps or (1 if tiny else 3),
            compile=(not tiny) if self.compile is None else self.compile,
            train_s=self.train_s if self.train_s is not None else (2.0 if tiny else 120.0),
            variants=tuple(dict.fromkeys(variants)),
        )


@dataclass
class Clock:
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def write_rows(path: Path, rows: list[dict]) -> None:
    """Parquet, atomically (a hidden temp file, then a rename): readers never see half a file."""
    import pandas as pd

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)


def resolve(opts: Options) -> torch.device:
    from falstudy.train.loop import resolve_device

    device = resolve_device(opts.device)
    if device.type != "cuda" and not opts.tiny:
        raise FalstudyError(f"falstudy bench gpu at full size needs a CUDA device (got {device}); "
                            "run it with --tiny on a CPU")
    if device.type not in ("cuda", "cpu"):
        raise FalstudyError(f"falstudy bench gpu runs on cuda or cpu, not {device.type}")
    return device


def env_row(device: torch.device, opts: Options) -> dict[str, Any]:
    from falstudy.provenance import provenance

    prov = provenance()
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": device_label(device), "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "capability": f"{props.major}.{props.minor}" if props else None,
        "gpu_memory_gb": props.total_memory / 1e9 if props else None,
        "multiprocessors": props.multi_processor_count if props else None,
        "python": platform.python_version(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "git_commit": prov["git_commit"], "git_dirty": prov["git_dirty"], "host": prov["host"],
        "tiny": opts.tiny, "budget_s": opts.budget_s, "rounds": opts.rounds, "steps": opts.steps,
        "compile": opts.compile, "train_s": opts.train_s, "data": opts.data,
    }


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


def run_group(shape: C.Shape, modes: tuple[str, ...], opts: Options, device: torch.device, clock: Clock,
              reserve_s: float, group: str, log) -> tuple[list[dict], list[str]]:
    """Build, warm and time one shape's cases round-robin; returns (rows, skipped cases)."""
    bf16 = device.type == "cuda"
    batches = {shape.name: C.batch_for(shape, device)}
    built: list[C.Case] = []
    skipped: list[str] = []
    last_warm = 0.0
    for variant, mode in C.plan(shape, modes, opts.variants):
        # compiling costs far more than a step: start one only if it (as long as the last) fits
        if mode == "compile" and clock.left() - reserve_s < 1.5 * max(last_warm, 20.0):
            skipped.append(f"{shape.name}/{variant}/{mode}")
            continue
        case = C.Case(shape, variant, mode, device, bf16)
        case.warm(*batches[shape.name])
        if mode == "compile":
            last_warm = case.warmup_s
        log(f"  warmed {case.name}: first step {case.warmup_s:.1f} s, loss {case.first_loss:.4f}")
        built.append(case)
    n = C.measure(built, opts.rounds, opts.steps, batches, keep_going=lambda: clock.left() > reserve_s)
    log(f"  {shape.name} ({group}): {n} rounds x {opts.steps} steps")
    out = [{"group": group, **r} for r in C.rows(built, device_label(device))]
    for case in built:
        case.release()
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, skipped


def train_run(opts: Options, device: torch.device, shape: C.Shape, tokens_per_s: float, seconds: float,
              log) -> tuple[list[dict], dict[str, Any]]:
    """fal on the corpus for about ``seconds`` (steps from the measured eager throughput)."""
    from falstudy.train.loop import train

    steps = int(min(max(seconds * tokens_per_s / shape.tokens, 10), 100_000))
    fields = {k: v for k, v in shape.model_fields().items() if k != "vocab_size"}  # the corpus's
    results = tempfile.mkdtemp(prefix="falstudy-gpu-")  # the spool and checkpoint: not under --out
    t0 = time.perf_counter()
    deadline = 1.5 * seconds + 10  # a safety net if the estimate was far off: stop at an eval
    config = {
        "name": "gpu-bench", "variant": "fal", "results_dir": results, "data": {"path": opts.data},
        "model": fields,
        "train": {"steps": steps, "batch_size": shape.batch, "lr": 3e-3 if opts.tiny else 6e-4,
                  "warmup_steps": min(100, steps // 10), "eval_interval": max(1, steps // 4),
                  "eval_batches": 2 if opts.tiny else 8, "log_interval": max(1, min(50, steps // 10)),
                  "checkpoint_interval": 0, "device": str(device), "autocast": "auto"},
    }
    try:
        result = train(config, quiet=True, ingest=False,
                       on_eval=lambda step, loss: time.perf_counter() - t0 > deadline)
    finally:
        shutil.rmtree(results, ignore_errors=True)
    wall = time.perf_counter() - t0
    val = [m for m in result.metrics if m["split"] == "val" and m["name"] == "loss"]
    rates = [m["value"] for m in result.metrics if m["name"] == "tokens_per_s"]
    info = {"variant": "fal", "shape": shape.name, "status": result.status, "steps": result.final_step,
            "planned_steps": steps, "wall_s": wall, "val_first": val[0]["value"], "val_last": val[-1]["value"],
            "tokens_per_s": sorted(rates)[len(rates) // 2] if rates else math.nan}
    log(f"  trained fal {result.final_step} steps in {wall:.0f} s: val loss {info['val_first']:.3f} -> {info['val_last']:.3f}")
    return result.metrics, info


def run(opts: Options, log=print) -> dict[str, Any]:
    """Every section; returns {"summary": text, "failed": [check names], "skipped": [...]}."""
    from falstudy.data import TokenShards

    opts = opts.resolved()
    device = resolve(opts)
    TokenShards(opts.data, "train")  # a missing corpus fails now, in one line, before any work
    clock = Clock(opts.budget_s)
    shapes = C.TINY_SHAPES if opts.tiny else C.GPU_SHAPES
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    env = env_row(device, opts)
    write_rows(out / "env.parquet", [env])
    log(f"falstudy bench gpu on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}), budget {opts.budget_s:.0f} s")

    state: dict[str, Any] = {"checks": [], "throughput": [], "train": None, "skipped": []}

    def save_throughput() -> None:
        write_rows(out / "throughput.parquet", state["throughput"])

    log("checks: loss curves, streams, collectives")
    state["checks"] += checks.loss_curves(device, steps=8 if opts.tiny else 20)
    state["checks"] += checks.stream_numerics(device, bf16=False)
    state["checks"] += checks.collectives(device)
    write_rows(out / "checks.parquet", state["checks"])

    train_s = opts.train_s
    compile_reserve = 120.0 if opts.compile and not opts.tiny else 0.0
    for shape in shapes:
        log(f"throughput: {shape.name} eager and streams")
        rows, _ = run_group(shape, ("eager", "streams"), opts, device, clock, train_s + compile_reserve, "eager", log)
        state["throughput"] += rows
        save_throughput()

    seconds = min(train_s, clock.left() - 20) if not opts.tiny else train_s
    if seconds >= (1 if opts.tiny else 10):
        log(f"training: fal on {opts.data} for ~{seconds:.0f} s")
        eager = {r["variant"]: r["tokens_per_s"] for r in state["throughput"]
                 if r["shape"] == shapes[0].name and r["mode"] == "eager"}
        rate = eager.get("fal", eager["baseline"])
        metrics, info = train_run(opts, device, shapes[0], rate, seconds, log)
        write_rows(out / "train.parquet", metrics)
        state["train"] = info
    else:
        state["skipped"].append("training run (budget spent)")

    if opts.compile:
        log(f"throughput: {shapes[0].name} eager and torch.compile")
        rows, skipped = run_group(shapes[0], ("eager", "compile"), opts, device, clock, 5.0, "compile", log)
        state["throughput"] += rows
        state["skipped"] += skipped
        save_throughput()
    else:
        state["skipped"].append("torch.compile group (--no-compile)")

    state["checks"] += checks.first_losses(state["throughput"], checks.BF16_RTOL if device.type == "cuda" else 1e-4)
    if state["train"]:
        t = state["train"]
        state["checks"].append(checks.row("train", f"{t['variant']}/{t['shape']}", "val_loss_drop",
                                          t["val_first"] - t["val_last"], 0.0, t["val_last"] < t["val_first"],
                                          f"{t['steps']} steps, status {t['status']}"))
    write_rows(out / "checks.parquet", state["checks"])
    from falstudy.gpu.summary import summary

    text = summary(env, state, clock.elapsed())
    (out / "summary.txt").write_text(text)
    log(text)
    return {"summary": text, "failed": [f"{r['check']}:{r['case']}" for r in state["checks"] if r["passed"] is False],
            "skipped": state["skipped"]}
