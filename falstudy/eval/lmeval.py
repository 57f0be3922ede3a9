"""The lm-evaluation-harness adapter (the optional extra ``.[eval]``: ``pip install -e '.[eval]'``).

``FalstudyLM`` is an ``lm_eval.api.model.LM`` registered as ``falstudy``. It answers lm-eval's
requests with ``falstudy.eval.score.Scorer``, the scoring path of ``falstudy eval``, so the two
give the same numbers for the same items:

- ``loglikelihood(context, continuation)``: summed log-probability of the continuation and
  whether it is the greedy one (an empty context becomes the tokenizer's separator);
- ``loglikelihood_rolling(text)``: the text scored after the separator, in windows of the
  model's context;
- ``generate_until``: greedy decoding up to ``max_gen_toks`` tokens or the first stop string.

lm-eval 0.4.x finds models only in its own table (``lm_eval.models.MODEL_MAPPING``) or through
an import that calls ``register_model``: it has no entry-point group for plugins. So
``lm_eval --model falstudy`` needs this module imported first; the ``falstudy-lm-eval`` command
does that and then runs lm-eval's own command line with the same arguments:

    falstudy-lm-eval --model falstudy --model_args run=results/bypass/runs/fal-s0 \\
        --tasks my_task --include_path path/to/task_yamls

Model arguments: ``run`` (a run folder or checkpoint file), ``data`` (its corpus folder, for the
tokenizer; default the run's ``data.path``), ``batch_size``, ``device``.
"""

from __future__ import annotations

import os
from typing import Any

from falstudy.errors import FalstudyError

# never reach for a dataset hub from here: tasks must be local (lm-eval reads these at import)
for _var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as _err:  # the extra is not installed
    raise FalstudyError("the lm-eval adapter needs the optional extra: pip install -e '.[eval]' "
                        f"(lm-eval 0.4.x; import failed: {_err})") from None


@register_model("falstudy")
class FalstudyLM(LM):
    def __init__(self, run: Any = None, data: str | None = None, batch_size: Any = 32, device: str | None = "cpu",
                 scorer=None, **_: Any) -> None:
        super().__init__()
        if scorer is None:
            if run is None:
                raise FalstudyError("the falstudy model needs run=PATH (a run folder or checkpoint file)")
            from falstudy.eval.runner import load_run
            from falstudy.eval.score import Scorer

            import torch

            device = device or "cpu"
            if device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's command line asks for cuda:0 unless told; like its HF model, use the CPU
                import logging

                logging.getLogger(__name__).warning("device %s is not available here; using cpu", device)
                device = "cpu"
            loaded = load_run(run, data, device)
            bs = 32 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
            scorer = Scorer(loaded.model, loaded.tokenizer, bs, device)
        self.scorer = scorer

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scores = self.scorer.score([tuple(r.args[:2]) for r in requests])
        return [(s.logprob, s.greedy) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [s.logprob for s in self.scorer.score([("", r.args[0]) for r in requests])]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import torch

        from falstudy.sampling import sample_ids

        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self.scorer.tok.encode(context or self.scorer.prefix)
            new = int(kwargs.get("max_gen_toks", 64))
            idx = torch.tensor([ids], dtype=torch.long, device=self.scorer.device)
            text = self.scorer.tok.decode(sample_ids(self.scorer.model, idx, new, 0.0, None)[0, len(ids):].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def _metric_name(key: str) -> tuple[str, str] | None:
    """lm-eval's ``"acc,none"`` -> (``acc``, ``none``); its stderr keys and labels -> None."""
    if "," not in key:
        return None
    metric, flt = key.split(",", 1)
    return None if metric.endswith("_stderr") else (metric, flt)


def run_tasks(scorer, tasks: list[str], include_path: str | None = None, limit: int | None = None) -> list[dict]:
    """lm-eval tasks on a falstudy scorer: one row per (task, metric) with its n and stderr."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else " (pass --include-path DIR for local task YAMLs)"
        raise FalstudyError(f"unknown lm-eval task(s) {', '.join(unknown)}: not among lm-eval's tasks{where}")
    results = lm_eval.simple_evaluate(model=FalstudyLM(scorer=scorer), tasks=list(tasks), task_manager=manager,
                                      limit=limit, log_samples=False, bootstrap_iters=100)
    rows = []
    for task, metrics in results["results"].items():
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            name = _metric_name(key)
            if name is None or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{name[0]}_stderr,{name[1]}")
            rows.append({"task": task, "metric": name[0], "filter": name[1], "value": float(value),
                         "n": int(n or 0), "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows


def cli() -> None:
    """``falstudy-lm-eval``: lm-eval's command line with the ``falstudy`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
