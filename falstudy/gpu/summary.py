"""The one-screen digest of a ``falstudy bench gpu`` run (also ``summary.txt``)."""

from __future__ import annotations

import math
from typing import Any

from falstudy.gpu.bench import PAPER_SINGLE_GPU


def _ratio(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"


def _gb(value: Any) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def summary(env: dict, state: dict, elapsed_s: float) -> str:
    lines = [f"falstudy bench gpu: {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"{'tiny' if env['tiny'] else 'full'} run, {elapsed_s:.0f} s of {env['budget_s']:.0f} s budget"]
    head = f"{'shape':<12} {'variant':<9} {'mode':<8} {'tok/s':>10} {'/ baseline [95%]':>24} {'/ eager':>8} {'first s':>8} {'GB res+step':>12}"
    for group in ("eager", "compile"):
        rows = [r for r in state["throughput"] if r["group"] == group]
        if not rows:
            continue
        lines += ["", f"training throughput, group {group} (bf16 autocast on CUDA; {rows[0]['rounds']} rounds):", head]
        for r in rows:
            vs_eager = r.get("vs_eager")
            lines.append(f"{r['shape']:<12} {r['variant']:<9} {r['mode']:<8} {r['tokens_per_s']:>10.0f} "
                         f"{_ratio(r, 'vs_baseline'):>24} {'-' if vs_eager is None or math.isnan(vs_eager) else f'{vs_eager:.3f}':>8} "
                         f"{r['warmup_s']:>8.1f} {_gb(r['resident_gb']) + '+' + _gb(r['step_peak_gb']):>12}")
    fal = [r for r in state["throughput"] if r["variant"] == "fal" and r.get("vs_baseline") is not None
           and not math.isnan(r["vs_baseline"])]
    if fal:  # every measured fal / baseline, not the best one: the paper's figure is a maximum
        ratios = ", ".join(f"{r['shape']} {r['mode']}{' (compile group)' if r['group'] == 'compile' and r['mode'] == 'eager' else ''}"
                           f" {r['vs_baseline']:.3f}" for r in fal)
        lines += ["", f"fal / baseline tokens/s: {ratios} (the paper: up to {PAPER_SINGLE_GPU}x on one GPU)"]
    if state["train"]:
        t = state["train"]
        lines += [f"training run: {t['variant']} at {t['shape']}, {t['steps']}/{t['planned_steps']} steps in "
                  f"{t['wall_s']:.0f} s ({t['status']}), val loss {t['val_first']:.3f} -> {t['val_last']:.3f}, "
                  f"{t['tokens_per_s']:.0f} tok/s"]
    failed = [r for r in state["checks"] if r["passed"] is False]
    lines += ["", f"checks: {len(state['checks']) - len(failed)} of {len(state['checks'])} passed"]
    for r in failed:
        lines.append(f"  FAILED {r['check']} {r['case']}: {r['metric']} = {r['value']:.3g} (tolerance {r['tolerance']:.3g}); {r['detail']}")
    for r in state["checks"]:
        if r["check"] == "loss_curve" or r["check"] == "collectives" and r["metric"] == "metered_seconds":
            lines.append(f"  {r['check']} {r['case']}: {r['metric']} {r['value']:.3g}; {r['detail']}")
    if state["skipped"]:
        lines.append("skipped (budget or options): " + ", ".join(state["skipped"]))
    lines.append("multi-GPU figures are not measured here (one GPU): they stay the cost model's projection (docs/parallel.md)")
    return "\n".join(lines) + "\n"
