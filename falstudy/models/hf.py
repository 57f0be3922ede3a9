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
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from falstudy.config import ModelConfig, RunConfig, validate
from falstudy.errors import FalstudyError
from falstudy.names import safe_name
from falstudy.store.layout import CHECKPOINT

# activations our MLP computes exactly (gelu with the tanh approximation)
_GELU_TANH = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


def is_hf_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / CHECKPOINT).exists()


MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
_REQUIRED_INTS = ("vocab_size", "n_layer", "n_head", "n_embd")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def read_hf_config(path: Path) -> dict[str, Any]:
    """config.json as a dict whose size fields are positive integers (checked before anything is built)."""
    where = path / "config.json"
    if where.stat().st_size > MAX_CONFIG_BYTES:
        raise FalstudyError(f"{where}: {where.stat().st_size} bytes is not a model config (over 1 MiB)")
    try:
        hf = json.loads(where.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise FalstudyError(f"{where}: not UTF-8 text (offset {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise FalstudyError(f"{where}: malformed JSON ({err.msg}, line {err.lineno})") from None
    except RecursionError:
        raise FalstudyError(f"{where}: JSON nested too deeply to be a model config") from None
    if not isinstance(hf, dict):
        raise FalstudyError(f"{where}: expected a JSON object of GPT-2 settings, got {type(hf).__name__}")
    if hf.get("model_type") != "gpt2":
        raise FalstudyError(f"{where}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load here")
    for key in _REQUIRED_INTS:
        if key not in hf:
            raise FalstudyError(f"{where}: no {key}; a GPT-2 config.json has {', '.join(_REQUIRED_INTS)}")
    for key in (*_REQUIRED_INTS, "n_positions", "n_inner"):
        value = hf.get(key)
        if (value is not None or key in _REQUIRED_INTS) and not _positive_int(value):
            raise FalstudyError(f"{where}: {key} must be a positive integer, got {value!r}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise FalstudyError(f"{where}: layer_norm_epsilon must be a small positive number, got {eps!r}")
    if not isinstance(hf.get("tie_word_embeddings", True), bool):
        raise FalstudyError(f"{where}: tie_word_embeddings must be true or false")
    return hf


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
        block_size=hf.get("n_positions") or 1024,
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
    return validate(ModelConfig, {**fields, **overrides}, where)


def gpt2_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The GPT-2 tensors (names without ``transformer.``) and shapes that ``cfg`` implies."""
    d, inner = cfg.n_embd, int(cfg.mlp_ratio * cfg.n_embd)
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (cfg.block_size, d),
                                          "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        shapes.update({f"{h}ln_1.weight": (d,), f"{h}ln_1.bias": (d,), f"{h}ln_2.weight": (d,), f"{h}ln_2.bias": (d,),
                       f"{h}attn.c_attn.weight": (d, 3 * d), f"{h}attn.c_attn.bias": (3 * d,),
                       f"{h}attn.c_proj.weight": (d, d), f"{h}attn.c_proj.bias": (d,),
                       f"{h}mlp.c_fc.weight": (d, inner), f"{h}mlp.c_fc.bias": (inner,),
                       f"{h}mlp.c_proj.weight": (inner, d), f"{h}mlp.c_proj.bias": (d,)})
    if not cfg.tie_weights:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def gpt2_param_count(cfg: ModelConfig) -> int:
    """Values in the tensors of ``gpt2_shapes(cfg)``, computed without listing them."""
    d, inner = cfg.n_embd, int(cfg.mlp_ratio * cfg.n_embd)
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d)
    return (cfg.vocab_size + cfg.block_size) * d + 2 * d + cfg.n_layer * per_layer + \
        (0 if cfg.tie_weights else cfg.vocab_size * d)


def _check_size(file: Path, cfg: ModelConfig, least_bytes: int) -> None:
    """A file smaller than the config's values at ``least_bytes`` each is truncated or belongs to
    another config; checked first, so a config with huge sizes allocates nothing."""
    n = gpt2_param_count(cfg)
    if file.stat().st_size < n * least_bytes:
        raise FalstudyError(f"{file}: {file.stat().st_size} bytes, too small for the {n} parameters config.json "
                            "implies (truncated, or the wrong config)")


def _check_shapes(found: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], where: Path) -> None:
    found = {k.removeprefix("transformer."): tuple(v) for k, v in found.items()}
    for name, shape in want.items():
        if name not in found:
            raise FalstudyError(f"{where}: no tensor {name!r}, which config.json implies (n_layer, tie_word_embeddings)")
        if found[name] != shape:
            raise FalstudyError(f"{where}: {name} is {found[name]} but config.json implies {shape}")


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Shapes from a safetensors header, after checking it against the file's size (no tensor is read)."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
            raise FalstudyError(f"{file}: not a safetensors file, or truncated (header length {n}, file {size} bytes)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise FalstudyError(f"{file}: the safetensors header is not valid JSON (corrupt file)") from None
    if not isinstance(header, dict):
        raise FalstudyError(f"{file}: the safetensors header is not a JSON object (corrupt file)")
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(shape) * _DTYPE_BYTES[dtype]
            ok = all(_positive_int(x) or x == 0 for x in (*shape, begin, stop)) and stop - begin == count
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise FalstudyError(f"{file}: the safetensors entry for {name!r} is malformed (dtype, shape, data_offsets)")
        shapes[name], end = tuple(shape), max(end, stop)
    data = size - 8 - n
    if data != end:
        what = "truncated" if data < end else f"{data - end} bytes longer than its header says"
        raise FalstudyError(f"{file}: {what} (header: {end} data bytes, file: {data}); re-save it")
    return shapes


def _read_state(path: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights, refused before loading (safetensors) or before use (.bin) if they do not fit ``cfg``."""
    st, binf = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _check_size(st, cfg, 1)  # 8-bit floats are the smallest safetensors dtype
        _check_shapes(_safetensors_shapes(st), gpt2_shapes(cfg), st)
        try:
            return load_file(str(st))
        except SafetensorError as err:
            raise FalstudyError(f"{st}: cannot be read ({str(err).splitlines()[0]})") from None
    if binf.is_file():
        _check_size(binf, cfg, 2)  # a torch file of 16-bit tensors is the smallest
        try:
            from falstudy.models.checkpoint import torch_load

            state = torch_load(binf)
        except pickle.UnpicklingError:
            raise FalstudyError(f"{binf}: holds Python objects beyond tensors, which weights_only loading refuses "
                                "(a pickle can run code); convert it to model.safetensors from a trusted copy") from None
        except Exception as err:  # truncated zip, not a torch file
            raise FalstudyError(f"{binf}: corrupt or not a PyTorch file ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FalstudyError(f"{binf}: not a state dict of tensors")
        _check_shapes({k: v.shape for k, v in state.items()}, gpt2_shapes(cfg), binf)
        return state
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
    hf = read_hf_config(path)
    # GPT-2 has two norms per block: a parallel-form wiring keeps both (MLP reads ln_2(x))
    extra = {} if wiring == "baseline" else {"shared_ln": False}
    cfg = gpt2_model_config(hf, wiring=wiring, **extra)
    sd = _read_state(path, cfg)  # checked against the config before the model is allocated
    try:
        state = convert_gpt2_state(sd, cfg)
    except KeyError as err:
        raise FalstudyError(f"{path}: weights lack {err.args[0]!r} that config.json implies") from None
    model = GPT(cfg)
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
    run = RunConfig(name="hf", run_id=safe_name(f"hf-{path.resolve().name}"), model=cfg, tags={"hf_path": str(path)})
    return model.to(device).eval(), run
