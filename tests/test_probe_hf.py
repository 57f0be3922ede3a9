"""GPT-2 weights from a local Hugging Face folder: same logits as transformers' own model."""

import json

import pytest
import torch

from falstudy.errors import FalstudyError
from falstudy.models.hf import load_gpt2


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=24, layer_norm_epsilon=1e-4)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # far from init, so a swapped q/k/v or an untransposed Conv1D shows
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


def test_logits_equal_transformers(gpt2_dir):
    path, ref = gpt2_dir
    model, cfg = load_gpt2(path)
    assert cfg.model.wiring == "baseline" and cfg.model.n_layer == 2 and cfg.model.vocab_size == 101
    x = torch.randint(0, 101, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x).logits
        got, _ = model(x)
    assert want.abs().max() > 1.0  # a comparison with teeth
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_other_wirings_load_the_same_weights(gpt2_dir):
    path, _ = gpt2_dir
    base, _ = load_gpt2(path)
    par, cfg = load_gpt2(path, wiring="parallel")
    assert cfg.model.wiring == "parallel"
    torch.testing.assert_close(par.blocks[1].attn.q.weight, base.blocks[1].attn.q.weight)
    x = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(par(x)[0], base(x)[0])
    fal, cfg = load_gpt2(path, wiring="fal")  # FAL's substitute norm is new: it keeps its init
    torch.testing.assert_close(fal.blocks[1].mlp.fc2.weight, base.blocks[1].mlp.fc2.weight)
    assert torch.equal(fal.blocks[0].fal_norm.weight, torch.ones(32))


def test_probes_run_on_a_gpt2_folder(gpt2_dir):
    from falstudy.probe import run_probes

    path, _ = gpt2_dir
    data = torch.randint(0, 101, (8, 17))
    df = run_probes(path, "logit_lens", tokens=64, data=data, quiet=True)
    assert set(df["run_id"]) == {f"hf-{path.name}"} and len(df) == 2 * 3 * 2


def test_unsupported_configs_are_user_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FalstudyError, match="only GPT-2"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 10, "activation_function": "relu"})
    )
    with pytest.raises(FalstudyError, match="activation_function"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 10}))
    with pytest.raises(FalstudyError, match="no model.safetensors"):
        load_gpt2(tmp_path)
