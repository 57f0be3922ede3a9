"""Hostile and malformed inputs, as data: every row is one command line a careless or hostile
user might type, with the files it reads. ``tests/test_hostile_inputs.py`` runs each row through
``falstudy.cli.main`` and asserts: exit code 2, one line on stderr naming what is wrong (it must
contain ``needle``), and no file created, changed or removed anywhere under the test's folder
(the work folder is ``<tmp>/outer/inner/work``, so ``../../x`` would land inside it and show).

To add a row, append a ``Case`` to ``CASES``:

    Case("sql: a write is refused", ["sql", "-r", "g", "DROP TABLE runs"], "read-only",
         files={"g": tiny_store})

``argv`` may use ``{corpus}`` (a tiny prepared corpus), ``{work}`` (the work folder, the cwd) and
``{root}`` (the test's folder, the one that must not change). ``files`` maps a path relative to
the work folder to its contents: ``str`` (``{corpus}`` is replaced in it), ``bytes``, or a
callable that makes it (``maker(path)``), e.g. a GPT-2 folder or a results store.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

# --------------------------------------------------------------------------- the row


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    needle: str  # a word of the one-line message
    files: dict[str, str | bytes | Callable[[Path], None]] = field(default_factory=dict)


# --------------------------------------------------------------------------- makers

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}


def laughs(levels: int = 9) -> str:
    """The "billion laughs" document: 9 aliases deep, 9 wide: 9^9 values once expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def indented(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())


def spec(**fields: Any) -> str:
    """A valid sweep spec (one tiny grid) with ``fields`` replaced, as YAML."""
    base = {"name": "s", "results_dir": "results", "workers": 1, "search": {"variant": ["baseline"]},
            "run": {"data": {"path": "{corpus}"}, "model": dict(TINY_MODEL), "train": {"steps": 2}}}
    return yaml.safe_dump({**base, **fields}, sort_keys=False)


def config(**fields: Any) -> str:
    """A valid run config with ``fields`` replaced, as YAML."""
    base = {"name": "g", "data": {"path": "{corpus}"}, "model": dict(TINY_MODEL), "train": {"steps": 2}}
    return yaml.safe_dump({**base, **fields}, sort_keys=False)


# a tiny GPT-2 (1 layer, width 8, 2 heads, 16 tokens, 8 positions) in Hugging Face's layout, tied
HF_CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 16, "n_positions": 8}
HF_SHAPES = {"wte.weight": (16, 8), "wpe.weight": (8, 8), "ln_f.weight": (8,), "ln_f.bias": (8,),
             "h.0.ln_1.weight": (8,), "h.0.ln_1.bias": (8,), "h.0.ln_2.weight": (8,), "h.0.ln_2.bias": (8,),
             "h.0.attn.c_attn.weight": (8, 24), "h.0.attn.c_attn.bias": (24,),
             "h.0.attn.c_proj.weight": (8, 8), "h.0.attn.c_proj.bias": (8,),
             "h.0.mlp.c_fc.weight": (8, 32), "h.0.mlp.c_fc.bias": (32,),
             "h.0.mlp.c_proj.weight": (32, 8), "h.0.mlp.c_proj.bias": (8,)}


def hf_state() -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) for name, shape in HF_SHAPES.items()}


