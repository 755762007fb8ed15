"""CountSketch of per-module gradients and the pairwise cosine matrix built from sketches.

`CountSketch` compresses a {module name: gradient} dict into one (k,) vector with hashes that
depend only on (seed, module name, k), and returns the exact squared norm beside it;
`cosine_matrix` turns M sketches and their exact norms into the (M, M) cosine matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

# The hash field: the Mersenne prime p = 2^31 - 1. Module entries are indexed below 2^30 and the
# Horner accumulator is kept below 3 * 2^31 (one fold per step, 2^31 = 1 mod p), so
# h * i + c < 3 * 2^61 + 2^31 < 2^63: the hashes are exact int64 arithmetic, identical on every
# device and torch version.
HASH_PRIME = 2**31 - 1
_HASH_DEGREE = 3  # cubic polynomials over Z_p: 4-wise independent hash families
_MAX_MODULE_ENTRIES = 2**30


def _fold_(h: torch.Tensor) -> torch.Tensor:
    """In place: h -> (h & p) + (h >> 31), congruent mod p and below 2^31 + h / 2^31.
    Shifts and masks only (an int64 division costs several times more on CPU)."""
    high = h >> 31
    return h.bitwise_and_(HASH_PRIME).add_(high)


def _poly_hash(index: torch.Tensor, coeffs: Sequence[int]) -> torch.Tensor:
    """(c0 i^3 + c1 i^2 + c2 i + c3) mod p for int64 indices 0 <= i < 2^30, fully reduced."""
    h = torch.full_like(index, coeffs[0])
    for c in coeffs[1:]:
        _fold_(h.mul_(index).add_(c))  # < 2^31 + 2^32 after the fold
    _fold_(h)  # < 2^31 + 4
    return h.sub_((h >= HASH_PRIME).to(h.dtype).mul_(HASH_PRIME))


class CountSketch:
    """CountSketch of a dict of per-module gradients into one vector of size ``k``.

    Every module gets its own bucket hash h: [0, d) -> [0, k) and sign hash s: [0, d) -> {-1, +1}:
    random cubic polynomials over Z_p (p = 2^31 - 1; 4-wise independent families) whose
    coefficients are drawn from ``random.Random`` seeded by the seed and the module's name. The
    hashes therefore depend only on (seed, module name, k), not on module order, device or torch
    version (exact integer arithmetic), so sketches of different tasks, runs and machines are
    comparable. The sketch of the whole gradient is sum over modules of
    ``scatter_add(h, s * g.flatten())``; <S a, S b> is an unbiased estimate of <a, b>. Cosines
    divide by the EXACT norms, which `sketch` returns alongside.

    Hashes are the same for every task, so up to ``memo_bytes`` of them are kept between calls
    (int32 bucket + int8 sign, 5 bytes an entry): on CPU, hashing then costs one pass per run,
    not one per task. Entries are processed in chunks of ``chunk`` to bound temporaries.
    """

    def __init__(self, k: int, seed: int = 42, chunk: int = 1 << 22, memo_bytes: int = 2 << 30):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < HASH_PRIME:
            raise ValueError(f"sketch_size k={k!r} must be an integer >= 1 (the reference uses 200000) and "
                             "below 2^31 - 1.")
        self.k = int(k)
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.memo_bytes = int(memo_bytes)
        self._memo: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._memo_used = 0

    def _coefficients(self, name: str) -> tuple[list[int], list[int]]:
        import random

        # random.Random with a str seed is stable across processes and Python versions
        rng = random.Random(f"countsketch/{self.seed}/{name}")

        def draw():
            return [rng.randrange(1, HASH_PRIME)] + [rng.randrange(HASH_PRIME) for _ in range(_HASH_DEGREE)]

        return draw(), draw()

    def hashes(self, name: str, start: int, stop: int, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hashes of the flat entries ``start..stop-1`` of module ``name``: ``(buckets (n,) int64
        in [0, k), signs (n,) int8 in {-1, +1})``."""
        if stop > _MAX_MODULE_ENTRIES:
            raise ValueError(f"Module {name!r} has {stop} entries; the sketch hashes support up to 2^30.")
        bucket_c, sign_c = self._coefficients(name)
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        # multiply-shift onto [0, k): h < 2^31 and k < 2^31, so h * k < 2^62 (no division)
        buckets = _poly_hash(index, bucket_c).mul_(self.k).bitwise_right_shift_(31)
        signs = (_poly_hash(index, sign_c) & 1).to(torch.int8).mul_(-2).add_(1)
        return buckets, signs

    def _chunk_hashes(self, name: str, start: int, stop: int, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, start, str(device))
        if key in self._memo:
            buckets, signs = self._memo[key]
            return buckets.long(), signs
        buckets, signs = self.hashes(name, start, stop, device)
        if self._memo_used + 5 * (stop - start) <= self.memo_bytes:
            self._memo[key] = (buckets.to(torch.int32), signs)
            self._memo_used += 5 * (stop - start)
        return buckets, signs

    @torch.no_grad()
    def sketch(self, grads: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Sketch a gradient dict.

        Args:
            grads: {module name: tensor of any shape (typically (d_out, d_in))}.

        Returns:
            (sketch (k,) float64 on CPU, exact squared norm sum_m ||g_m||_F^2 as a Python float,
            accumulated in float64).
        """
        device = next(iter(grads.values())).device if grads else torch.device("cpu")
        out = torch.zeros(self.k, dtype=torch.float64, device=device)
        sq_norm = torch.zeros((), dtype=torch.float64, device=device)
        for name in sorted(grads):  # fixed order: the float sums do not depend on dict order
            flat = grads[name].detach().reshape(-1)
            for start in range(0, flat.numel(), self.chunk):
                part = flat[start:start + self.chunk].to(torch.float64)
                sq_norm += part.dot(part)
                buckets, signs = self._chunk_hashes(name, start, start + part.numel(), part.device)
                out.scatter_add_(0, buckets, part.mul_(signs))
        return out.cpu(), float(sq_norm)


def cosine_matrix(sketches: torch.Tensor | np.ndarray, sq_norms: Sequence[float] | np.ndarray) -> np.ndarray:
    """Pairwise cosine matrix from sketches and exact squared norms.

    Args:
        sketches: (M, k) sketches (float64 preferred).
        sq_norms: (M,) exact squared norms of the unsketched gradients.

    Returns:
        (M, M) float64 matrix, cos_ij = <s_i, s_j> / sqrt(n_i n_j), diagonal set to 1. A sketch
        cosine may fall slightly outside [-1, 1]; it is clipped. A zero gradient has cosine 0
        with everything (it carries no direction).
    """
    s = np.asarray(sketches.cpu().numpy() if torch.is_tensor(sketches) else sketches, dtype=np.float64)
    n = np.sqrt(np.asarray(sq_norms, dtype=np.float64))
    dots = s @ s.T
    denom = np.outer(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, dots / denom, 0.0)
    cos = np.clip(cos, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos
