"""The sweep spec's ``evals:`` section: downstream evaluation after each trial is trained.

    evals:                              # or evals: [kjv, web, fortunes] (held-out domains only)
      heldout: [kjv, web, fortunes]     # bits per byte on corpora the runs were not trained on
      pairs: [wordswap-web]             # built-in word-order pairs, or BLiMP-style JSONL files
      choices: []                       # multiple-choice JSONL files
      lm_eval: []                       # lm-eval task names (needs the .[eval] extra)
      include_path: null                # folder of local lm-eval task YAMLs
      bytes: 65536                      # text scored per held-out domain
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from falstudy.eval.heldout import DEFAULT_DOMAINS


def _files(paths) -> bool:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"no such JSONL file(s) {missing} (paths are relative to where the sweep runs)")
    return True


class Evals(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    heldout: list[str] = Field(default_factory=lambda: list(DEFAULT_DOMAINS), description="held-out domains")
    pairs: list[str] = Field(default_factory=lambda: ["wordswap-web"], description="pair sets: wordswap-<corpus> or JSONL paths")
    choices: list[str] = Field(default_factory=list, description="multiple-choice JSONL paths")
    lm_eval: list[str] = Field(default_factory=list, description="lm-eval task names")
    include_path: str | None = None
    limit: int | None = Field(None, ge=1, description="lm-eval: items per task")
    n_bytes: int = Field(65536, ge=1, alias="bytes", description="text scored per held-out domain")
    window: int = Field(512, ge=16, description="characters per scored window")
    n_pairs: int = Field(500, ge=1, description="pairs built per wordswap set")
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return {"heldout": value} if isinstance(value, list) else value

    @field_validator("heldout")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from falstudy.data.sources import KNOWN_CORPORA

        bad = [v for v in value if v not in KNOWN_CORPORA]
        if bad:
            raise ValueError(f"unknown held-out domain(s) {bad}; known: {', '.join(KNOWN_CORPORA)}")
        return value

    @field_validator("pairs")
    @classmethod
    def _pair_sets(cls, value: list[str]) -> list[str]:
        from falstudy.data.sources import KNOWN_CORPORA
        from falstudy.eval.pairs import WORDSWAP

        bad = [v for v in value if v.startswith(WORDSWAP) and v[len(WORDSWAP):] not in KNOWN_CORPORA]
        if bad:
            raise ValueError(f"unknown pair set(s) {bad}; use wordswap-<{'|'.join(KNOWN_CORPORA)}> or a JSONL path")
        return _files(v for v in value if not v.startswith(WORDSWAP)) and value

    @field_validator("choices")
    @classmethod
    def _choice_files(cls, value: list[str]) -> list[str]:
        return _files(value) and value

    @field_validator("lm_eval")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        if value and importlib.util.find_spec("lm_eval") is None:
            raise ValueError("lm-eval tasks need the optional extra: pip install -e '.[eval]'")
        return value

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``falstudy.eval.run_evals``."""
        return self.model_dump(by_alias=False)
