"""Probe sites by name, and one nnsight trace that reads and edits many of them.

A site is a tensor the model computes at a named submodule. The sites are catalogued once, in
``falstudy.models.catalogue`` (the table in docs/probes.md is generated from it): each has a
module path (``blocks.i.attn``), a side (``output``) and a short kind (``attn_out``) that probe
rows store.

Users may also name a site by its module path: ``blocks.3.attn``, ``blocks.3.mlp.input``,
``blocks.3.resid_post.output``, ``ln_f``. A site whose module a wiring lacks (``attn`` in a
``no_attn`` block) is simply absent: probes skip it.

nnsight wants sites read in forward order, and the order differs by wiring (a ``parallel``
block runs its MLP before ``resid_mid``). ``forward_order`` records the real order once with
plain forward hooks, and ``trace`` visits sites in that order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from falstudy.errors import FalstudyError
from falstudy.models.catalogue import CATALOGUE

# kind -> (module attribute, "input" | "output")
SITE_KINDS: dict[str, tuple[str, str]] = {s.kind: (s.module, s.io) for s in CATALOGUE}
_BY_MODULE = {(mod, io): kind for kind, (mod, io) in SITE_KINDS.items()}
_PATH = re.compile(r"^blocks\.(\d+)\.([a-z_0-9]+?)(?:\.(input|output))?$")


@dataclass(frozen=True, order=True)
class Site:
    kind: str
    layer: int  # ln_f sits after the last block: layer = n_layer

    @property
    def module_path(self) -> str:
        mod = SITE_KINDS[self.kind][0]
        return mod if self.kind == "ln_f" else f"blocks.{self.layer}.{mod}"

    @property
    def io(self) -> str:
        return SITE_KINDS[self.kind][1]

    @property
    def name(self) -> str:
        return f"{self.module_path}.{self.io}"

    def __str__(self) -> str:
        return f"{self.kind}@{self.layer}"


def parse_site(text: str, n_layer: int) -> Site:
    """``blocks.3.attn`` / ``blocks.3.mlp.input`` / ``attn_out@3`` / ``ln_f`` -> Site."""
    text = text.strip()
    allowed = (
        f"use blocks.<i>.<module>[.input|.output] with module in "
        f"{sorted({m for m, _ in SITE_KINDS.values()} - {'ln_f'})}, kind@<i> with kind in "
        f"{sorted(SITE_KINDS)}, or ln_f (layers 0..{n_layer - 1})"
    )
    if text in ("ln_f", "ln_f.output"):
        return Site("ln_f", n_layer)
    if "@" in text:
        kind, _, layer = text.partition("@")
        if kind not in SITE_KINDS or kind == "ln_f" or not layer.isdigit():
            raise FalstudyError(f"unknown site {text!r}; {allowed}")
        site = Site(kind, int(layer))
    else:
        match = _PATH.match(text)
        if not match:
            raise FalstudyError(f"unknown site {text!r}; {allowed}")
        layer, mod, io = int(match[1]), match[2], match[3]
        if mod == "mlp" and io is None:
            raise FalstudyError(f"site {text!r} is ambiguous: say {text}.input (what the MLP reads) or {text}.output")
        kind = _BY_MODULE.get((mod, io or "output"))
        if kind is None:
            raise FalstudyError(f"unknown site {text!r}; {allowed}")
        site = Site(kind, layer)
    if not 0 <= site.layer < n_layer:
        raise FalstudyError(f"site {text!r}: layer {site.layer} does not exist (layers 0..{n_layer - 1})")
    return site


def check_kinds(kinds: Iterable[str], what: str = "site") -> list[str]:
    kinds = list(kinds)
    for kind in kinds:
        if kind not in SITE_KINDS or kind == "ln_f":
            raise FalstudyError(f"unknown {what} {kind!r}; known: {', '.join(k for k in SITE_KINDS if k != 'ln_f')}")
    return kinds


def unwrap(model: nn.Module) -> nn.Module:
    """The eager single-device model under torch.compile / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def module_at(root: Any, path: str) -> Any:
    """``root.blocks[3].attn`` for ``"blocks.3.attn"``; works on a model and on its nnsight envoy."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def has_site(model: nn.Module, site: Site) -> bool:
    n_layer = len(model.blocks)
    if site.kind == "ln_f":
        return True
    return 0 <= site.layer < n_layer and module_at(model, site.module_path) is not None


def layer_sites(model: nn.Module, kind: str) -> list[Site]:
    """The sites of one kind the model has, one per block that has it."""
    return [s for s in (Site(kind, i) for i in range(len(model.blocks))) if has_site(model, s)]


def forward_order(model: nn.Module) -> dict[tuple[str, str], int]:
    """Rank of every (module path, input|output) in one real forward pass."""
    seen: dict[tuple[str, str], int] = {}
    handles = []
    paths = {f"blocks.{i}.{mod}" for i in range(len(model.blocks)) for mod, _ in SITE_KINDS.values()} | {"ln_f"}

    def mark(key: tuple[str, str]) -> None:  # a hook that returns something would replace the value
        seen.setdefault(key, len(seen))

    for path in paths:
        mod = module_at(model, path)
        if mod is None:
            continue
        handles.append(mod.register_forward_pre_hook(lambda *_, p=path: mark((p, "input"))))
        handles.append(mod.register_forward_hook(lambda *_, p=path: mark((p, "output"))))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
    return seen


# --- interventions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """Replace the value at ``site`` with ``fn(value, env)``; ``env`` maps already-visited sites
    (including ``needs``) to their live values in this forward pass."""

    site: Site
    fn: Callable[[torch.Tensor, Mapping[Site, torch.Tensor]], torch.Tensor]
    needs: tuple[Site, ...] = ()


@dataclass
class Plan:
    """The sites to visit in one trace, in forward order, and the edits among them."""

    steps: list[tuple[Site, str, str, Edit | None]] = field(default_factory=list)


def make_plan(order: Mapping[tuple[str, str], int], capture: Iterable[Site], edits: Iterable[Edit] = ()) -> Plan:
    edits = list(edits)
    by_site = {e.site: e for e in edits}
    if len(by_site) != len(edits):
        raise ValueError("two edits on one site")
    wanted = set(capture) | set(by_site) | {n for e in edits for n in e.needs}
    missing = [s for s in wanted if (s.module_path, s.io) not in order]
    if missing:
        raise FalstudyError(f"site(s) {', '.join(map(str, sorted(missing)))} do not exist in this model's wiring")
    ranked = sorted(wanted, key=lambda s: order[(s.module_path, s.io)])
    return Plan([(s, s.module_path, s.io, by_site.get(s)) for s in ranked])


def trace(nm: Any, x: torch.Tensor, y: torch.Tensor | None, plan: Plan) -> tuple[dict[Site, torch.Tensor], torch.Tensor | None]:
    """One forward pass under nnsight: visit the plan's sites in order, apply its edits, and
    return every visited site's value (as downstream saw it) and the loss (None without y)."""
    args = (x,) if y is None else (x, y)
    loss = None  # only saved values leave the trace; without targets there is no loss to save
    with nm.trace(*args):
        env = _save({})
        for site, path, io, edit in plan.steps:
            envoy = module_at(nm, path)
            value = envoy.output if io == "output" else envoy.input
            if edit is not None:
                value = edit.fn(value, env)
                if io == "output":
                    envoy.output = value
                else:
                    envoy.input = value
            env[site] = value
        if y is not None:
            loss = _save(nm.output[1])
    return env, loss


