"""Logit lens and linear probes: what they decode, and the rows they return."""

import json

import pytest
import torch

from falstudy.config import ModelConfig
from falstudy.errors import FalstudyError
from falstudy.models.gpt import GPT
from falstudy.probe.lens import logit_lens
from falstudy.probe.linear import linear_probe

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=48)


def tiny(wiring: str = "baseline") -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**TINY, "wiring": wiring})).eval()


def batches(n: int = 2, b: int = 8, high: int = 48):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, high, (b, 16), generator=g), torch.randint(0, 48, (b, 16), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("wiring", ["baseline", "parallel", "fal", "no_attn"])
def test_logit_lens_last_residual_reproduces_the_model_loss(wiring):
    m, data = tiny(wiring), batches()
    rows = logit_lens(m, data)
    with torch.no_grad():
        want = sum(float(m(x, y)[1]) for x, y in data) / len(data)
    (last,) = [r["value"] for r in rows if r["site"] == "resid_post" and r["layer"] == 1 and r["metric"] == "loss"]
    assert last == pytest.approx(want, abs=1e-5)
    assert json.loads(rows[0]["extra_json"])["model_loss"] == pytest.approx(want, abs=1e-5)
    # every residual site of every layer, loss and accuracy each
    assert len(rows) == 3 * 2 * 2
    assert all(0 <= r["value"] <= 1 for r in rows if r["metric"] == "accuracy")


def test_linear_probe_decodes_the_current_token_and_the_position():
    # 8 distinct input tokens; learned token and position embeddings make both linearly readable
    rows = linear_probe(tiny(), batches(4, high=8), sites=["resid_pre"], tasks=["token", "position"], n_buckets=4)

    def get(metric, layer):
        (v,) = [r["value"] for r in rows if r["metric"] == metric and r["layer"] == layer]
        return v

    for layer in (0, 1):
        assert get("token.accuracy", layer) > get("token.majority", layer) + 0.5
        assert get("position.accuracy", layer) > get("position.majority", layer) + 0.3
    extra = json.loads(rows[0]["extra_json"])
    assert extra["n_classes"] == 8 and extra["n_test"] > 0 and extra["n_train"] > extra["n_test"]


def test_linear_probe_next_token_of_random_targets_is_near_chance():
    rows = linear_probe(tiny(), batches(4), sites=["resid_post"], tasks=["next_token"], top_k=4)
    acc = [r["value"] for r in rows if r["metric"] == "next_token.accuracy"]
    assert len(acc) == 2 and all(a < 0.6 for a in acc)  # 4 classes of random labels: ~0.25


def test_linear_probe_input_errors():
    with pytest.raises(FalstudyError, match="unknown linear-probe task"):
        linear_probe(tiny(), batches(1), tasks=["sentiment"])
    with pytest.raises(FalstudyError, match="unknown linear-probe site"):
        linear_probe(tiny(), batches(1), sites=["attention"])
    with pytest.raises(FalstudyError, match="too few"):
        linear_probe(tiny(), batches(1, b=2), sites=["resid_post"], tasks=["token"], positions_per_seq=2)
