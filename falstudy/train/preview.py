"""What a run will be, before it starts: the resolved config, the parameter count and an
estimate of the time per step (``falstudy train`` prints it first; ``--dry-run`` prints only it).

The estimate times real training steps (forward, backward, AdamW) of the run's model at its
batch and sequence length on its device, after one warm-up step: at most ``TIMED_S`` seconds or
three steps, so it costs a few steps of the run. (A FLOPs-over-matmul-rate estimate was tried and
was off by 1.3x one way for the small preset and 1.6x the other for the config defaults on a
2-core CPU.) Under tp/dp it is one process's step of the whole model divided by tp, before any
communication.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import yaml

from falstudy.config import RunConfig

TIMED_S = 1.0  # stop timing steps after this long (at least one step is timed)


@dataclass
class Preview:
    config: RunConfig  # with the corpus's vocabulary
    n_params: int  # all parameters (embeddings included)
    n_params_body: int  # without the embeddings, as GPT.num_params() counts
    seq_len: int
    step_s: float  # estimated seconds per training step
    device: str  # where it runs (auto resolved)

    @property
    def total_s(self) -> float:
        evals = self.config.train.steps // self.config.train.eval_interval + 1
        # an eval batch is a forward only: about a third of a step
        return self.step_s * (self.config.train.steps + evals * self.config.train.eval_batches / 3)


def preview(cfg: RunConfig, device: torch.device | None = None) -> Preview:
    """Resolve ``cfg`` against its corpus (FalstudyError if it is missing) and time its step."""
    from falstudy.models import GPT
    from falstudy.models.size import check_fits
    from falstudy.train.loop import open_data, resolve_device

    cfg, _, _ = open_data(cfg)
    seq_len = cfg.train.seq_len or cfg.model.block_size
    device = device or resolve_device(cfg.train.device)
    check_fits(cfg.model, device, shards=cfg.parallel.tp)  # the preview builds the model: refuse first
    saved = torch.get_num_threads(), torch.get_rng_state()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        model = GPT(cfg.model).to(device)
        n_all, n_body = model.num_params(non_embedding=False), model.num_params()
        step_s = time_step(model, cfg, seq_len, device) / cfg.parallel.tp
    finally:
        torch.set_num_threads(saved[0])
        torch.set_rng_state(saved[1])
    return Preview(cfg, n_all, n_body, seq_len, step_s, str(device))


def time_step(model: torch.nn.Module, cfg: RunConfig, seq_len: int, device: torch.device) -> float:
    """Median seconds of a training step of ``model`` on random tokens (the weights change)."""
    from falstudy.train.loop import _autocast

    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, seq_len), generator=gen).to(device)
            for _ in range(2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)

    def step() -> None:
        with _autocast(cfg, device):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)

    step()  # warm-up: allocations, kernel selection
    times: list[float] = []
    while not times or (len(times) < 3 and sum(times) < TIMED_S):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def header_lines(p: Preview, preset: str | None = None) -> list[str]:
    """Three lines: what is trained, on what, and how long it should take."""
    c, m, t = p.config, p.config.model, p.config.train
    layout = f", tp={c.parallel.tp} dp={c.parallel.dp}" if c.parallel.world > 1 else ""
    origin = f" (preset {preset}; --preset none for the config defaults)" if preset else ""
    return [
        f"model: {c.variant_name} ({m.wiring}), {m.n_layer} layers x {m.n_embd} ({m.n_head} heads), "
        f"block {m.block_size}, vocab {m.vocab_size}: {p.n_params / 1e6:.2f}M parameters{origin}",
        f"train: {t.steps} steps x {t.batch_size} x {p.seq_len} tokens, lr {t.lr:g}, seed {c.seed}, "
        f"device {p.device}{layout}; data {c.data.path} -> {c.results_dir}/{c.name}/",
        f"estimate: ~{_duration(p.step_s)} per step, ~{_duration(p.total_s)} for the run "
        f"(steps timed here; the progress bar shows the real pace)",
    ]


def config_yaml(cfg: RunConfig) -> str:
    """The whole resolved config, as a YAML file ``falstudy train FILE`` accepts."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
