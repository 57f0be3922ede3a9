"""Configs a user writes: model wiring, training recipe, data, and a whole run.

Every unconfirmed detail of the FAL paper is a switch here, with the most likely reading as the
default (see docs/study.md); every run records the resolved values of all of them.

Layer indices are 0-based everywhere: layer 0 is the paper's block 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from falstudy.errors import FalstudyError

Wiring = Literal["baseline", "parallel", "fal", "fal_plus", "no_attn", "no_mlp"]
WIRINGS: tuple[str, ...] = Wiring.__args__  # type: ignore[attr-defined]


def mlp_hidden(n_embd: int, mlp_ratio: float, mlp: str) -> int:
    """The MLP's hidden width: ratio x d (gelu); 2/3 of it, rounded up to a multiple of 8, for
    swiglu, which keeps the parameter count of a gelu MLP (three matrices instead of two)."""
    if mlp == "swiglu":
        return int(2 * mlp_ratio * n_embd / 3 + 7) // 8 * 8
    return int(mlp_ratio * n_embd)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """One GPT. ``wiring`` picks how each block connects MHA and MLP; the rest is orthogonal."""

    # --- shape
    vocab_size: int = Field(256, ge=2)
    block_size: int = Field(256, ge=1, description="maximum sequence length")
    n_layer: int = Field(6, ge=1)
    n_head: int = Field(6, ge=1)
    n_embd: int = Field(384, ge=1)
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width / n_embd (gelu); swiglu uses 2/3 of it")

    # --- block type (orthogonal to the wiring; rmsnorm+swiglu+rope is a LLaMA-style block)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    pos: Literal["learned", "rope"] = "learned"
    bias: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    tie_weights: bool = True

    # --- wiring
    wiring: Wiring = "baseline"
    ablate_layers: list[int] | None = Field(
        None, description="no_attn / no_mlp: layers whose sublayer is removed (None = all layers)"
    )

    # fal and fal_plus: where the substitute signal comes from and how it is normalised
    fal_source_layer: int = Field(0, ge=0, description="k: the source block whose attention output feeds later MLPs")
    fal_source_mean: int | None = Field(None, ge=1, description="m: use the mean of the first m attention outputs instead")
    fal_norm: Literal["shared", "per_layer"] = Field("shared", description="N_f: one norm for the stack, or one per block")
    fal_gate: bool = Field(False, description="scale the injected term by a zero-initialised scalar per block")
    # fal only
    fal_first_block: Literal["baseline", "fal"] = Field(
        "baseline", description="wiring of the source block itself (the paper's block 1)"
    )
    fal_mlp_input: Literal["ln_plus_nf", "ln_sum", "nf_only"] = Field(
        "ln_plus_nf", description="MLP input: LN x + N_f(a) | LN(x + a) | N_f(a) alone"
    )
    shared_ln: bool = Field(True, description="parallel/fal blocks: one LN shared by MHA and MLP (False: two)")
    # fal_plus only (the exact equation is unconfirmed; F+2 is the default reading)
    fal_plus_form: Literal["f1", "f2", "f3"] = "f2"

    # --- related wirings from the literature around FAL, orthogonal to ``wiring``
    norm_placement: Literal["pre", "post"] = Field(
        "pre", description="pre: sublayers read LN(x); post: sublayers read x and the stream is normalised after "
        "each add (untie the embeddings: tied, post-LN trained to the unigram loss here)"
    )
    residual_gates: bool = Field(False, description="a learned scalar on each residual update, after its all-reduce")
    residual_gate_init: float = Field(1.0, description="initial value of the residual gates (0 = ReZero)")
    value_residual: bool = Field(False, description="later attentions mix their values with the first attention's (ResFormer)")
    value_residual_lambda: float = Field(0.5, ge=0, le=1, description="v_i <- lambda v_i + (1 - lambda) v_first")
    dense_dwa: bool = Field(False, description="DenseFormer: after each block, a learned weighted average of the embedding and all block outputs")
    residual: Literal["standard", "ladder"] = Field(
        "standard", description="ladder (Ladder Residual): each module reads the stream before the previous module's "
        "output is added, so its all-reduce can overlap one module of compute; baseline and fal wirings, pre-LN"
    )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return mlp_hidden(self.n_embd, self.mlp_ratio, self.mlp)

    @property
    def fal_source_layers(self) -> list[int]:
        """Blocks whose attention outputs make the substitute signal (their mean if several)."""
        if self.fal_source_mean is not None:
            return list(range(self.fal_source_mean))
        return [self.fal_source_layer]

    @property
    def uses_fal_source(self) -> bool:
        return self.wiring in ("fal", "fal_plus")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got n_embd/n_head={self.head_dim}")
        if self.uses_fal_source:
            last = max(self.fal_source_layers)
            if last >= self.n_layer:
                raise ValueError(
                    f"FAL source layer {last} does not exist in a {self.n_layer}-layer model "
                    f"(fal_source_layer / fal_source_mean; layers are 0-based)"
                )
            if self.fal_first_block == "fal" and len(self.fal_source_layers) > 1:
                raise ValueError("fal_first_block='fal' needs a single source layer (not fal_source_mean)")
        if self.residual == "ladder":
            if self.wiring not in ("baseline", "fal"):
                raise ValueError(f"residual='ladder' works on the baseline and fal wirings, not {self.wiring!r}")
            clashes = [name for name, on in (("norm_placement='post'", self.norm_placement == "post"),
                                             ("dense_dwa", self.dense_dwa), ("residual_gates", self.residual_gates),
                                             ("fal_first_block='fal'", self.wiring == "fal" and self.fal_first_block == "fal"))
                       if on]
            if clashes:
                raise ValueError(f"residual='ladder' does not combine with {', '.join(clashes)}; drop one of them")
        for i in self.ablate_layers or []:
            if not 0 <= i < self.n_layer:
                raise ValueError(f"ablate_layers has layer {i}; layers are 0..{self.n_layer - 1}")
        return self


class TrainConfig(_Strict):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    seq_len: int | None = Field(None, ge=1, description="tokens per sequence (default: model.block_size)")
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    eval_interval: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)
    log_interval: int = Field(10, ge=1)
    checkpoint_interval: int = Field(100, ge=0, description="0 = only at the end")
    grad_probe_every: int = Field(0, ge=0, description="record per-layer gradient norms every N steps (0 = off)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    autocast: Literal["auto", "bf16", "none"] = Field("auto", description="auto = bf16 on CUDA, none on CPU")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    compile: bool = Field(False, description="torch.compile the model for training and eval (probes and checkpoints "
                          "use the eager module); see docs/sweeps.md for when it pays on CPU")


class ParallelConfig(_Strict):
    """How many processes train one model (docs/parallel.md). tp x dp > 1 runs under torchrun:
    ``falstudy train --tp 2`` relaunches itself; from Python, start the script with torchrun."""

    tp: int = Field(1, ge=1, description="tensor-parallel degree (must divide n_head and the MLP width)")
    dp: int = Field(1, ge=1, description="data-parallel degree; train.batch_size is per DP rank")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl on CUDA, gloo on CPU")

    @property
    def world(self) -> int:
        return self.tp * self.dp


class DataConfig(_Strict):
    path: str = Field("data/shakespeare-byte", description="a prepared corpus folder (falstudy data prepare)")


class RunConfig(_Strict):
    """Everything that produces one training run. Saved, resolved, with the run."""

    name: str = Field("default", description="results group: results/<name>/")
    variant: str | None = Field(None, description="a preset from falstudy.models.VARIANTS, applied under `model`")
    run_id: str | None = None
    seed: int = 0
    results_dir: str = "results"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    parallel: ParallelConfig = ParallelConfig()
    tags: dict[str, Any] = Field(default_factory=dict, description="free-form labels stored with the run")

    @model_validator(mode="before")
    @classmethod
    def _apply_variant(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant"):
            from falstudy.models.variants import VARIANTS

            if data["variant"] not in VARIANTS:
                return data  # reported by _known_variant, with the field's path
            model = data.get("model") or {}
            if isinstance(model, BaseModel):
                model = model.model_dump(exclude_unset=True)
            if not isinstance(model, dict):
                return data  # reported by pydantic: model must be a mapping
            data = {**data, "model": {**VARIANTS[data["variant"]], **model}}
        return data

    @field_validator("name", "run_id")
    @classmethod
    def _path_name(cls, value: str | None) -> str | None:
        from falstudy.names import check_name

        return None if value is None else check_name(value, "")  # the message gets the field's path

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, name: str | None) -> str | None:
        from falstudy.models.variants import VARIANTS

        if name is not None and name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        return name

    @property
    def variant_name(self) -> str:
        """The label results are grouped by: the preset name, or the wiring."""
        return self.variant or self.model.wiring

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


# Named run presets: dotted fields applied beneath a config file and --set. `falstudy train`
# starts from "small" when given no config file, so a first run on a laptop takes about a minute
# (4 x 128, 0.8M parameters; the config defaults are 6 x 384, 10.6M parameters).
RUN_PRESETS: dict[str, dict[str, Any]] = {
    # the default study's model and recipe (sweeps/bypass.yaml, sized by sweeps/sizing.yaml): about a
    # minute on one CPU core, and trained far enough that wirings can differ (docs/sweeps.md)
    "small": {"model.n_layer": 4, "model.n_embd": 64, "model.n_head": 4, "model.block_size": 64,
              "train.batch_size": 32, "train.steps": 1000, "train.lr": 8.0e-3, "train.warmup_steps": 50,
              "train.eval_interval": 200, "train.eval_batches": 16, "train.checkpoint_interval": 250},
}


def preset_fields(name: str | None, config_data: dict | None = None) -> dict[str, Any]:
    """The preset's dotted fields that ``config_data`` (a loaded config file) does not set."""
    if name in (None, "none"):
        return {}
    if name not in RUN_PRESETS:
        raise FalstudyError(f"unknown run preset {name!r}; known: {', '.join(RUN_PRESETS)}, none")

    def is_set(dotted: str) -> bool:
        data: Any = config_data or {}
        for key in dotted.split("."):
            if not isinstance(data, dict) or key not in data:
                return False
            data = data[key]
        return True

    return {k: v for k, v in RUN_PRESETS[name].items() if not is_set(k)}


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: where (file and field path) and what is wrong."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<top level>"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "literal_error":
        msg = f"{msg}, got {first['input']!r}"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{source}: {loc}: {msg}{extra}"


