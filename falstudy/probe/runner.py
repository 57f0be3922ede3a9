"""``run_probes``: load a model, draw a token budget of evaluation batches once, run the named
probes over them, return tidy rows and (for a run folder) write them to the run's spool.

Token budget: ``tokens`` is the number of token positions fed through the model per probe
pass: ceil(tokens / seq_len) sequences, in batches of ``batch_size``, rounded up to whole batches
(down, when a data tensor has fewer rows) so every minibatch has the same size. Representation probes (cka, linear,
bypass's CKA) use ``positions_per_seq`` positions drawn from each sequence (position 0
excluded), so their sample count is sequences x positions_per_seq; loss probes use every
position. Each batch goes through one nnsight trace per condition, reading all sites at once.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from falstudy.errors import FalstudyError
from falstudy.store.layout import CHECKPOINT

PROBE_NAMES = ("cka", "grads", "attn_removal", "bypass", "linear", "logit_lens")
# which probes sample positions for a CKA estimate (and so need > 3 samples per minibatch)
_CKA_PROBES = {"cka", "bypass"}


@dataclass
class Loaded:
    model: torch.nn.Module
    run_id: str | None = None
    run_dir: Path | None = None  # set only when the source was a run folder
    step: int | None = None
    data_path: str | None = None
    info: dict = field(default_factory=dict)


def parse_probes(probes: str | Iterable[str]) -> list[str]:
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else [str(p).strip() for p in probes]
    names = [n for n in names if n]
    if not names:
        raise FalstudyError(f"no probes given; choose from {', '.join(PROBE_NAMES)} or all")
    out: list[str] = []
    for n in names:
        if n == "all":
            out += PROBE_NAMES
        elif n in PROBE_NAMES:
            out.append(n)
        else:
            raise FalstudyError(f"unknown probe {n!r}; known: {', '.join(PROBE_NAMES)}, all")
    return list(dict.fromkeys(out))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FalstudyError(f"device={name!r} but CUDA is not available here; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FalstudyError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def load_source(source: Any, device: torch.device) -> Loaded:
    """A GPT, a checkpoint file, a run folder (holding checkpoint.pt) or a GPT-2 HF folder."""
    from falstudy.models.gpt import GPT

    if isinstance(source, GPT):
        return Loaded(source.to(device))
    if not isinstance(source, (str, Path)):
        raise FalstudyError(f"cannot probe a {type(source).__name__}; pass a GPT, a run folder or a checkpoint file")
    path = Path(source)
    from falstudy.models.hf import is_hf_dir, load_gpt2

    if is_hf_dir(path):
        model, cfg = load_gpt2(path, device=device)
        return Loaded(model, cfg.run_id, None, None, None, {"source": "hf"})
    from falstudy.models.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(path, map_location=device)  # FalstudyError on shape mismatch
    ckpt = path / CHECKPOINT if path.is_dir() else path
    step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("step")
    run_dir = path if path.is_dir() else None
    run_id = cfg.run_id or (path.name if path.is_dir() else path.parent.name)
    return Loaded(model.eval(), run_id, run_dir, None if step is None else int(step), cfg.data.path)


def _split(tokens: torch.Tensor, seq_len: int | None, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32) or tokens.shape[1] < 2:
        raise FalstudyError("data tensor must be int64 token ids shaped (sequences, seq_len + 1)")
    T = seq_len or min(tokens.shape[1] - 1, block_size)
    if T > tokens.shape[1] - 1:
        raise FalstudyError(f"seq_len={T} but the data tensor has only {tokens.shape[1]} tokens per row (need seq_len + 1)")
    return tokens[:, :T].long(), tokens[:, 1 : T + 1].long()


def make_batches(
    data: Any, loaded: Loaded, tokens: int, batch_size: int, seq_len: int | None, seed: int, split: str
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """(evaluation batches, a reference batch of inputs for mean ablation or None)."""
    block = loaded.model.config.block_size
    if seq_len is not None and not 2 <= seq_len <= block:
        raise FalstudyError(f"seq_len={seq_len} must be between 2 and the model's block_size={block}")
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (list, tuple)):
        return [(x.long(), y.long()) for x, y in data], None
    if isinstance(data, torch.Tensor):
        x, y = _split(data, seq_len, block)
        T = x.shape[1]
        n_seq = min(math.ceil(tokens / T), x.shape[0])
        b = min(batch_size, n_seq)
        n_seq -= n_seq % b  # equal minibatches
        return [(x[i : i + b], y[i : i + b]) for i in range(0, n_seq, b)], None
    path = data if data is not None else loaded.data_path
    if path is None:
        raise FalstudyError("no data to probe with: pass data= (a prepared corpus folder or a token tensor)")
    from falstudy.data import TokenShards

    T = seq_len or min(block, 256)
    n_seq = math.ceil(tokens / T)
    b = min(batch_size, n_seq)
    shards = TokenShards(path, split)
    if shards.vocab_size > loaded.model.config.vocab_size:
        raise FalstudyError(
            f"corpus {path} has vocabulary {shards.vocab_size} > the model's {loaded.model.config.vocab_size}"
        )
    batches = list(shards.eval_batches(b, T, math.ceil(n_seq / b)))
    ref = None
    try:  # mean-ablation reference: training-split tokens, disjoint from the evaluation batches
        ref = TokenShards(path, "train").get_batch(b, T, torch.Generator().manual_seed(seed))[0]
    except FalstudyError:
        pass
    return batches, ref


def _check_budget(probes: list[str], batches: Sequence, positions_per_seq: int | None, tokens: int) -> None:
    if not batches:
        raise FalstudyError(f"tokens={tokens} gives no full batch of data; raise tokens or lower batch_size")
    x = min((b[0] for b in batches), key=lambda t: t.shape[0])
    if _CKA_PROBES & set(probes):
        avail = x.shape[1] - 1  # position 0 is left out
        k = avail if positions_per_seq is None else min(positions_per_seq, avail)
        n = x.shape[0] * k
        if n <= 3:
            raise FalstudyError(
                f"CKA needs more than 3 token samples per minibatch, but this budget gives {n} "
                f"({x.shape[0]} sequence(s) x {k} position(s), position 0 excluded); "
                "raise tokens, batch_size or positions_per_seq"
            )


def _probe_fns() -> dict[str, Callable[..., list[dict]]]:
    from falstudy.probe.ablate import attention_removal
    from falstudy.probe.bypass import bypass_probe
    from falstudy.probe.cka import cka_probe
    from falstudy.probe.grads import gradient_norms
    from falstudy.probe.lens import logit_lens
    from falstudy.probe.linear import linear_probe

    return {
        "cka": cka_probe,
        "grads": gradient_norms,
        "attn_removal": attention_removal,
        "bypass": bypass_probe,
        "linear": linear_probe,
        "logit_lens": logit_lens,
    }


def run_probes(
    source: Any,
    probes: str | Iterable[str] = ("all",),
    tokens: int = 8192,
    batch_size: int = 8,
    out: str | Path | bool | None = None,
    *,
    seq_len: int | None = None,
    data: Any = None,
    split: str = "val",
    positions_per_seq: int | None = 32,
    cka_pairs: Iterable[tuple[str, str]] = (),
    device: str = "cpu",
    quiet: bool = False,
    seed: int = 0,
    run_id: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
):
    """Run ``probes`` on a model and return a pandas DataFrame of tidy rows (see rows.py).

    source      a GPT, a checkpoint file, a run folder ``results/<name>/runs/<run_id>/``, or a
                local GPT-2 Hugging Face folder
    probes      names or a comma list: cka, grads, attn_removal, bypass, linear, logit_lens, all
    tokens      token positions per probe pass (see the module docstring)
    out         where to write the rows: None -> the run folder when ``source`` is one;
                a path -> that run folder's spool; False -> nowhere. One Parquet file per
                probe (``probes-<probe>[-step<N>].parquet``), replaced when rerun
    run_id      the rows' run_id (default: the checkpoint's run)
    data        None -> the run's corpus (``config.data.path``, ``split``); a corpus folder; an
                int tensor (sequences, seq_len + 1); or a list of (x, y) batches
    cka_pairs   extra site pairs for the cka probe, e.g. [("blocks.0.attn", "blocks.3.mlp.input")]
    options     per-probe keyword arguments, e.g. {"linear": {"top_k": 16}}
    """
    names = parse_probes(probes)
    if not isinstance(tokens, int) or tokens < 1:
        raise FalstudyError(f"tokens must be a positive integer, got {tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FalstudyError(f"batch_size must be a positive integer, got {batch_size!r}")
    if positions_per_seq is not None and positions_per_seq < 1:
        raise FalstudyError(f"positions_per_seq must be positive (or None for all), got {positions_per_seq}")
    cka_pairs = [tuple(p) for p in cka_pairs]
    if cka_pairs and "cka" not in names:
        raise FalstudyError("cka_pairs given but the cka probe is not selected")
    fns = _probe_fns()
    options = _check_options(options or {}, fns)

    dev = resolve_device(device)
    loaded = load_source(source, dev)
    model = loaded.model
    _check_pairs(model, cka_pairs)  # fail before any compute
    run_id = run_id or loaded.run_id
    target = None if out is False else (loaded.run_dir if out in (None, True) else Path(out))
    if target is not None and run_id is None:
        raise FalstudyError("rows need a run_id to be written: probe a run folder or checkpoint, or pass run_id=")

    batches, ref = make_batches(data, loaded, tokens, batch_size, seq_len, seed, split)
    _check_budget(names, batches, positions_per_seq, tokens)
    batches = [(x.to(dev).contiguous(), y.to(dev).contiguous()) for x, y in batches]

    from tqdm.auto import tqdm

    from falstudy.probe import sites as S
    from falstudy.probe.rows import frame

    common = {"positions_per_seq": positions_per_seq, "seed": seed}
    kwargs: dict[str, dict[str, Any]] = {
        "cka": {**common, "pairs": cka_pairs},
        "bypass": dict(common),
        "linear": dict(common),
        "attn_removal": {"ref": None if ref is None else ref.to(dev)},
        "grads": {},
        "logit_lens": {},
    }
    nm = S.wrap(model)  # one nnsight view for every probe
    by_probe: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    bar = tqdm(total=len(names) * len(batches), disable=quiet, desc="probes", unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        for name in names:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            rows = fns[name](model, batches, nm=nm, progress=bar.update, **{**kwargs[name], **options.get(name, {})})
            for r in rows:
                r["run_id"], r["step"] = run_id, loaded.step
            by_probe[name] = rows
            seconds[name] = time.perf_counter() - t0
    finally:
        bar.close()
        model.train(was_training)

    if target is not None:
        from falstudy.store import RunSpool

        spool = RunSpool(target)
        for name, rows in by_probe.items():  # one file per probe and checkpoint step: a rerun replaces it
            if rows:
                spool.write_table("probes", rows, part=spool_part(name, loaded.step))
    df = frame(r for rows in by_probe.values() for r in rows)
    df.attrs["probe_seconds"] = seconds  # wall time per probe (not stored)
    return df


def _check_options(options: dict, fns: dict) -> dict:
    unknown = set(options) - set(PROBE_NAMES)
    if unknown:
        raise FalstudyError(f"options for unknown probe(s) {sorted(unknown)}; known: {', '.join(PROBE_NAMES)}")
    for name, opts in options.items():
        params = inspect.signature(fns[name]).parameters
        allowed = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("nm", "progress")]
        bad = [k for k in opts if k not in allowed]
        if bad:
            raise FalstudyError(f"unknown option(s) {bad} for probe {name}; allowed: {', '.join(allowed)}")
    return dict(options)


def _check_pairs(model, pairs: list[tuple]) -> None:
    from falstudy.probe import sites as S

    for pair in pairs:
        if len(pair) != 2:
            raise FalstudyError(f"cka pair {pair!r} must be two site names")
        for text in pair:
            site = S.parse_site(text, len(model.blocks))
            if not S.has_site(model, site):
                raise FalstudyError(f"site {text!r} does not exist in this model ({model.roles[site.layer]} block)")


def spool_part(probe: str, step: int | None) -> str:
    """``probes-<probe>[-step<N>].parquet``: distinct from the trainer's ``probes-<step>`` chunks."""
    return probe if step is None else f"{probe}-step{step:06d}"
