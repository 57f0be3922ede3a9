"""The training loop: AdamW, warmup + cosine, clipping, periodic eval, checkpoint and resume.

Everything a run produces goes to its spool folder ``results/<name>/runs/<run_id>/``:
``runs.parquet`` (one row, rewritten when the run ends), ``metrics-<step>.parquet`` chunks
flushed at every eval and checkpoint (a kill loses at most the current interval), and
``checkpoint.pt``. Resuming the same run_id continues from its checkpoint and rewrites any
later metric chunks, so the store never holds a step twice.

With ``parallel.tp`` or ``parallel.dp`` > 1 the same loop runs on every rank under torchrun;
``falstudy.train.layout`` holds everything that differs (sharding, gradient averaging, gathered
checkpoints, collective accounting into ``timings-<step>.parquet``); rank 0 writes the spool.
"""

from __future__ import annotations

import contextlib
import copy
import math
import secrets
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from falstudy.config import RunConfig, load_yaml, set_dotted, validate
from falstudy.errors import FalstudyError
from falstudy.provenance import now_iso, provenance
from falstudy.store import layout as results_layout
from falstudy.store.spool import MetricsBuffer, RunSpool
from falstudy.train.layout import make_layout
from falstudy.train.meter import ThroughputMeter
from falstudy.train.schedule import lr_at

# called at each eval with (step, val_loss); returning True stops the run as "pruned"
EvalCallback = Callable[[int, float], bool]
# called every ``every`` steps with (model, step, x, y); returns rows for the probes table
StepHook = tuple[int, Callable[..., list[dict]]]


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str  # completed | diverged | pruned | failed | killed
    final_step: int
    final_val_loss: float | None
    config: RunConfig
    metrics: list[dict] = field(default_factory=list, repr=False)


def new_run_id(cfg: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.variant_name}-s{cfg.seed}-{stamp}-{secrets.token_hex(2)}"


