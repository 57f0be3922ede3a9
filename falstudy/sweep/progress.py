"""The live view of a sweep: trials done / running / failed, the best so far, what each running
trial is doing. Read from the study storage, so it shows every worker on every host.
``summarize`` is pure (tested); ``Progress`` polls and draws (rich Live on a terminal, one line
per finished trial otherwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import optuna


@dataclass
class Summary:
    counts: dict[str, int]
    expected: int | None  # trials the sweep will run in all (grid), if known
    best: str | None
    running: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))

    def line(self) -> str:
        c = self.counts
        total = f"/{self.expected}" if self.expected else ""
        parts = [f"{self.finished}{total} finished", f"{c.get('COMPLETE', 0)} complete",
                 f"{c.get('RUNNING', 0)} running", f"{c.get('WAITING', 0)} queued",
                 f"{c.get('FAIL', 0)} failed", f"{c.get('PRUNED', 0)} pruned"]
        return ", ".join(parts) + (f"; best: {self.best}" if self.best else "")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def describe_values(values: list[float] | None, metrics: list[str]) -> str:
    if not values:
        return "-"
    return " ".join(f"{m}={_fmt(v)}" for m, v in zip(metrics, values))


def summarize(trials: list["optuna.trial.FrozenTrial"], directions: list[str], metrics: list[str],
              expected: int | None = None, now: float | None = None) -> Summary:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state.name == "COMPLETE" and t.values]
    best = None
    if done and len(directions) == 1:
        sign = 1 if directions[0] == "minimize" else -1
        b = min(done, key=lambda t: sign * t.values[0])
        best = f"{describe_values(b.values, metrics)} ({b.user_attrs.get('run_id', f'trial {b.number}')})"
    elif done:
        best = f"{len(_pareto(done, directions))} trial(s) on the Pareto front"
    now = time.time() if now is None else now
    running = []
    for t in trials:
        if t.state.name != "RUNNING":
            continue
        last = max(t.intermediate_values.items(), default=None)
        running.append({
            "trial": t.number, "run_id": t.user_attrs.get("run_id", "?"),
            "worker": f"{t.user_attrs.get('worker_host', '?')}:{t.user_attrs.get('worker_pid', '?')}",
            "elapsed_s": now - t.datetime_start.timestamp() if t.datetime_start else None,
            "step": last[0] if last else None, "value": last[1] if last else None,
        })
    return Summary(counts, expected, best, running)


def _pareto(trials: list["optuna.trial.FrozenTrial"], directions: list[str]) -> list["optuna.trial.FrozenTrial"]:
    signs = [1 if d == "minimize" else -1 for d in directions]
    keys = [[s * v for s, v in zip(signs, t.values)] for t in trials]

    def dominated(i: int) -> bool:
        return any(all(a <= b for a, b in zip(keys[j], keys[i])) and keys[j] != keys[i] for j in range(len(keys)))

    return [t for i, t in enumerate(trials) if not dominated(i)]


def finished_line(t: "optuna.trial.FrozenTrial", metrics: list[str]) -> str:
    ua = t.user_attrs
    dur = f" in {t.duration.total_seconds():.0f}s" if t.duration else ""
    if t.state.name == "COMPLETE":
        what = describe_values(t.values, metrics)
    elif t.state.name == "PRUNED" and t.intermediate_values:
        step = max(t.intermediate_values)
        what = f"at step {step} ({metrics[0]}={_fmt(t.intermediate_values[step])})"
    else:
        what = ua.get("error") or ua.get("status") or ""
    return f"trial {t.number} {ua.get('run_id', '')}: {t.state.name}{dur} {what}".rstrip()


class Progress:
    """Poll the study; print a line per finished trial; keep a live table on a terminal
    (unless quiet)."""

    def __init__(self, study: "optuna.Study", directions: list[str], metrics: list[str], *,
                 expected: int | None = None, quiet: bool = False, echo: Callable[[str], None] = print) -> None:
        self.study, self.directions, self.metrics = study, directions, metrics
        self.expected, self.quiet, self.echo = expected, quiet, echo
        self.seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.live = None
        self.summary: Summary | None = None

    def __enter__(self) -> "Progress":
        import sys

        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def poll(self) -> Summary:
        from rich.text import Text

        from falstudy.textout import escape_controls

        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                line = finished_line(t, self.metrics)
                if self.live is not None:
                    self.live.console.print(Text(escape_controls(line)))  # stored text, never markup
                else:
                    self.echo(line)
        self.summary = summarize(trials, self.directions, self.metrics, self.expected)
        if self.live is not None:
            self.live.update(self.render(self.summary))
        return self.summary

    def render(self, s: Summary):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from falstudy.textout import escape_controls

        table = Table(show_edge=False, header_style="bold", title=None)
        for col in ("trial", "run", "worker", "elapsed", "step", "val loss"):
            table.add_column(col, justify="right" if col in ("trial", "elapsed", "step", "val loss") else "left")
        for r in s.running:  # cells as Text: run ids and hosts are shown verbatim, never as markup
            cells = (str(r["trial"]), str(r["run_id"]), str(r["worker"]),
                     f"{r['elapsed_s']:.0f}s" if r["elapsed_s"] is not None else "-",
                     str(r["step"]) if r["step"] is not None else "-",
                     _fmt(r["value"]) if r["value"] is not None else "-")
            table.add_row(*(Text(escape_controls(c)) for c in cells))
        line = Text(escape_controls(s.line()))
        return Group(line, table) if s.running else line