def validate(cls: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise FalstudyError(format_validation_error(err, source)) from None


def load_yaml(path: str | Path) -> Any:
    """A config or spec file through the one guarded loader (falstudy.yamlio); {} when empty."""
    from falstudy.yamlio import load_file

    data = load_file(path)
    return {} if data is None else data


def section_fields(dotted: str) -> list[str] | None:
    """The fields of the RunConfig section at ``dotted`` (e.g. "model"), or None if it is not one."""
    cls: Any = RunConfig
    for key in dotted.split("."):
        field = cls.model_fields.get(key) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        cls = field.annotation
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "model.wiring", "fal")`` — used for CLI overrides and sweep params.
    A section (``model``, ``train``, ...) takes a mapping, never a scalar."""
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise FalstudyError(f"cannot set {dotted!r}: give section.field (e.g. model.n_layer), no empty parts")
    fields = section_fields(dotted)
    if fields is not None and not isinstance(value, dict):
        raise FalstudyError(f"cannot set {dotted}={value!r}: {dotted} is a section, not a value; set one of its "
                            f"fields ({', '.join(fields)}), e.g. {dotted}.{fields[0]}=...")
    for i, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise FalstudyError(f"cannot set {dotted}: {'.'.join(keys[:i + 1])} is not a section")
    data[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``model.n_layer=4`` -> ("model.n_layer", 4); values are parsed as YAML (the guarded loader)."""
    from falstudy.yamlio import loads

    if "=" not in text:
        raise FalstudyError(f"override {text!r} must look like section.field=value (e.g. model.wiring=fal)")
    key, _, raw = text.partition("=")
    return key.strip(), loads(raw, f"--set {key.strip()}")


def load_run_config(path: str | Path | None = None, overrides: list[str] = (), **sections: Any) -> RunConfig:
    data: dict = load_yaml(path) if path else {}
    if not isinstance(data, dict):
        raise FalstudyError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    for dotted, value in sections.items():
        set_dotted(data, dotted, value)
    for text in overrides:
        set_dotted(data, *parse_override(text))
    return validate(RunConfig, data, str(path or "config"))
