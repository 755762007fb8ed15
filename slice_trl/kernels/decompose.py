"""Low-rank decomposition and magnitude rescaling (docs/method.md, SLICE stages 3 and 4), and
LoRAM's DST-I bases.

Shapes: a gradient or weight is (d_out, d_in); Phi_B / B is (d_out, r); Phi_A / A is (r, d_in).
"""

from __future__ import annotations

import math
import zlib

import torch


def module_seed(seed: int, module_name: str) -> int:
    """A per-module seed, so a module's randomised SVD does not depend on module order."""
    return (seed * 1_000_003 + zlib.crc32(module_name.encode())) % (2**31 - 1)


def randomized_svd(g: torch.Tensor, q: int, niter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomised truncated SVD in fp32: g ~= U diag(S) V^T, U (d_out, q), S (q,), V (d_in, q).

    Runs under its own RNG state (seeded), leaving the global RNG untouched. TF32 is turned
    off for the call (the reference ran it under TF32; docs/method.md says not to).
    """
    devices = [g.device] if g.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            u, s, v = torch.svd_lowrank(g.float(), q=q, niter=niter)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return u, s, v


def lora_ga_slices(g: torch.Tensor, r: int, oversample: int = 4, niter: int = 4, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-GA slicing of a gradient: Phi_B = U[:, :r] (d_out, r), Phi_A = V[:, r:2r]^T (r, d_in).

    q = min(oversample * r, min(d_out, d_in)); needs 2r <= min(d_out, d_in).
    """
    d_out, d_in = g.shape
    m = min(d_out, d_in)
    if 2 * r > m:
        raise ValueError(f"rank r={r} needs 2r={2 * r} singular vectors but the layer is {d_out}x{d_in}; "
                         f"lower LoraConfig.r to at most {m // 2}.")
    q = max(min(oversample * r, m), 2 * r)
    u, _, v = randomized_svd(g, q=q, niter=niter, seed=seed)
    return u[:, :r].contiguous(), v[:, r:2 * r].T.contiguous()


def dst1_basis(n: int, k: int, dtype=torch.float32) -> torch.Tensor:
    """The first k vectors of the N-point DST-I basis, as rows: (k, n), orthonormal.

    row j, entry i = sqrt(2 / (n + 1)) * sin(pi (i + 1)(j + 1) / (n + 1)).
    """
    if k > n:
        raise ValueError(f"DST-I basis of length {n} has only {n} vectors; asked for {k}.")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    j = torch.arange(1, k + 1, dtype=torch.float64)
    basis = math.sqrt(2.0 / (n + 1)) * torch.sin(math.pi * j[:, None] * i[None, :] / (n + 1))
    return basis.to(dtype)


def loram_bases(d_out: int, d_in: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRAM's data-free bases: Phi_B (d_out, r) = DST-I columns, Phi_A (r, d_in) = DST-I rows."""
    if r > min(d_out, d_in):
        raise ValueError(f"rank r={r} exceeds the layer's smaller side ({d_out}x{d_in}); lower LoraConfig.r.")
    return dst1_basis(d_out, r).T.contiguous(), dst1_basis(d_in, r)


def product_variance(b: torch.Tensor, a: torch.Tensor) -> float:
    """Unbiased variance of the entries of B A (d_out x d_in) without forming it.

    sum(BA) = (1^T B)(A 1); sum((BA)^2) = ||BA||_F^2 = trace((B^T B)(A A^T)). fp64.
    """
    b64, a64 = b.double(), a.double()
    n = b.shape[0] * a.shape[1]
    total = float(b64.sum(0) @ a64.sum(1))
    sq = float(torch.sum((b64.T @ b64) * (a64 @ a64.T)))
    return (sq - total * total / n) / (n - 1)


def rank_factor(r: int, d_out: int, d_in: int) -> float:
    """eta_r = ln(max(2, r)) / ln(max(2, m)), m = min(d_out, d_in)."""
    return math.log(max(2, r)) / math.log(max(2, min(d_out, d_in)))


def variance_matched_beta(weight: torch.Tensor, phi_b: torch.Tensor, phi_a: torch.Tensor) -> float:
    """beta = (eta_r * Var(W) / Var(Phi_B Phi_A))^(1/4), so that Var(beta Phi_B beta Phi_A) =
    eta_r * Var(W). ``weight`` is the current (merged) weight before absorption."""
    r = phi_b.shape[1]
    var_w = float(torch.var(weight.detach().double()))
    var_ba = product_variance(phi_b, phi_a)
    if var_ba <= 0.0 or var_w <= 0.0:
        raise ValueError(f"Cannot rescale: Var(W)={var_w:.3g}, Var(Phi_B Phi_A)={var_ba:.3g} (need both > 0).")
    return (rank_factor(r, *weight.shape) * var_w / var_ba) ** 0.25
