"""One GPT whose block wiring is chosen by config.

Notation (docs/study.md): ``x`` is the residual stream entering a block, ``a`` the block's attention
(MHA) output, ``m`` its MLP output, ``s`` the substitute signal made from the source block's
attention output (``N_f(a_1)`` in the paper; layer 0 here).

    baseline   h = x + a(LN1 x);            x' = h + m(LN2 h)
    parallel   x' = x + a(LN x) + m(LN x)
    fal        x' = x + a(LN x) + m(LN x + s)          (form: ln_plus_nf | ln_sum | nf_only)
    fal_plus   h = x + a(LN1 x);            x' = h + m(LN2(h + s))     (F+2; F+1 and F+3 too)
    no_attn    x' = x + m(LN2 x)            no_mlp   x' = x + a(LN1 x)
    ladder     (residual="ladder", on baseline or fal) each module reads the stream before the
               previous module's output is added: a = a(LN1 x); h = x + m_prev; m = m(LN2 h); x' = h + a

Related wirings, orthogonal to the above (config switches; docs/study.md):
``norm_placement="post"`` (sublayers read x, the stream is normalised after each residual add),
``residual_gates`` (a learned scalar on each residual update), ``value_residual`` (later
attentions use lambda v_i + (1 - lambda) v_first), ``dense_dwa`` (DenseFormer: after block i the
stream is a learned weighted average of the embedding and the outputs of blocks 0..i).
None of them adds a collective: gates act after ``g``, DWA on the replicated stream, and the
first values are per head, so each TP rank mixes its own heads.

Collective points. The model is single-device code, but it marks where Megatron-style tensor
parallelism needs its two operators: ``comm.f`` (identity forward, all-reduce backward) on a
replicated tensor entering column-parallel linears, and ``comm.g`` (all-reduce forward, identity
backward) on partial sums leaving row-parallel linears. On one device both are the identity;
``falstudy.parallel`` swaps ``comm`` for real ones. Parallel-form blocks (parallel, fal) add the
MHA and MLP partial sums before a single ``g``: that is the all-reduce FAL saves. Ladder blocks
call ``comm.g_start`` instead of ``comm.g`` and ``.wait()`` one module later, where the result is
first needed, so under TP the all-reduce can overlap that module's compute.

Each block is built from its plan (falstudy.models.wiring.BlockPlan): which submodules exist,
where f and g stand, which form its forward runs. Probe sites (falstudy.models.catalogue; the
same names for every wiring) are submodules, so nnsight addresses them as
``model.blocks[i].attn.output``, ``model.blocks[i].mlp.input`` and so on.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from falstudy.config import ModelConfig
from falstudy.models.catalogue import CATALOGUE
from falstudy.models.wiring import BlockPlan, block_plans, block_roles  # noqa: F401  (block_roles: re-exported)

SITES: dict[str, str] = {s.name: s.meaning for s in CATALOGUE}  # the probe sites, by module path


class Tap(nn.Identity):
    """A named probe site: the identity, so hooks and nnsight can read or replace the value."""

    def observed(self) -> bool:
        """Whether anything reads this site: a hook (its own or a global one) or a wrapper that
        replaced its forward (nnsight). A site that costs work of its own is computed only then."""
        from torch.nn.modules import module as M

        return bool(self._forward_hooks or self._forward_pre_hooks or M._global_forward_hooks
                    or M._global_forward_pre_hooks or "forward" in self.__dict__)


class Ready:
    """An all-reduce that has finished (one device, or a synchronous one): ``wait()`` gives it."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value

    def wait(self) -> torch.Tensor:
        return self.value


