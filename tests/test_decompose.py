"""Low-rank decomposition and magnitude rescaling (docs/method.md, SLICE stages 3 and 4), and LoRAM's
DST-I bases, each against an independent computation."""

import math

import pytest
import torch

from slice_trl.kernels.decompose import (
    dst1_basis,
    lora_ga_slices,
    loram_bases,
    module_seed,
    product_variance,
    randomized_svd,
    rank_factor,
    variance_matched_beta,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q


def _gapped_matrix(d_out=48, d_in=80, seed=0) -> torch.Tensor:
    """U diag(s) V^T with well separated singular values s_j = 0.6^j (clear spectral gaps)."""
    m = min(d_out, d_in)
    s = 0.6 ** torch.arange(m, dtype=torch.float64)
    return (_orthonormal(d_out, m, seed) * s) @ _orthonormal(d_in, m, seed + 1).T


def _align(x: torch.Tensor, ref: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip the sign of each singular vector of x (columns for dim=0, rows for dim=1) to match ref."""
    signs = torch.sign((x * ref).sum(dim=dim, keepdim=True))
    return x * signs


# --- rank factor, product variance -----------------------------------------------------------

@pytest.mark.parametrize(
    "r, d_out, d_in, expected",
    [
        (4, 64, 96, 1.0 / 3.0),  # ln 4 / ln 64 = 2/6
        (8, 256, 4096, 3.0 / 8.0),  # ln 8 / ln 256
        (1, 10, 20, math.log(2) / math.log(10)),  # r clamped to 2
        (8, 1, 100, 3.0),  # m clamped to 2: ln 8 / ln 2
        (64, 576, 1536, math.log(64) / math.log(576)),
    ],
)
def test_rank_factor(r, d_out, d_in, expected):
    assert rank_factor(r, d_out, d_in) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(7, 3, 11), (40, 5, 33), (1, 1, 9)])
def test_product_variance_equals_torch_var_of_the_explicit_product(shape):
    d_out, r, d_in = shape
    gen = torch.Generator().manual_seed(sum(shape))
    b = torch.randn(d_out, r, generator=gen) + 0.3  # non-zero mean: the mean term matters
    a = torch.randn(r, d_in, generator=gen) - 0.2
    expected = float(torch.var((b.double() @ a.double())))  # unbiased (correction=1)
    assert product_variance(b, a) == pytest.approx(expected, rel=1e-10)


# --- rescaling -------------------------------------------------------------------------------

@pytest.mark.parametrize("r, d_out, d_in", [(4, 48, 80), (8, 96, 40), (1, 30, 30)])
def test_variance_matched_beta_gives_var_BA_eta_r_var_W(r, d_out, d_in):
    gen = torch.Generator().manual_seed(r + d_out)
    weight = 0.05 * torch.randn(d_out, d_in, generator=gen) + 0.01
    grad = torch.randn(d_out, d_in, generator=gen)
    phi_b, phi_a = lora_ga_slices(grad, r, seed=3)
    beta = variance_matched_beta(weight, phi_b, phi_a)
    b0, a0 = beta * phi_b, beta * phi_a
    eta_r = math.log(max(2, r)) / math.log(max(2, min(d_out, d_in)))  # written out, not rank_factor
    var_ba = float(torch.var(b0.double() @ a0.double()))
    var_w = float(torch.var(weight.double()))
    assert var_ba == pytest.approx(eta_r * var_w, rel=1e-3)
    # B's columns and A's rows are orthogonal (and share the norm beta)
    eye = torch.eye(r, dtype=torch.float64)
    torch.testing.assert_close(b0.double().T @ b0.double(), beta**2 * eye, rtol=0, atol=1e-5 * beta**2)
    torch.testing.assert_close(a0.double() @ a0.double().T, beta**2 * eye, rtol=0, atol=1e-5 * beta**2)


def test_variance_matched_beta_rejects_a_constant_weight():
    phi_b, phi_a = loram_bases(8, 8, 2)
    with pytest.raises(ValueError, match=r"Var\(W\)=0"):
        variance_matched_beta(torch.full((8, 8), 0.5), phi_b, phi_a)


# --- DST-I / LoRAM ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, k", [(1, 1), (5, 5), (12, 4), (33, 7)])
def test_dst1_basis_matches_the_formula_and_is_orthonormal(n, k):
    basis = dst1_basis(n, k, dtype=torch.float64)
    assert basis.shape == (k, n)
    for row in range(k):
        for i in range(n):
            expected = math.sqrt(2.0 / (n + 1)) * math.sin(math.pi * (i + 1) * (row + 1) / (n + 1))
            assert basis[row, i].item() == pytest.approx(expected, abs=1e-14)
    torch.testing.assert_close(basis @ basis.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-12)
    if k == n:  # a complete orthonormal basis
        torch.testing.assert_close(basis.T @ basis, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_dst1_basis_rejects_more_vectors_than_its_length():
    with pytest.raises(ValueError, match="has only 4 vectors"):
        dst1_basis(4, 5)


def test_loram_bases_are_the_lowest_frequency_dst1_vectors():
    phi_b, phi_a = loram_bases(20, 12, 3)
    assert phi_b.shape == (20, 3) and phi_a.shape == (3, 12)
    torch.testing.assert_close(phi_b, dst1_basis(20, 3).T)
    torch.testing.assert_close(phi_a, dst1_basis(12, 3))
    with pytest.raises(ValueError, match="rank r=13 exceeds"):
        loram_bases(20, 12, 13)


# --- randomised SVD and LoRA-GA slicing ------------------------------------------------------

@pytest.mark.parametrize("d_out, d_in, r", [(48, 80, 4), (80, 48, 6), (40, 40, 10)])
def test_lora_ga_slices_equal_slices_of_an_exact_svd(d_out, d_in, r):
    g = _gapped_matrix(d_out, d_in, seed=r)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)  # exact, fp64
    phi_b, phi_a = lora_ga_slices(g.float(), r, oversample=4, niter=4, seed=11)
    assert phi_b.shape == (d_out, r) and phi_a.shape == (r, d_in)
    assert phi_b.dtype == torch.float32 and phi_a.dtype == torch.float32
    ref_b = u[:, :r]  # first r left singular vectors
    ref_a = vh[r:2 * r, :]  # (r+1)..2r-th right singular vectors, as rows
    torch.testing.assert_close(_align(phi_b.double(), ref_b, dim=0), ref_b, rtol=0, atol=1e-4)
    torch.testing.assert_close(_align(phi_a.double(), ref_a, dim=1), ref_a, rtol=0, atol=1e-4)


def test_lora_ga_slices_needs_2r_singular_vectors():
    with pytest.raises(ValueError, match=r"2r=34 .* lower LoraConfig\.r to at most 16"):
        lora_ga_slices(torch.randn(33, 50), 17)
    lora_ga_slices(torch.randn(32, 50), 16)  # 2r == min(d_out, d_in) is allowed


def test_randomized_svd_is_seeded_and_leaves_the_global_rng_alone():
    g = torch.randn(30, 50)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    u1, s1, v1 = randomized_svd(g, q=12, niter=2, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(7)  # global RNG advanced: no effect on a seeded call
    u2, s2, v2 = randomized_svd(g, q=12, niter=2, seed=5)
    assert torch.equal(u1, u2) and torch.equal(s1, s2) and torch.equal(v1, v2)
    assert u1.shape == (30, 12) and s1.shape == (12,) and v1.shape == (50, 12)
    # a low-rank-plus-noise reconstruction is accurate in the leading singular values
    torch.testing.assert_close(s1[:3], torch.linalg.svdvals(g)[:3], rtol=5e-2, atol=0)


def test_randomized_svd_of_a_bf16_gradient_runs_in_fp32():
    g = _gapped_matrix(24, 40).to(torch.bfloat16)
    u, s, v = randomized_svd(g, q=8, niter=4, seed=0)
    assert u.dtype == s.dtype == v.dtype == torch.float32


def test_module_seed_is_stable_and_distinguishes_modules():
    # crc32-based: the same on every run and process (not Python's salted hash())
    assert module_seed(42, "model.layers.0.self_attn.q_proj") == module_seed(42, "model.layers.0.self_attn.q_proj")
    seeds = {module_seed(42, f"model.layers.{i}.mlp.{p}") for i in range(4) for p in ("up_proj", "down_proj")}
    assert len(seeds) == 8
    assert module_seed(42, "a") != module_seed(43, "a")
    assert all(0 <= s < 2**31 - 1 for s in seeds)
