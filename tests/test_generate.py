"""Sampling from a trained run (falstudy.generate, `falstudy sample`) and run_with_cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import falstudy
from falstudy.config import ModelConfig
from falstudy.errors import FalstudyError
from falstudy.sampling import sample_ids
from falstudy.models import GPT

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16}


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    result = falstudy.train({"name": "g", "run_id": "r0", "results_dir": str(root / "results"), "variant": "fal",
                             "data": {"path": str(corpus)}, "model": TINY,
                             "train": {"steps": 20, "batch_size": 4, "eval_interval": 20, "eval_batches": 1,
                                       "threads": 1}}, quiet=True, ingest=False)
    return result.run_dir


def test_greedy_sampling_is_the_argmax_continuation(run):
    model, cfg = falstudy.load_checkpoint(run)
    prompt = "Shall I"
    text = falstudy.generate(run, prompt, 24, temperature=0)
    ids = list(prompt.encode())
    with torch.no_grad():
        for _ in range(24):  # by hand, over the last block_size tokens
            logits, _ = model(torch.tensor([ids[-cfg.model.block_size:]]))
            ids.append(int(logits[0, -1].argmax()))
    assert text == bytes(ids[len(prompt):]).decode("utf-8", errors="replace")


def test_sampling_is_repeatable_by_seed_and_top_k_1_is_greedy(run):
    a = falstudy.generate(run, "Thou", 30, seed=3)
    assert a == falstudy.generate(run, "Thou", 30, seed=3)
    assert falstudy.generate(run, "Thou", 30, top_k=1, seed=9) == falstudy.generate(run, "Thou", 30, temperature=0)


def test_a_known_preference_is_sampled():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=8, **TINY)).eval()
    with torch.no_grad():  # every position predicts token 5
        model.lm_head.weight.zero_()
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.lm_head.weight[5, 0] = 50.0
    out = sample_ids(model, torch.tensor([[1, 2]]), 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out[0, 2:].tolist() == [5] * 5


def test_bad_sampling_arguments_are_refused(run):
    for kwargs, match in (({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"),
                          ({"top_k": 0}, "top_k")):
        with pytest.raises(FalstudyError, match=match):
            falstudy.generate(run, "x", **kwargs)
    with pytest.raises(FalstudyError, match="no tokens"):
        falstudy.generate(run, "")


def test_cli_samples_a_run_by_id(run):
    group = run.parent.parent
    proc = subprocess.run([sys.executable, "-m", "falstudy.cli", "sample", "r0", "-r", str(group), "--prompt", "Sonnet",
                           "--tokens", "12", "--temperature", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == "Sonnet" + falstudy.generate(run, "Sonnet", 12, temperature=0).rstrip("\n")
    bad = subprocess.run([sys.executable, "-m", "falstudy.cli", "sample", "nope", "-r", str(group)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_run_with_cache_returns_the_logits_and_named_activations():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, wiring="fal", **TINY)).eval()
    idx = torch.randint(0, 32, (2, 10))
    seen = {}
    hooks = [model.blocks[1].attn.register_forward_hook(lambda m, i, o: seen.setdefault("attn", o)),
             model.blocks[1].mlp.register_forward_pre_hook(lambda m, i: seen.setdefault("mlp_in", i[0]))]
    with torch.no_grad():
        logits_ref, _ = model(idx)
    for h in hooks:
        h.remove()
    logits, cache = falstudy.run_with_cache(model, idx)
    assert torch.allclose(logits, logits_ref)
    assert torch.allclose(cache["blocks.1.attn.output"], seen["attn"])
    assert torch.allclose(cache["blocks.1.mlp.input"], seen["mlp_in"])
    assert {"blocks.0.resid_pre.output", "blocks.1.fal_in.output", "ln_f.output"} <= set(cache)
    _, some = falstudy.run_with_cache(model, idx[0], ["blocks.0.attn", "resid_post@1"])
    assert set(some) == {"blocks.0.attn.output", "blocks.1.resid_post.output"}
    assert some["blocks.0.attn.output"].shape == (1, 10, 16)
    with pytest.raises(FalstudyError, match="unknown site"):
        falstudy.run_with_cache(model, idx, ["blocks.0.nothing"])