class LocalComm:
    """Single device: Megatron's f and g are both the identity. ``g_start`` begins a g whose
    result is needed later (ladder blocks): it returns a pending whose ``wait()`` gives it."""

    world_size = 1

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def g(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def g_start(x: torch.Tensor) -> Ready:
        return Ready(x)


LOCAL = LocalComm()


def run_sequential(first, second):
    """How a parallel-form block runs its MHA and MLP branches: one after the other."""
    return first(), second()


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-5)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rope_tables(cfg: ModelConfig, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    half = cfg.head_dim // 2
    inv_freq = 1.0 / base ** (torch.arange(half, dtype=torch.float32) / half)
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D). Rotates pairs (first half, second half) of each head's dims."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[: x.size(-2)].to(x.dtype), sin[: x.size(-2)].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class ValueResidual:
    """Carries the first attention's values (B, H, T, D) to later attentions for one forward
    pass (ResFormer's value residual): the first call keeps its values, later calls mix."""

    def __init__(self, lam: float):
        self.lam, self.first = lam, None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            self.first = v
            return v
        return self.lam * v + (1.0 - self.lam) * self.first


class Ladder:
    """Carries one started all-reduce from a module to the next for one forward pass (Ladder
    residual): a module pushes its output's ``g_start``; the next module pops it and waits for
    it where it adds it to the stream, after starting its own."""

    def __init__(self):
        self.started = None

    def push(self, started) -> None:
        self.started = started

    def pop(self):
        started, self.started = self.started, None
        return started