def as_run_config(config: RunConfig | dict | str | Path | None, dotted: dict[str, Any] = {}) -> RunConfig:
    """A RunConfig from a RunConfig, a dict or a YAML path, with dotted-key overrides on top.
    Fields the user left unset stay unset (the corpus then decides the vocabulary)."""
    if isinstance(config, RunConfig):
        data, source = config.model_dump(exclude_unset=True), "config"
    elif isinstance(config, dict):
        data, source = copy.deepcopy(config), "config"
    else:
        data, source = (load_yaml(config) if config else {}), str(config or "config")
        if not isinstance(data, dict):
            raise FalstudyError(f"{source}: expected a mapping of config sections")
    for key, value in dotted.items():
        set_dotted(data, key, value)
    return validate(RunConfig, data, source)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FalstudyError(f"train.device={name!r} but CUDA is not available here; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FalstudyError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def _autocast(cfg: RunConfig, device: torch.device):
    wanted = cfg.train.autocast
    if wanted == "bf16" or (wanted == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    # weight decay on matrices only (not norms, biases, gates), as in GPT-2/nanoGPT
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    t = cfg.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (CPU and CUDA) updates all parameters in one call: at the study's small
    # shapes the per-tensor loop cost ~10% of a step (bench/train_throughput.py)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)


def _resolve_vocab(cfg: RunConfig, vocab: int) -> RunConfig:
    """Take the vocabulary from the corpus unless the user set it; refuse one too small."""
    if "vocab_size" not in cfg.model.model_fields_set:
        model = cfg.model.model_copy(update={"vocab_size": vocab})
        return cfg.model_copy(update={"model": validate(type(cfg.model), model.model_dump(), "model")})
    if cfg.model.vocab_size < vocab:
        raise FalstudyError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the corpus vocabulary ({vocab}); "
            "leave it unset to take the corpus's"
        )
    return cfg


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
        n += 1
    model.train()
    return total / max(n, 1)


def train(
    config: RunConfig | dict | str | Path | None = None,
    *,
    quiet: bool = False,
    resume: bool = True,
    ingest: bool = True,
    on_eval: EvalCallback | None = None,
    hooks: list[StepHook] = (),
    **overrides: Any,
) -> RunResult:
    """Train one run. ``config`` is a RunConfig, a dict, or a YAML path; ``overrides`` use dotted
    keys with ``__`` for dots, e.g. ``train(variant="fal", train__steps=200)``."""
    cfg = as_run_config(config, {k.replace("__", "."): v for k, v in overrides.items()})
    check_hooks(cfg, hooks)
    hooks = list(hooks)
    if cfg.train.grad_probe_every:
        from falstudy.probe.grads import GradientHook

        hooks.append((cfg.train.grad_probe_every, GradientHook()))

    t = cfg.train
    device = resolve_device(t.device)
    layout = make_layout(cfg.parallel, device)
    try:
        return _train(cfg, layout, quiet, resume, ingest, on_eval, hooks)
    finally:
        layout.close()


def check_hooks(cfg: RunConfig, hooks: list[StepHook] = ()) -> None:
    """Step hooks (``train.grad_probe_every`` too) would see one rank's shard under tp/dp > 1."""
    if (hooks or cfg.train.grad_probe_every) and cfg.parallel.world > 1:
        raise FalstudyError("step hooks (train.grad_probe_every) work in one process only, not under tp/dp > 1; "
                            "probe the checkpoint instead: falstudy probe RUN --probes grads")


def open_data(cfg: RunConfig):
    """The run's corpus splits, and its config with the corpus's vocabulary; raises
    FalstudyError for a missing corpus or a sequence longer than the model's block.
    (``falstudy train --tp`` calls it before starting any rank.)"""
    from falstudy.data import TokenShards

    train_data = TokenShards(cfg.data.path, "train")
    val_data = TokenShards(cfg.data.path, "val")
    cfg = _resolve_vocab(cfg, train_data.vocab_size)
    seq_len = cfg.train.seq_len or cfg.model.block_size
    if seq_len > cfg.model.block_size:
        raise FalstudyError(f"train.seq_len={seq_len} exceeds model.block_size={cfg.model.block_size}")
    return cfg, train_data, val_data


def _train(cfg: RunConfig, layout, quiet: bool, resume: bool, ingest: bool, on_eval: EvalCallback | None,
           hooks: list[StepHook]) -> RunResult:
    from falstudy.models import GPT
    from falstudy.models.checkpoint import read_checkpoint, save_checkpoint

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = layout.device
    cfg, train_data, val_data = open_data(cfg)
    seq_len = t.seq_len or cfg.model.block_size
    if cfg.run_id is None:
        cfg = cfg.model_copy(update={"run_id": layout.share(new_run_id(cfg))})
    results_dir = results_layout.group_dir(cfg.results_dir, cfg.name)
    run_dir = results_layout.run_dir_of(cfg)
    spool = RunSpool(run_dir) if layout.is_main else _NoSpool(run_dir)
    ckpt_path = run_dir / results_layout.CHECKPOINT  # under tp/dp, every host must see this folder to resume

    from falstudy.models.size import check_fits

    check_fits(cfg.model, device, shards=layout.tp or 1)  # before allocating: one line, not the allocator's
    torch.manual_seed(cfg.seed)  # the same on every rank: parallelize checks the replicas agree
    model = GPT(cfg.model).to(device)
    n_params = model.num_params()  # of the whole model, before sharding
    model = layout.prepare(model)
    optimizer = _optimizer(model, cfg)
    # the compiled module shares the eager one's parameters; checkpoints and hooks use the eager one
    forward = torch.compile(model) if t.compile else model
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # data order
    start_step, val_loss = 0, None
    if resume and layout.share(ckpt_path.exists()):
        # to CPU first: the RNG states must be CPU tensors, and TP ranks keep only their shard
        state = read_checkpoint(ckpt_path, map_location="cpu")
        # through the config class, so fields added since the checkpoint take their defaults
        saved = validate(type(cfg.model), state["config"]["model"], f"{ckpt_path} (model config)")
        if saved.model_dump(mode="json") != cfg.model.model_dump(mode="json"):
            raise FalstudyError(f"{ckpt_path} was trained with another model config; use a new run_id")
        layout.load(model, optimizer, state)
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        start_step, val_loss = state["step"], state.get("val_loss")
        if layout.is_main:  # chunks past the checkpoint are re-run: no step is stored twice
            spool.drop_chunks_after(start_step)

    run_row = {
        "run_id": cfg.run_id,
        "name": cfg.name,
        "variant": cfg.variant_name,
        "wiring": cfg.model.wiring,
        "seed": cfg.seed,
        "n_layer": cfg.model.n_layer,
        "n_head": cfg.model.n_head,
        "n_embd": cfg.model.n_embd,
        "norm": cfg.model.norm,
        "mlp": cfg.model.mlp,
        "pos": cfg.model.pos,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "seq_len": seq_len,
        "steps": t.steps,
        "tp": layout.tp,
        "dp": layout.dp,
        "device": str(device),
        "n_params": n_params,
        "data_path": cfg.data.path,
        "config_json": cfg.to_json(),
        "started_at": now_iso(),
        **_provenance_columns(),
    }
    spool.write_table("runs", [{**run_row, "status": "running", "final_step": start_step}])

    autocast = _autocast(cfg, device)
    tokens_per_step = t.batch_size * (layout.dp or 1) * seq_len  # the global batch
    meter = ThroughputMeter()
    metrics: list[dict] = []  # all rows, for the caller
    buffer = MetricsBuffer(spool, cfg.run_id, tokens_per_step=tokens_per_step)  # its clock starts here

    def record(step: int, split: str, **values: float) -> None:
        metrics.extend(buffer.log(step, split, **values))

    def flush(step: int) -> None:
        buffer.flush(step)  # metrics-<step>.parquet
        spool.flush(step)  # the collective accounting (parallel runs): timings-<step>.parquet

    def checkpoint(step: int) -> None:
        model_state, optimizer_state = layout.state(model, optimizer)  # collective under tp/dp
        if not layout.is_main:
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": model_state,
                "optimizer": optimizer_state,
                "step": step,
                "val_loss": val_loss,
                "config": cfg.model_dump(mode="json"),
                "data_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
        )
        # while running, runs.final_step is the resume point: the step of the last checkpoint
        spool.write_table("runs", [{**run_row, "status": "running", "final_step": step, "final_val_loss": val_loss}])

    def run_eval(step: int) -> float:
        # the same eval batches as one process with the global batch; each DP rank takes its rows
        batches = val_data.eval_batches(t.batch_size * (layout.dp or 1), seq_len, t.eval_batches)
        with layout.paused():  # evaluation's collectives are not training's
            val = layout.mean(evaluate(forward, (layout.rows(x, y) for x, y in batches), device, autocast))
        record(step, "val", loss=val, ppl=math.exp(min(val, 50)))
        return val

    status, error, step = "completed", None, start_step
    bar = _progress(t.steps, start_step, quiet or not layout.is_main, cfg.run_id)
    try:
        model.train()
        if start_step == 0:
            val_loss = run_eval(0)
        for step in range(start_step + 1, t.steps + 1):
            lr = lr_at(step - 1, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = layout.batch(train_data, t.batch_size, seq_len, gen)
            with layout.step():
                with autocast:
                    _, loss = forward(x, y)
                loss.backward()
                layout.sync_grads(model)
                grad_norm = layout.clip(model, t.grad_clip) if t.grad_clip > 0 else None
                for every, hook in hooks:
                    if step % every == 0:
                        rows = [{**r, "run_id": r.get("run_id") or cfg.run_id} for r in hook(model, step, x, y)]
                        spool.write_table("probes", rows, part=f"{type(hook).__name__.lower()}-step{step:06d}")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            meter.update(tokens_per_step)

            if step % t.log_interval == 0 or step == t.steps:
                loss_value = layout.mean(loss.detach())
                for row in layout.timing_rows(cfg.run_id, step):
                    spool.append("timings", row)
                if not math.isfinite(loss_value):
                    status, error = "diverged", f"non-finite training loss ({loss_value}) at step {step}"
                    record(step, "train", loss=loss_value)
                    break
                extra = {"grad_norm": float(grad_norm)} if grad_norm is not None else {}
                record(step, "train", loss=loss_value, lr=lr, **meter.read(), **extra)
                bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{val_loss:.3f}" if val_loss else "-")
            bar.update(1)

            last = step == t.steps
            if step % t.eval_interval == 0 or last:
                val_loss = run_eval(step)
                if not math.isfinite(val_loss):
                    status, error = "diverged", f"non-finite validation loss at step {step}"
                    break
                # the pruner is asked once (rank 0) and every rank follows its answer
                if layout.share(on_eval is not None and layout.is_main and bool(on_eval(step, val_loss))):
                    status = "pruned"
                    flush(step)
                    break
            if (t.checkpoint_interval and step % t.checkpoint_interval == 0) or last:
                flush(step)
                checkpoint(step)
            elif step % t.eval_interval == 0:
                flush(step)
    except KeyboardInterrupt:
        status, error = "killed", "interrupted"
        raise
    except Exception as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        bar.close()
        flush(step)
        spool.write_table(
            "runs",
            [{**run_row, "status": status, "final_step": step, "final_val_loss": val_loss,
              "error": error, "ended_at": now_iso()}],
        )
        if ingest and layout.is_main:
            _ingest_quietly(results_dir)
    return RunResult(cfg.run_id, run_dir, status, step, val_loss, cfg, metrics)


def _ingest_quietly(results_dir: Path) -> None:
    """A run's data is safe in the spool; a store held open elsewhere must not fail the run."""
    from falstudy.store import ingest as ingest_results

    try:
        ingest_results(results_dir)
    except FalstudyError as err:
        warnings.warn(f"results kept in the spool, not ingested ({err}); run `falstudy ingest {results_dir}` later")


def _provenance_columns() -> dict[str, Any]:
    import json

    prov = provenance()
    versions = prov.pop("versions")
    return {**prov, "torch_version": versions.get("torch"), "versions_json": json.dumps(versions)}


class _NoSpool(RunSpool):
    """What ranks other than 0 write: nothing (rank 0 records the run for all of them)."""

    def write_table(self, *args: Any, **kwargs: Any) -> None:
        pass


def _progress(total: int, initial: int, quiet: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=quiet, desc=label, unit="step", dynamic_ncols=True)