class Payload:
    """Unpickled, it would create the file ``pwned`` in the cwd (weights_only refuses it)."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def hf_dir(config: Any = None, *, weights: str = "safetensors", mangle: Callable[[bytes], bytes] | None = None,
           state: dict | None = None) -> Callable[[Path], None]:
    """A maker of a GPT-2 folder: ``config`` (dict, or raw text) and a weights file, its bytes
    passed through ``mangle``."""

    def make(path: Path) -> None:
        import io

        import torch
        from safetensors.torch import save

        path.mkdir(parents=True)
        cfg = HF_CONFIG if config is None else config
        raw_cfg = cfg if isinstance(cfg, bytes) else (cfg if isinstance(cfg, str) else json.dumps(cfg)).encode()
        (path / "config.json").write_bytes(raw_cfg)
        if weights == "safetensors":
            raw = save(state if state is not None else hf_state())
            name = "model.safetensors"
        elif weights == "bin":
            buf = io.BytesIO()
            torch.save(state if state is not None else hf_state(), buf)
            raw, name = buf.getvalue(), "pytorch_model.bin"
        else:
            return
        (path / name).write_bytes(mangle(raw) if mangle else raw)

    return make


def header_length(n: int) -> Callable[[bytes], bytes]:
    return lambda raw: struct.pack("<Q", n) + raw[8:]


def torch_file(obj: Any) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import torch

        torch.save(obj, path)

    return make


def tiny_store(group: Path) -> None:
    """A results group with one run row, ingested (for SQL rows)."""
    from falstudy.store import RunSpool, ingest

    RunSpool(group / "runs" / "r1").write_table("runs", [{"run_id": "r1", "name": group.name, "status": "completed"}])
    ingest(group)


# --------------------------------------------------------------------------- the rows

# 20 searchable fields with two valid values each: a grid of 2^20 cells
TWO_EACH = {"variant": ["baseline", "fal"], "lr": [1e-3, 2e-3], "weight_decay": [0.0, 0.1], "beta1": [0.8, 0.9],
            "beta2": [0.9, 0.95], "grad_clip": [0.0, 1.0], "warmup_steps": [0, 1], "min_lr_ratio": [0.0, 0.1],
            "batch_size": [1, 2], "eval_batches": [1, 2], "dropout": [0.0, 0.1], "bias": [True, False],
            "tie_weights": [True, False], "residual_gates": [True, False], "value_residual": [True, False],
            "dense_dwa": [True, False], "norm": ["layernorm", "rmsnorm"], "mlp": ["gelu", "swiglu"],
            "pos": ["learned", "rope"], "mlp_ratio": [2.0, 4.0]}

BAD_NAMES = {"dotdot": "..", "up-and-out": "../../esc", "absolute": "{root}/abs", "separator": "a/b",
             "backslash": "a\\b", "empty": "", "NUL": "a\0b", "dot": ".", "hidden": ".x"}

CASES: list[Case] = [
    # names that become folders: none may leave its folder
    *(Case(f"train --name {k}", ["train", "--data", "{corpus}", "--name", v], "it names a folder") for k, v in BAD_NAMES.items()),
    *(Case(f"train --run-id {k}", ["train", "--data", "{corpus}", "--run-id", v], "it names a folder")
      for k, v in BAD_NAMES.items() if k in ("up-and-out", "absolute", "separator", "empty", "NUL")),
    Case("train: config name ../../x", ["train", "c.yaml"], "name: '../../x' would leave", {"c.yaml": config(name="../../x")}),
    Case("train: config run_id ../x", ["train", "c.yaml"], "run_id: '../x' would leave", {"c.yaml": config(run_id="../x")}),
    Case("train --set name=../x", ["train", "--data", "{corpus}", "--set", "name=../x"], "would leave its folder"),
    Case("train --set run_id=/abs", ["train", "--data", "{corpus}", "--set", "run_id={root}/abs"], "would leave its folder"),
    Case("sweep: spec name ../x", ["sweep", "s.yaml"], "name: '../x' would leave", {"s.yaml": spec(name="../x")}),
    Case("sweep: spec name absolute", ["sweep", "s.yaml"], "would leave its folder", {"s.yaml": spec(name="/tmp/x")}),
    Case("sweep --dry-run: spec name a/b", ["sweep", "s.yaml", "--dry-run"], "would leave", {"s.yaml": spec(name="a/b")}),
    Case("data prepare --name ../x", ["data", "prepare", "--corpus", "t", "--name", "../x"], "would leave its folder",
         {"t/a.txt": "some text\n" * 20}),
    Case("data prepare --name NUL", ["data", "prepare", "--corpus", "t", "--name", "a\0b"], "NUL",
         {"t/a.txt": "some text\n" * 20}),

    # YAML: size, aliases, nesting, duplicate keys, encodings
    Case("train: billion laughs in a field", ["train", "c.yaml"], "aliases expand",
         {"c.yaml": config() + "tags:\n" + indented(laughs(), "  ")}),
    Case("sweep: billion laughs in a field", ["sweep", "s.yaml"], "aliases expand",
         {"s.yaml": spec() + "probes:\n  options:\n" + indented(laughs(), "    ")}),
    Case("train --set billion laughs", ["train", "--set", "tags={a: &a [x,x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"],
         "aliases expand"),
    Case("train: recursive alias", ["train", "c.yaml"], "recursive", {"c.yaml": config() + "tags: {x: &r [1, *r]}\n"}),
    Case("train: nested 5000 deep", ["train", "c.yaml"], "nested more than", {"c.yaml": "tags: " + "[" * 5000 + "]" * 5000}),
    Case("sweep: 1 MB spec", ["sweep", "s.yaml"], "KiB", {"s.yaml": spec(description="x" * (1 << 20))}),
    Case("train: 1 MB config", ["train", "c.yaml"], "KiB", {"c.yaml": config() + "# " + "x" * (1 << 20) + "\n"}),
    Case("sweep: 12000 keys", ["sweep", "s.yaml"], "values", {"s.yaml": spec() + "description:\n" +
                                                                "".join(f"  k{i}: 1\n" for i in range(12000))}),
    Case("train: duplicate top-level key", ["train", "c.yaml"], "duplicate key 'name' (first at line 1)",
         {"c.yaml": config() + "name: other\n"}),
    Case("sweep: duplicate nested key", ["sweep", "s.yaml"], "line 4: duplicate key 'steps' (first at line 3)",
         {"s.yaml": "name: s\nrun:\n  train: {steps: 2,\n    steps: 3}\nsearch: {variant: [fal]}\n"}),
    Case("train: UTF-16 config", ["train", "c.yaml"], "UTF-16", {"c.yaml": "name: g\n".encode("utf-16")}),
    Case("sweep: binary spec", ["sweep", "s.yaml"], "not UTF-8", {"s.yaml": bytes(range(256))}),
    Case("train: Latin-1 config", ["train", "c.yaml"], "not UTF-8", {"c.yaml": "name: café\n".encode("latin-1")}),
    Case("train: NUL in config", ["train", "c.yaml"], "NUL", {"c.yaml": b"name: g\0\n"}),
    Case("train: malformed YAML", ["train", "c.yaml"], "malformed YAML", {"c.yaml": "model: {n_layer: 2\ntrain: ["}),
    Case("train: a list, not a mapping", ["train", "c.yaml"], "expected a mapping", {"c.yaml": "- 1\n- 2\n"}),
    Case("sweep: a scalar, not a mapping", ["sweep", "s.yaml"], "expected a mapping", {"s.yaml": "42\n"}),
    Case("train: a folder as the config", ["train", "d"], "is a folder", {"d/x": ""}),

    # --set
    Case("train --set model=3", ["train", "--set", "model=3"], "model is a section"),
    Case("train --set train=[1]", ["train", "--set", "train=[1]"], "train is a section"),
    Case("train --set into a value", ["train", "--set", "model.n_layer=2", "--set", "model.n_layer.x=1"], "not a section"),
    Case("train --set =3", ["train", "--set", "=3"], "no empty parts"),
    Case("train --set model..x=1", ["train", "--set", "model..x=1"], "no empty parts"),
    Case("train --set without =", ["train", "--set", "model.n_layer"], "section.field=value"),
    Case("train: config model: 3 with a variant", ["train", "c.yaml"], "model",
         {"c.yaml": config(variant="fal", model=3)}),

    # sweep specs too large to enumerate
    Case("sweep: a 10^12-value int range", ["sweep", "s.yaml"], "over the 10000",
         {"s.yaml": spec(search={"n_layer": {"low": 1, "high": 10**12}})}),
    Case("sweep: 20 dimensions of 2", ["sweep", "s.yaml"], "cells", {"s.yaml": spec(search=TWO_EACH)}),
    Case("sweep: a billion seeds", ["sweep", "s.yaml"], "seeds", {"s.yaml": spec(seeds=10**9)}),
    Case("sweep: a million workers", ["sweep", "s.yaml", "--workers", "1000000"], "cores", {"s.yaml": spec()}),
    Case("sweep: a section searched", ["sweep", "s.yaml"], "is a section", {"s.yaml": spec(search={"model": [1, 2]})}),

    # GPT-2 folders (falstudy probe)
    Case("hf: config.json a list", ["probe", "gpt2"], "expected a JSON object", {"gpt2": hf_dir("[1, 2]")}),
    Case("hf: string sizes", ["probe", "gpt2"], "n_embd must be a positive integer", {"gpt2": hf_dir({**HF_CONFIG, "n_embd": "8"})}),
    Case("hf: bool size", ["probe", "gpt2"], "n_layer must be a positive integer", {"gpt2": hf_dir({**HF_CONFIG, "n_layer": True})}),
    Case("hf: no vocab_size", ["probe", "gpt2"], "no vocab_size",
         {"gpt2": hf_dir({k: v for k, v in HF_CONFIG.items() if k != "vocab_size"})}),
    Case("hf: malformed JSON", ["probe", "gpt2"], "malformed JSON", {"gpt2": hf_dir('{"model_type": "gpt2",')}),
    Case("hf: binary config.json", ["probe", "gpt2"], "not UTF-8", {"gpt2": hf_dir(b'{"model_type": "gpt\xff"}')}),
    Case("hf: huge sizes, small weights", ["probe", "gpt2"], "config.json implies",
         {"gpt2": hf_dir({**HF_CONFIG, "n_embd": 1 << 20, "n_head": 1 << 10})}),
    Case("hf: huge sizes, small .bin", ["probe", "gpt2"], "too small",
         {"gpt2": hf_dir({**HF_CONFIG, "n_layer": 10**6}, weights="bin")}),
    Case("hf: no weights", ["probe", "gpt2"], "no model.safetensors", {"gpt2": hf_dir(weights="none")}),
    Case("hf: truncated safetensors", ["probe", "gpt2"], "truncated", {"gpt2": hf_dir(mangle=lambda b: b[:-40])}),
    Case("hf: oversized safetensors", ["probe", "gpt2"], "longer than its header", {"gpt2": hf_dir(mangle=lambda b: b + b"\0" * 64)}),
    Case("hf: safetensors header length 2^60", ["probe", "gpt2"], "not a safetensors file", {"gpt2": hf_dir(mangle=header_length(1 << 60))}),
    Case("hf: safetensors header garbage", ["probe", "gpt2"], "not valid JSON",
         {"gpt2": hf_dir(mangle=lambda b: b[:8] + b"\xff" * (len(b) - 8))}),
    Case("hf: safetensors wrong shape", ["probe", "gpt2"], "config.json implies (8, 24)",
         {"gpt2": lambda p: hf_dir(state={**hf_state(), "h.0.attn.c_attn.weight": hf_state()["h.0.attn.c_attn.weight"][:, :16].contiguous()})(p)}),
    Case("hf: truncated .bin", ["probe", "gpt2"], "PyTorch file", {"gpt2": hf_dir(weights="bin", mangle=lambda b: b[: len(b) * 3 // 4])}),
    Case("hf: .bin that is not a torch file", ["probe", "gpt2"], "PyTorch file",
         {"gpt2": hf_dir(weights="bin", mangle=lambda b: b"\x80" * len(b))}),
    Case("hf: pickled payload in .bin", ["probe", "gpt2"], "weights_only loading refuses",
         {"gpt2": lambda p: hf_dir(weights="bin", state={**hf_state(), "extra": Payload()})(p)}),

    # checkpoints (falstudy probe FILE)
    Case("checkpoint: not a checkpoint", ["probe", "ckpt.pt"], "corrupt", {"ckpt.pt": b"not a checkpoint"}),
    Case("checkpoint: pickled payload", ["probe", "ckpt.pt"], "corrupt", {"ckpt.pt": torch_file({"model": {}, "config": Payload()})}),
    Case("checkpoint: a name that leaves results", ["probe", "ckpt.pt"], "would leave its folder",
         {"ckpt.pt": torch_file({"model": {}, "config": {"name": "../../x"}})}),
    Case("checkpoint: no config", ["probe", "ckpt.pt"], "not a falstudy checkpoint", {"ckpt.pt": torch_file({"model": {}})}),

    # corpora
    Case("corpus: missing", ["train", "--data", "nope", "--set", "train.steps=1"], "not found"),
    Case("corpus: malformed meta.json", ["train", "--data", "d", "--set", "train.steps=1"], "meta.json",
         {"d/meta.json": "{not json"}),

    # SQL (more rows welcome: see the module docstring)
    Case("sql: no such results folder", ["sql", "-r", "nowhere", "SELECT 1"], "nowhere"),
    Case("sql: malformed query", ["sql", "-r", "g", "SELEC nonsense"], "SELEC", {"g": tiny_store}),
]

# the hostile-SQL table (tests/hostile_sql.py; run there in DB and spool mode and through
# Results.sql, with the store's contents checked too) joins this one through the CLI; rows that
# need the folder next to the group are left to tests/test_sql_sandbox.py
from hostile_sql import HOSTILE_SQL  # noqa: E402  (tests/ is on sys.path)

CASES += [
    Case(f"sql: {label}", ["sql", "-r", "g", sql.format(group="g")], expected, {"g": tiny_store})
    for label, sql, expected in HOSTILE_SQL if "{outside}" not in sql
]