class Attention(nn.Module):
    """Causal MHA with separate q/k/v projections (column-shardable by heads)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.n_embd
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(d, d, bias=cfg.bias)
        self.k = nn.Linear(d, d, bias=cfg.bias)
        self.v = nn.Linear(d, d, bias=cfg.bias)
        self.proj = nn.Linear(d, d, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                values: ValueResidual | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # heads come from the local width, so a column-sharded q/k/v just has fewer of them
        q, k, v = (p(x).view(B, T, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if values is not None:
            v = values(v)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.n_embd
        self.swiglu = cfg.mlp == "swiglu"
        hidden = cfg.mlp_hidden
        if self.swiglu:
            self.fc_gate = nn.Linear(d, hidden, bias=cfg.bias)
        self.fc1 = nn.Linear(d, hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(hidden, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.fc2(F.silu(self.fc_gate(x)) * self.fc1(x))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """One block, built from its plan (falstudy.models.wiring): every optional submodule is an
    attribute on every block, None where the plan has none. ``forward`` runs the plan's form."""

    def __init__(self, cfg: ModelConfig, plan: BlockPlan):
        super().__init__()
        self.plan, self.layer, self.role = plan, plan.layer, plan.role
        self.comm = LOCAL
        self.run_branches = run_sequential
        self.post = plan.post  # post-LN: sublayers read the stream; each residual add is normalised
        self.resid_pre, self.resid_mid, self.resid_post = Tap(), Tap(), Tap()
        self.ln_1 = make_norm(cfg) if plan.ln_1 else None
        self.attn = Attention(cfg) if plan.attn else None
        self.ln_2 = make_norm(cfg) if plan.ln_2 else None
        self.mlp = MLP(cfg) if plan.mlp else None
        self.drop = nn.Dropout(cfg.dropout)
        # DenseFormer: this block's weights over (embedding, outputs of blocks 0..layer), identity at init
        self.dwa = nn.Parameter(F.one_hot(torch.tensor(plan.layer + 1), plan.layer + 2).float()) if plan.dwa else None
        gate = lambda: nn.Parameter(torch.full((1,), float(cfg.residual_gate_init)))  # noqa: E731
        self.gate_1 = gate() if plan.gate_1 else None
        self.gate_2 = gate() if plan.gate_2 else None
        # the substitute signal: made at the last source block, taken by each consumer
        self.fal_norm = make_norm(cfg) if plan.fal_norm else None
        self.fal_src = Tap() if plan.emits_src else None
        self.fal_norm_in = make_norm(cfg) if plan.fal_norm_in else None
        self.fal_gate = nn.Parameter(torch.zeros(1)) if plan.fal_gate else None
        self.fal_in = Tap() if plan.consumes_src else None

    def forward(self, x: torch.Tensor, src: torch.Tensor | None = None, rope=None,
                values: ValueResidual | None = None, history: list[torch.Tensor] | None = None,
                ladder: "Ladder | None" = None):
        """Returns (block output, substitute signal for later blocks). ``history`` (DenseFormer):
        the embedding and the earlier blocks' outputs; this block appends its own. ``ladder``: the
        output of the previous module, started but not yet added to ``x``."""
        x = self.resid_pre(x)
        out, a, src = getattr(self, f"_{self.plan.form}")(x, src, rope, values, ladder)
        if self.dwa is not None:  # the stream after this block: a weighted average over depth
            history.append(out)
            out = sum(w * h for w, h in zip(self.dwa, history))
        out = self.resid_post(out)
        if self.plan.source_weight and self.plan.form != "source":
            src = self._collect_src(a, src)
        return out, src

    # -- the forms (falstudy.models.wiring.FORMS); each returns (out, a, src) ---------------------
    def _serial(self, x, src, rope, values, ladder):
        """baseline:  h = x + a(LN1 x);  x' = h + m(LN2 h)
        fal_plus:  the MLP input gains s: f1 h += s | f2 m(LN2(h + s)) | f3 m(LN2 h + s)"""
        c = self.comm
        a = self.drop(c.g(self._attend(self._in(self.ln_1, x), rope, values)))
        h = self._add(self.ln_1, x, a, self.gate_1)
        if self.plan.consumes_src:
            s = self._take_src(src)
            if self.plan.mlp_input == "f1":  # the term also enters the stream
                h = h + s
                mlp_in = c.f(self._in(self.ln_2, h))
            elif self.plan.mlp_input == "f2":
                mlp_in = c.f(self._in(self.ln_2, h + s))
            else:  # f3
                mlp_in = c.f(self._in(self.ln_2, h)) + s
        else:
            mlp_in = c.f(self._in(self.ln_2, h))
        h = self.resid_mid(h)
        return self._add(self.ln_2, h, self.drop(c.g(self.mlp(mlp_in))), self.gate_2), a, src

    def _parallel(self, x, src, rope, values, ladder):
        """parallel:  x' = x + g(a(LN x) + m(LN x))       fal:  x' = x + g(a(LN x) + m(LN x + s))
        (fal forms: ln_plus_nf LN x + s | ln_sum LN(x + s) | nf_only s; one all-reduce for both)"""
        a, m = self._branches(x, src, rope, values)
        if self.resid_mid.observed():  # a probe site only (in TP ``a`` is a partial sum here)
            self.resid_mid(x + a)
        return self._add(self.ln_1, x, self.drop(self.comm.g(a + m)), self.gate_1), a, src

    def _source(self, x, src, rope, values, ladder):
        """The source block in fal form: s = N_f(a);  x' = x + a + m(LN x + s), two all-reduces."""
        c = self.comm
        fn = c.f(self._in(self.ln_1, x))
        a = self.drop(c.g(self.attn(fn, rope, values)))
        src = self._make_src(a)
        m = self.drop(c.g(self.mlp(self._fal_mlp_input(x, fn, self._take_src(src)))))
        h = self.resid_mid(x + (self.gate_1 * a if self.gate_1 is not None else a))
        return self._add(self.ln_1, h, m, self.gate_2), a, src

    def _no_attn(self, x, src, rope, values, ladder):
        """x' = x + m(LN2 x)"""
        m = self.drop(self.comm.g(self.mlp(self.comm.f(self._in(self.ln_2, x)))))
        return self._add(self.ln_2, self.resid_mid(x), m, self.gate_2), None, src

    def _no_mlp(self, x, src, rope, values, ladder):
        """x' = x + a(LN1 x)"""
        a = self.drop(self.comm.g(self._attend(self._in(self.ln_1, x), rope, values)))
        return self.resid_mid(self._add(self.ln_1, x, a, self.gate_1)), a, src

    def _ladder(self, x, src, rope, values, ladder):
        """Ladder residual, serial blocks (modules MHA, MLP; each reads the stream before the
        previous module's output o_prev is added):
            a = a(LN1 x);   h = x + o_prev;   m = m(LN2 h);   x' = h + a;   m is pending
        Each all-reduce is started (g_start) and waited one module later, so under TP it can
        overlap the next module's compute."""
        c = self.comm
        a_started = c.g_start(self._attend(self.ln_1(x), rope, values))
        prev = ladder.pop()  # the previous MLP's output (None in block 0)
        h = self.resid_mid(x if prev is None else x + self.drop(prev.wait()))
        ladder.push(c.g_start(self.mlp(c.f(self.ln_2(h)))))
        a = self.drop(a_started.wait())
        return h + a, a, src

    def _ladder_parallel(self, x, src, rope, values, ladder):
        """Ladder residual, parallel-form blocks (fal_ladder): the block is one module,
            o = g(a(LN x) + m(LN x + s));   x' = x + o_prev;   o is pending"""
        a, m = self._branches(x, src, rope, values)
        if self.resid_mid.observed():  # a probe site only
            self.resid_mid(x + a)
        prev = ladder.pop()  # the previous module's output (None in block 0)
        ladder.push(self.comm.g_start(a + m))
        return (x if prev is None else x + self.drop(prev.wait())), a, src

    # -- pieces ----------------------------------------------------------------------------
    def _branches(self, x, src, rope, values):
        """A parallel-form block's independent MHA and MLP (falstudy.parallel.concurrent may
        overlap them) on one f'd LN x; the MLP reads its own norm, or LN x + s (fal)."""
        c = self.comm
        fn = c.f(self._in(self.ln_1, x))

        def mlp_branch() -> torch.Tensor:
            if not self.plan.consumes_src:
                return self.mlp(fn if self.ln_2 is None else c.f(self.ln_2(x)))
            return self.mlp(self._fal_mlp_input(x, fn, self._take_src(src)))

        return self.run_branches(lambda: self.attn(fn, rope, values), mlp_branch)

    def _attend(self, n: torch.Tensor, rope, values) -> torch.Tensor:
        return self.attn(self.comm.f(n), rope, values)

    def _in(self, norm: nn.Module | None, t: torch.Tensor) -> torch.Tensor:
        """What a sublayer reads: LN(t) (pre-LN), or t itself (post-LN)."""
        return t if self.post else norm(t)

    def _add(self, norm: nn.Module | None, t: torch.Tensor, update: torch.Tensor, gate: nn.Parameter | None) -> torch.Tensor:
        """A residual add: t + (gate *) update, normalised after it under post-LN."""
        out = t + (gate * update if gate is not None else update)
        return norm(out) if self.post else out

    def _collect_src(self, a: torch.Tensor, src: torch.Tensor | None) -> torch.Tensor:
        """The source side: accumulate a (the mean of the first m); emit s at the last source."""
        contribution = a * self.plan.source_weight
        src = contribution if src is None else src + contribution
        return self._make_src(src) if self.plan.emits_src else src

    def _make_src(self, acc: torch.Tensor) -> torch.Tensor:
        s = self.fal_norm(acc) if self.fal_norm is not None else acc
        return self.fal_src(self.comm.f(s) if self.plan.f_at_source else s)

    def _take_src(self, src: torch.Tensor) -> torch.Tensor:
        s = self.fal_norm_in(src) if self.fal_norm_in is not None else src
        if self.fal_gate is not None:
            s = self.fal_gate * s
        return self.fal_in(self.comm.f(s) if self.plan.f_at_consumer else s)

    def _fal_mlp_input(self, x: torch.Tensor, fn: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        c = self.comm
        if self.plan.mlp_input == "ln_plus_nf":
            return (fn if self.ln_2 is None else c.f(self.ln_2(x))) + s
        if self.plan.mlp_input == "ln_sum":
            norm = self.ln_2 if self.ln_2 is not None else self.ln_1
            return c.f(self._in(norm, x + s))
        return s  # nf_only


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.plans = block_plans(cfg)
        self.roles = [p.role for p in self.plans]
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, plan) for plan in self.plans)
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2L)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
            if not self.config.tie_weights:
                n -= self.lm_head.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Returns (logits, loss); loss is None without targets."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.config.block_size}")
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = (self.rope_cos, self.rope_sin)
        x = self.drop(x)
        src = None
        values = ValueResidual(self.config.value_residual_lambda) if self.config.value_residual else None
        history = [x] if self.config.dense_dwa else None
        ladder = Ladder() if self.config.residual == "ladder" else None
        for block in self.blocks:
            x, src = block(x, src, rope, values, history, ladder)
        if ladder is not None:  # the last module's output joins the stream before ln_f
            x = x + self.drop(ladder.pop().wait())
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