def _save(value: Any) -> Any:
    import nnsight  # lazily: importing nnsight patches every object and reads sys.argv

    return nnsight.save(value)


def wrap(model: nn.Module) -> Any:
    """An nnsight view of ``model`` (shares its parameters; installs inert forwards on it)."""
    from nnsight import NNsight

    return NNsight(model)


# --- norms used by interventions (functional, so no module is called twice inside a trace) ---


def apply_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` applied functionally; None (a post-LN parallel-form MLP's "norm") is x itself."""
    if norm is None:
        return x
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    if isinstance(norm, nn.RMSNorm):
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    raise TypeError(f"unsupported norm {type(norm).__name__}")


def plain_norm(x: torch.Tensor, like: nn.Module) -> torch.Tensor:
    """Parameter-free version of the model's norm type: (x - mean)/std for LayerNorm models,
    x/rms for RMSNorm models; eps as the model's. No learned scale or shift."""
    eps = like.eps if like.eps is not None else 1e-5
    if isinstance(like, nn.RMSNorm):
        return F.rms_norm(x, (x.shape[-1],), None, eps)
    return F.layer_norm(x, (x.shape[-1],), None, None, eps)


def mlp_norm(block: nn.Module) -> nn.Module | None:
    """The norm whose output the block's MLP reads: its own ln_2, or ln_1 when shared. Under
    post-LN (``norm_placement="post"``) a baseline-form MLP reads ln_1(x + a), the norm after
    attention's add, and a parallel-form MLP reads the stream itself (None: no norm)."""
    name = block.plan.mlp_norm  # falstudy.models.wiring.BlockPlan
    return getattr(block, name) if name is not None else None


# --- token sampling -----------------------------------------------------------------------------


def sample_positions(
    batch: int, seq_len: int, per_seq: int | None, generator: torch.Generator, exclude_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the token positions a representation probe uses: ``per_seq`` distinct
    positions drawn from each sequence (all of them when None), position 0 left out by default."""
    start = 1 if exclude_first else 0
    avail = seq_len - start
    if per_seq is None or per_seq >= avail:
        cols = torch.arange(start, seq_len).repeat(batch, 1)
    else:
        cols = torch.rand(batch, avail, generator=generator).argsort(dim=1)[:, :per_seq] + start
        cols = cols.sort(dim=1).values
    rows = torch.arange(batch).unsqueeze(1).expand_as(cols)
    return rows.reshape(-1), cols.reshape(-1)


def gather(value: torch.Tensor, idx: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, T, d) -> (n, d) at the sampled positions."""
    rows, cols = idx
    return value[rows.to(value.device), cols.to(value.device)]
