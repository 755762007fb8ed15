"""slice_trl.kernels.subspace: the shared extend(M, R, eps, cap) rule and the A-in-the-free-subspace helper."""

import pytest
import torch

from slice_trl.kernels.subspace import extend, orthonormal_rows_outside


def _orthonormal(M, tol=1e-5):
    return (M.T @ M - torch.eye(M.shape[1])).abs().max() <= tol


def _captured(M, R):
    return 1 - float((R - M @ (M.T @ R)).pow(2).sum()) / float(R.pow(2).sum())


def test_extend_from_empty_keeps_smallest_k_reaching_eps():
    torch.manual_seed(0)
    R = torch.randn(24, 12) @ torch.diag(torch.logspace(0, -2, 12))
    M, info = extend(None, R, 0.6)
    s2 = torch.linalg.svdvals(R).pow(2)
    cum = torch.cumsum(s2, 0) / s2.sum()
    k = int((cum < 0.6).sum()) + 1
    assert M.shape == (24, k) and info["k"] == k and info["k_before"] == 0
    assert _orthonormal(M) and _captured(M, R) >= 0.6 - 1e-6
    M1, _ = extend(None, R, 1e-9)
    assert M1.shape[1] == 1  # at least one


def test_extend_appends_orthonormal_never_shrinks_and_reaches_eps():
    torch.manual_seed(1)
    M, _ = extend(None, torch.randn(32, 6), 0.5)
    k = M.shape[1]
    for i in range(3):
        R = torch.randn(32, 5)
        M2, info = extend(M, R, 0.9)
        assert M2.shape[1] >= k and torch.equal(M2[:, :k], M)  # never shrinks, old columns kept
        assert _orthonormal(M2)
        assert _captured(M2, R) >= 0.9 - 1e-5 and info["captured"] >= 0.9 - 1e-5
        M, k = M2, M2.shape[1]


def test_extend_adds_nothing_when_already_captured_and_respects_cap():
    torch.manual_seed(2)
    R = torch.randn(16, 4)
    M, _ = extend(None, R, 0.999)
    same, info = extend(M, R, 0.99)
    assert torch.equal(same, M) and info["k"] == M.shape[1]
    capped, info = extend(None, torch.randn(16, 16), 0.999, cap=5)
    assert capped.shape[1] == 5 and info["capped"] and _orthonormal(capped)
    still, info = extend(capped, torch.randn(16, 3), 0.99, cap=5)
    assert still.shape[1] == 5 and info["capped"]


def test_rows_outside_are_orthonormal_and_orthogonal_to_M_even_when_rank_deficient():
    torch.manual_seed(3)
    M, _ = extend(None, torch.randn(20, 8), 0.99)
    for R in (torch.randn(20, 10), torch.randn(20, 1), M @ torch.randn(M.shape[1], 4)):  # full, rank 1, inside M
        A = orthonormal_rows_outside(M, R, 4)
        assert A.shape == (4, 20)
        assert (A @ M).abs().max() <= 1e-5
        assert (A @ A.T - torch.eye(4)).abs().max() <= 1e-5


def test_rank_larger_than_free_subspace_is_an_error():
    M = torch.linalg.qr(torch.randn(10, 8))[0]  # k = 8, d_in - k = 2 < r = 4
    with pytest.raises(ValueError, match=r"d_in - k = 10 - 8 = 2 < r = 4.*Lower LoraConfig.r"):
        orthonormal_rows_outside(M, torch.randn(10, 3), 4, where="mod")
