"""The one shared subspace-extension rule of the continual strategies (docs/strategies.md,
"Shared subspace rule"): KeepLoRA, InfLoRA and EBLoRA all grow an orthonormal input-side basis
M (d_in x k) of directions that later tasks must leave alone."""

from __future__ import annotations

import torch


def _orthonormal_complement_step(M: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Columns of V made orthogonal to M (two Gram-Schmidt passes) and orthonormal (QR)."""
    for _ in range(2):
        if M.shape[1]:
            V = V - M @ (M.T @ V)
    q, r = torch.linalg.qr(V)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones_like(torch.diagonal(r)))


@torch.no_grad()
def extend(M: torch.Tensor | None, R: torch.Tensor, eps: float, cap: int | None = None) -> tuple[torch.Tensor, dict]:
    """Extend the orthonormal basis ``M`` (d_in x k, or None/empty) with the leading left singular
    vectors of ``R`` (d_in x n: features or G^T) until a fraction ``eps`` of ||R||_F^2 is captured.

    - M empty: the top-k left singular vectors, k the smallest count whose cumulative sigma^2
      reaches eps * ||R||_F^2 (at least 1).
    - Otherwise: R' = (I - M M^T) R; start from the captured fraction (E - ||R'||^2) / E and
      append R''s leading left singular vectors until the fraction reaches eps (none if it does).

    M never shrinks and stays orthonormal (fp32). ``cap`` bounds the number of columns
    (e.g. d_in - r so that r directions stay free). Returns (M_new, info) with info =
    {k_before, k, captured, capped}; ``captured`` is the fraction of E that span(M_new) holds.
    """
    R = R.detach().float()
    d_in = R.shape[0]
    M = R.new_zeros(d_in, 0) if M is None else M.detach().to(device=R.device, dtype=torch.float32)
    if M.shape[0] != d_in:
        raise ValueError(f"extend: M has {M.shape[0]} rows but R has {d_in}; both must be input-side (d_in x .).")
    cap = d_in if cap is None else max(0, min(int(cap), d_in))
    k0 = M.shape[1]
    energy = float(R.pow(2).sum())
    info = {"k_before": k0, "k": k0, "captured": 1.0, "capped": False}
    if energy == 0.0:
        return M, info
    residual = R - M @ (M.T @ R) if k0 else R
    captured = max(0.0, (energy - float(residual.pow(2).sum())) / energy)
    info["captured"] = captured
    if captured >= eps:
        return M, info
    if k0 >= cap:
        info["capped"] = True
        return M, info
    U, S, _ = torch.linalg.svd(residual, full_matrices=False)
    s2 = S.pow(2)
    cum = captured + torch.cumsum(s2, 0) / energy
    n = int((cum < eps).sum()) + 1                       # smallest count reaching eps (at least 1)
    n_nonzero = int((S > S[0] * 1e-6).sum()) if S.numel() and S[0] > 0 else 0
    n = min(n, n_nonzero, S.numel())
    if k0 + n > cap:
        n = cap - k0
        info["capped"] = True
    if n <= 0:
        return M, info
    new = _orthonormal_complement_step(M, U[:, :n])
    M_new = torch.cat([M, new], dim=1)
    info["k"] = M_new.shape[1]
    info["captured"] = min(1.0, captured + float(s2[:n].sum()) / energy)
    return M_new, info


def project_out(M: torch.Tensor | None, X: torch.Tensor) -> torch.Tensor:
    """(I - M M^T) X for X with d_in rows (fp32)."""
    X = X.float()
    if M is None or M.shape[1] == 0:
        return X
    M = M.to(X)
    return X - M @ (M.T @ X)


def orthonormal_rows_outside(M: torch.Tensor | None, R: torch.Tensor, r: int, where: str = "") -> torch.Tensor:
    """A (r x d_in): the top-r left singular vectors of (I - M M^T) R, transposed, with orthonormal
    rows orthogonal to span(M). If the projected R has rank < r, the missing rows are filled with
    seeded random directions of the free subspace. Raises if the free subspace is smaller than r
    (d_in - k < r): lower the LoRA rank or cap k at d_in - r."""
    R = R.float()
    d_in = R.shape[0]
    k = 0 if M is None else M.shape[1]
    if d_in - k < r:
        raise ValueError(f"{where}: the free subspace has dimension d_in - k = {d_in} - {k} = {d_in - k} < r = {r}: "
                         f"no r orthonormal directions orthogonal to the protected subspace exist. Lower LoraConfig.r "
                         f"or cap the subspace at d_in - r (strategy.cap: null).")
    Rp = project_out(M, R)
    U, S, _ = torch.linalg.svd(Rp, full_matrices=False)
    good = int((S > (S[0] if S.numel() else 0) * 1e-6).sum()) if S.numel() and S[0] > 0 else 0
    V = U[:, :min(r, good)]
    if V.shape[1] < r:  # rank(G') < r: random fill inside the free subspace
        gen = torch.Generator().manual_seed(d_in * 7919 + k)
        V = torch.cat([V, torch.randn(d_in, r - V.shape[1], generator=gen).to(V)], dim=1)
    basis = M.to(V) if M is not None and k else V.new_zeros(d_in, 0)
    V = _orthonormal_complement_step(basis, V)
    return V.T.contiguous()
