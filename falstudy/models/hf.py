"""Load GPT-2 weights from a local Hugging Face directory into falstudy's GPT.

The directory is what ``GPT2LMHeadModel.save_pretrained`` (or a hub snapshot) holds:
``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``; nothing is downloaded.
GPT-2 stores its linears as ``Conv1D`` (weight shaped (in, out), the transpose of
``nn.Linear``) and its q/k/v projections fused in ``c_attn`` ([q; k; v] along the output axis);
both are undone here. Keys may carry the ``transformer.`` prefix (GPT2LMHeadModel) or not
(GPT2Model, the original hub files). The result is the ``baseline`` wiring and gives the same
logits as transformers' GPT2LMHeadModel on the same weights; ``wiring=`` loads the same weights
into another wiring (parallel-form wirings keep GPT-2's two norms per block, ``shared_ln=False``;
FAL's substitute norms and gates, which GPT-2 lacks, keep their initial values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from falstudy.config import ModelConfig, RunConfig
from falstudy.errors import FalstudyError

# activations our MLP computes exactly (gelu with the tanh approximation)
_GELU_TANH = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


def is_hf_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "checkpoint.pt").exists()


def gpt2_model_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """The ModelConfig that reproduces a GPT-2 ``config.json``; refuses what it cannot reproduce."""
    where = "config.json"
    if hf.get("model_type") != "gpt2":
        raise FalstudyError(f"{where}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load here")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GELU_TANH:
        raise FalstudyError(f"{where}: activation_function {act!r} is not supported (allowed: {sorted(_GELU_TANH)})")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise FalstudyError(f"{where}: {flag}=true is not supported by falstudy's GPT")
    if not hf.get("scale_attn_weights", True):
        raise FalstudyError(f"{where}: scale_attn_weights=false is not supported by falstudy's GPT")
    n_embd = hf["n_embd"]
    fields = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", 1024),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        mlp_ratio=(hf.get("n_inner") or 4 * n_embd) / n_embd,
        norm="layernorm",
        mlp="gelu",
        pos="learned",
        bias=True,
        dropout=0.0,
        tie_weights=hf.get("tie_word_embeddings", True),
        wiring="baseline",
    )
    return ModelConfig(**{**fields, **overrides})


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    st, binf = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if binf.is_file():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise FalstudyError(f"{path}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


def convert_gpt2_state(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 parameter names and layouts -> falstudy GPT's."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    d = cfg.n_embd
    out: dict[str, torch.Tensor] = {"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"]}
    for name in ("weight", "bias"):
        out[f"ln_f.{name}"] = sd[f"ln_f.{name}"]
    for i in range(cfg.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"{b}{ln}.weight"], out[f"{b}{ln}.bias"] = sd[f"{h}{ln}.weight"], sd[f"{h}{ln}.bias"]
        # Conv1D weights are (in, out): transpose; c_attn's output axis is [q; k; v]
        qkv_w, qkv_b = sd[f"{h}attn.c_attn.weight"], sd[f"{h}attn.c_attn.bias"]
        for k, name in enumerate("qkv"):
            out[f"{b}attn.{name}.weight"] = qkv_w[:, k * d : (k + 1) * d].T.contiguous()
            out[f"{b}attn.{name}.bias"] = qkv_b[k * d : (k + 1) * d]
        pairs = (("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
        for src, dst in pairs:
            out[f"{b}{dst}.weight"] = sd[f"{h}{src}.weight"].T.contiguous()
            out[f"{b}{dst}.bias"] = sd[f"{h}{src}.bias"]
    if cfg.tie_weights:
        out["lm_head.weight"] = out["wte.weight"]
    elif "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    else:
        raise FalstudyError("untied GPT-2 checkpoint without lm_head.weight")
    return out


def load_gpt2(path: str | Path, *, wiring: str = "baseline", device: str | torch.device = "cpu"):
    """(GPT in eval mode, RunConfig) from a local GPT-2 Hugging Face directory."""
    from falstudy.models.gpt import GPT

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FalstudyError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        hf = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise FalstudyError(f"{path / 'config.json'}: malformed JSON ({err.msg}, line {err.lineno})") from None
    try:  # GPT-2 has two norms per block: a parallel-form wiring keeps both (MLP reads ln_2(x))
        extra = {} if wiring == "baseline" else {"shared_ln": False}
        cfg = gpt2_model_config(hf, wiring=wiring, **extra)
    except (KeyError, ValueError) as err:
        raise FalstudyError(f"{path / 'config.json'}: cannot build a GPT from it: {err}") from None
    model = GPT(cfg)
    try:
        state = convert_gpt2_state(_read_state(path), cfg)
    except KeyError as err:
        raise FalstudyError(f"{path}: weights lack {err.args[0]!r} that config.json implies") from None
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise FalstudyError(f"{path}: weights do not fit config.json (e.g. {bad[0]}: {tuple(state[bad[0]].shape)})")
    # only the substitute-signal norms and gates of fal wirings are new: they keep their init
    missing = [k for k in own if k not in state and "fal_" not in k]
    if missing:
        raise FalstudyError(f"{path}: no GPT-2 weights for {missing[0]} (wiring {wiring!r})")
    model.load_state_dict(state, strict=False)
    eps = hf.get("layer_norm_epsilon", 1e-5)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps
    run = RunConfig(name="hf", run_id=f"hf-{path.resolve().name}", model=cfg, tags={"hf_path": str(path)})
    return model.to(device).eval(), run
