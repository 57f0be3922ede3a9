"""Debiased linear CKA: the estimator against its definition, its invariances, and minibatching."""

import itertools

import pytest
import torch

from falstudy.errors import FalstudyError
from falstudy.probe.cka import CKAAccumulator, cka, cka_biased, gram_stats, hsic_unbiased


def gaussians(n: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g), torch.randn(n, p, generator=g)


def related(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two nonlinearly related representations with a CKA well inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g)
    x = z @ torch.randn(16, 96, generator=g) + 2 * torch.randn(n, 96, generator=g)
    y = torch.tanh(z @ torch.randn(16, 48, generator=g)) + 0.5 * torch.randn(n, 48, generator=g)
    return x, y


def hsic_u_statistic(K: torch.Tensor, L: torch.Tensor) -> float:
    """Song et al. (2012) HSIC_u written as the U-statistic it is (mean of h over distinct 4-tuples)."""
    n = K.shape[0]
    total, count = 0.0, 0
    for t in itertools.permutations(range(n), 4):
        h = 0.0
        for i, j, q, r in itertools.permutations(t):
            h += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        total += h / 24
        count += 1
    return float(total / count)


def test_unbiased_hsic_matches_its_u_statistic_definition():
    x, y = gaussians(7, 5, seed=1)
    y = y + x  # dependent, so the value is not ~0
    K, L = (x.double() @ x.double().T), (y.double() @ y.double().T)
    assert hsic_unbiased(gram_stats(x), gram_stats(y)) == pytest.approx(hsic_u_statistic(K, L), rel=1e-9)


def test_gram_diagonal_is_zeroed_in_float64():
    s = gram_stats(torch.randn(10, 4))
    assert s.K.dtype == torch.float64
    assert torch.all(s.K.diagonal() == 0)
    assert s.K[0, 1] != 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_gaussians_score_near_zero(seed):
    x, y = gaussians(256, 768, seed)
    assert abs(cka(x, y)) < 0.05


def test_biased_cka_is_high_on_independent_data_which_is_why_we_debias():
    # docs/study.md: plain CKA ~0.9 for two independent 768-wide representations at 64 samples
    x, y = gaussians(64, 768, seed=3)
    assert cka_biased(x, y) > 0.85
    assert abs(cka(x, y)) < 0.15


def test_invariant_to_orthogonal_transform_and_isotropic_scale():
    x, _ = gaussians(128, 64, seed=4)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert cka(x, 3.7 * x.double() @ q) == pytest.approx(1.0, abs=1e-6)
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_minibatch_estimate_does_not_depend_on_batch_size_and_matches_full_batch():
    x, y = related(4096)
    full = cka(x, y)
    assert 0.3 < full < 0.9  # a value where disagreement would show
    for bs in (128, 512, 1024, 4096):
        acc = CKAAccumulator([("x", "y")])
        for i in range(0, len(x), bs):
            acc.update({"x": x[i : i + bs], "y": y[i : i + bs]})
        assert acc.n_samples == 4096 and acc.n_batches == 4096 // bs
        assert acc.result()[("x", "y")] == pytest.approx(full, abs=0.01)


def test_accumulator_handles_many_pairs_each_like_a_single_cka():
    x, y = related(512, seed=7)
    z = x[:, :10] ** 2
    acc = CKAAccumulator([("x", "y"), ("x", "z"), ("y", "z")])
    acc.update({"x": x, "y": y, "z": z, "unused": x})  # extra keys are ignored
    got = acc.result()
    assert got[("x", "y")] == pytest.approx(cka(x, y), abs=1e-12)
    assert got[("x", "z")] == pytest.approx(cka(x, z), abs=1e-12)
    assert got[("y", "z")] == pytest.approx(cka(y, z), abs=1e-12)


def test_too_few_samples_is_a_user_error():
    with pytest.raises(FalstudyError, match="more than 3 samples"):
        gram_stats(torch.randn(3, 8))
    with pytest.raises(KeyError):
        CKAAccumulator([("a", "b")]).update({"a": torch.randn(8, 2)})
