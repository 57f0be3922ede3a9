"""One GPT whose block wiring is chosen by config.

Notation (docs/study.md): ``x`` is the residual stream entering a block, ``a`` the block's attention
(MHA) output, ``m`` its MLP output, ``s`` the substitute signal made from the source block's
attention output (``N_f(a_1)`` in the paper; layer 0 here).

    baseline   h = x + a(LN1 x);            x' = h + m(LN2 h)
    parallel   x' = x + a(LN x) + m(LN x)
    fal        x' = x + a(LN x) + m(LN x + s)          (form: ln_plus_nf | ln_sum | nf_only)
    fal_plus   h = x + a(LN1 x);            x' = h + m(LN2(h + s))     (F+2; F+1 and F+3 too)
    no_attn    x' = x + m(LN2 x)            no_mlp   x' = x + a(LN1 x)

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
MHA and MLP partial sums before a single ``g``: that is the all-reduce FAL saves.

Probe sites (stable names, the same for every wiring; see ``SITES``) are submodules, so nnsight
addresses them as ``model.blocks[i].attn.output``, ``model.blocks[i].mlp.input`` and so on.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from falstudy.config import ModelConfig

SITES: dict[str, str] = {
    "blocks.{i}.resid_pre": "output: residual stream entering block i",
    "blocks.{i}.attn": "output: MHA output a_i (after the output projection)",
    "blocks.{i}.resid_mid": "output: x_i + a_i, the residual after attention (the paper's h)",
    "blocks.{i}.mlp": "input: what the MLP reads; output: the MLP output m_i",
    "blocks.{i}.resid_post": "output: block output x_{i+1}",
    "blocks.{i}.fal_src": "output: substitute signal s made at the (last) source block (fal, fal_plus)",
    "blocks.{i}.fal_in": "output: the substitute term block i's MLP (or stream) receives",
    "ln_f": "output: final norm before the unembedding",
}


class Tap(nn.Identity):
    """A named probe site: the identity, so hooks and nnsight can read or replace the value."""


class LocalComm:
    """Single device: Megatron's f and g are both the identity."""

    world_size = 1

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def g(x: torch.Tensor) -> torch.Tensor:
        return x


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
        if self.swiglu:  # 2/3 of the width keeps the parameter count of a gelu MLP
            hidden = int(2 * cfg.mlp_ratio * d / 3 + 7) // 8 * 8
            self.fc_gate = nn.Linear(d, hidden, bias=cfg.bias)
        else:
            hidden = int(cfg.mlp_ratio * d)
        self.fc1 = nn.Linear(d, hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(hidden, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.fc2(F.silu(self.fc_gate(x)) * self.fc1(x))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def block_roles(cfg: ModelConfig) -> list[str]:
    """The wiring of each block: baseline | parallel | fal | fal_source | fal_plus | no_attn | no_mlp."""
    L = cfg.n_layer
    if cfg.wiring in ("no_attn", "no_mlp"):
        ablated = set(range(L) if cfg.ablate_layers is None else cfg.ablate_layers)
        return [cfg.wiring if i in ablated else "baseline" for i in range(L)]
    if cfg.wiring in ("baseline", "parallel"):
        return [cfg.wiring] * L
    last = max(cfg.fal_source_layers)
    roles = ["baseline"] * (last + 1) + [cfg.wiring] * (L - last - 1)
    if cfg.wiring == "fal" and cfg.fal_first_block == "fal":
        roles[last] = "fal_source"
    return roles


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, role: str):
        super().__init__()
        self.layer, self.role = layer, role
        self.comm = LOCAL
        self.run_branches = run_sequential
        parallel_form = role in ("parallel", "fal", "fal_source")
        has_attn, has_mlp = role != "no_attn", role != "no_mlp"
        ln_sum = cfg.wiring == "fal" and cfg.fal_mlp_input == "ln_sum"

        self.resid_pre, self.resid_mid, self.resid_post = Tap(), Tap(), Tap()
        self.ln_1 = make_norm(cfg) if has_attn else None
        self.attn = Attention(cfg) if has_attn else None
        # parallel-form blocks share one LN between MHA and MLP unless shared_ln=False
        own_ln_2 = has_mlp and not (parallel_form and cfg.shared_ln and has_attn)
        self.ln_2 = make_norm(cfg) if own_ln_2 else None
        self.mlp = MLP(cfg) if has_mlp else None
        self.drop = nn.Dropout(cfg.dropout)
        # post-LN: each residual add is followed by ln_1 (attention, or a parallel-form block's
        # single add) or ln_2 (MLP); the sublayers then read the stream as it is
        self.post = cfg.norm_placement == "post"
        if self.post and parallel_form:
            self.ln_2 = None  # one add, one norm
        # residual gates: gate_1 on the attention update (or a parallel block's single update),
        # gate_2 on the MLP update where it is added on its own
        # DenseFormer: this block's weights over (embedding, outputs of blocks 0..layer), identity at init
        self.dwa = nn.Parameter(F.one_hot(torch.tensor(layer + 1), layer + 2).float()) if cfg.dense_dwa else None
        gate = lambda: nn.Parameter(torch.full((1,), float(cfg.residual_gate_init)))  # noqa: E731
        self.gate_1 = gate() if cfg.residual_gates and has_attn else None
        self.gate_2 = gate() if cfg.residual_gates and has_mlp and role not in ("parallel", "fal") else None

        # the source side: accumulate a (mean of the first m) and emit s at the last source
        sources = cfg.fal_source_layers if cfg.uses_fal_source else []
        self.source_weight = 1.0 / len(sources) if layer in sources else 0.0
        self.emits_src = bool(sources) and layer == max(sources)
        uses_nf = cfg.uses_fal_source and not ln_sum
        self.src_feeds_linear = (cfg.wiring == "fal" and not ln_sum) or (
            cfg.wiring == "fal_plus" and cfg.fal_plus_form == "f3"
        )
        per_block_src_work = cfg.fal_norm == "per_layer" or cfg.fal_gate
        if self.emits_src:
            self.fal_norm = make_norm(cfg) if uses_nf and cfg.fal_norm == "shared" else None
            # one f for the whole stack: each consumer adds its gradient locally, one reduce
            self.f_at_source = self.src_feeds_linear and not per_block_src_work
            self.fal_src = Tap()

        # the consumer side
        self.consumes_src = role in ("fal", "fal_source", "fal_plus")
        if self.consumes_src:
            self.fal_norm_in = make_norm(cfg) if uses_nf and cfg.fal_norm == "per_layer" else None
            self.fal_gate = nn.Parameter(torch.zeros(1)) if cfg.fal_gate else None
            self.f_at_consumer = self.src_feeds_linear and per_block_src_work
            self.fal_in = Tap()
            self.mlp_input = cfg.fal_mlp_input if cfg.wiring == "fal" else cfg.fal_plus_form

    # -- pieces ----------------------------------------------------------------------------
    def _attend(self, n: torch.Tensor, rope, values) -> torch.Tensor:
        return self.attn(self.comm.f(n), rope, values)

    def _in(self, norm: nn.Module | None, t: torch.Tensor) -> torch.Tensor:
        """What a sublayer reads: LN(t) (pre-LN), or t itself (post-LN)."""
        return t if self.post else norm(t)

    def _add(self, norm: nn.Module | None, t: torch.Tensor, update: torch.Tensor, gate: nn.Parameter | None) -> torch.Tensor:
        """A residual add: t + (gate *) update, normalised after it under post-LN."""
        out = t + (gate * update if gate is not None else update)
        return norm(out) if self.post else out

    def _make_src(self, acc: torch.Tensor) -> torch.Tensor:
        s = self.fal_norm(acc) if self.fal_norm is not None else acc
        return self.fal_src(self.comm.f(s) if self.f_at_source else s)

    def _take_src(self, src: torch.Tensor) -> torch.Tensor:
        s = self.fal_norm_in(src) if self.fal_norm_in is not None else src
        if self.fal_gate is not None:
            s = self.fal_gate * s
        return self.fal_in(self.comm.f(s) if self.f_at_consumer else s)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, src: torch.Tensor | None = None, rope=None,
                values: ValueResidual | None = None, history: list[torch.Tensor] | None = None):
        """Returns (block output, substitute signal for later blocks). ``history`` (DenseFormer):
        the embedding and the earlier blocks' own outputs; this block appends its own."""
        x = self.resid_pre(x)
        c, role = self.comm, self.role

        if role in ("baseline", "fal_plus"):
            a = self.drop(c.g(self._attend(self._in(self.ln_1, x), rope, values)))
            h = self._add(self.ln_1, x, a, self.gate_1)
            if role == "fal_plus":
                s = self._take_src(src)
                if self.mlp_input == "f1":  # the term also enters the stream
                    h = h + s
                    mlp_in = c.f(self._in(self.ln_2, h))
                elif self.mlp_input == "f2":
                    mlp_in = c.f(self._in(self.ln_2, h + s))
                else:  # f3
                    mlp_in = c.f(self._in(self.ln_2, h)) + s
            else:
                mlp_in = c.f(self._in(self.ln_2, h))
            h = self.resid_mid(h)
            out = self._add(self.ln_2, h, self.drop(c.g(self.mlp(mlp_in))), self.gate_2)

        elif role in ("parallel", "fal"):
            fn = c.f(self._in(self.ln_1, x))

            def mlp_branch() -> torch.Tensor:
                if role == "parallel":
                    return self.mlp(fn if self.ln_2 is None else c.f(self.ln_2(x)))
                return self.mlp(self._fal_mlp_input(x, fn, self._take_src(src)))

            # independent sublayers: falstudy.parallel.concurrent_branches may overlap them
            a, m = self.run_branches(lambda: self.attn(fn, rope, values), mlp_branch)
            self.resid_mid(x + a)  # a probe site only; in TP ``a`` is a partial sum here
            out = self._add(self.ln_1, x, self.drop(c.g(a + m)), self.gate_1)  # one all-reduce for both

        elif role == "fal_source":  # the source block in fal form: its MLP reads its own s
            fn = c.f(self._in(self.ln_1, x))
            a = self.drop(c.g(self.attn(fn, rope, values)))
            src = self._make_src(a)
            mlp_in = self._fal_mlp_input(x, fn, self._take_src(src))
            m = self.drop(c.g(self.mlp(mlp_in)))
            h = self.resid_mid(x + (self.gate_1 * a if self.gate_1 is not None else a))
            out = self._add(self.ln_1, h, m, self.gate_2)

        elif role == "no_attn":
            a = None
            m = self.drop(c.g(self.mlp(c.f(self._in(self.ln_2, x)))))
            out = self._add(self.ln_2, self.resid_mid(x), m, self.gate_2)
        else:  # no_mlp
            a = self.drop(c.g(self._attend(self._in(self.ln_1, x), rope, values)))
            out = self.resid_mid(self._add(self.ln_1, x, a, self.gate_1))
        if self.dwa is not None:  # the stream after this block: a weighted average over depth
            history.append(out)
            out = sum(w * h for w, h in zip(self.dwa, history))
        out = self.resid_post(out)

        if self.source_weight and role != "fal_source":
            contribution = a * self.source_weight
            src = contribution if src is None else src + contribution
            if self.emits_src:
                src = self._make_src(src)
        return out, src

    def _fal_mlp_input(self, x: torch.Tensor, fn: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        c = self.comm
        if self.mlp_input == "ln_plus_nf":
            return (fn if self.ln_2 is None else c.f(self.ln_2(x))) + s
        if self.mlp_input == "ln_sum":
            norm = self.ln_2 if self.ln_2 is not None else self.ln_1
            return c.f(self._in(norm, x + s))
        return s  # nf_only


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.roles = block_roles(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i, role) for i, role in enumerate(self.roles))
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
        for block in self.blocks:
            x, src = block(x, src, rope, values, history)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
