"""Exhaustive search over task subsets: every N-subset of M tasks scored by the mean of its
pairwise scores (`iter_subset_scores`, `top_subsets`), and the best training order of one set
(`best_order`, a shortest Hamiltonian path)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def _comb_table(m: int, n: int) -> np.ndarray:
    """table[a, b] = C(a, b) for 0 <= a <= m, 0 <= b <= n, as float64 (counts can exceed int64
    only for searches nobody can run; float keeps the arithmetic safe)."""
    t = np.zeros((m + 1, n + 1), dtype=np.float64)
    for a in range(m + 1):
        for b in range(n + 1):
            t[a, b] = math.comb(a, b)
    return t


def _expand(idx: np.ndarray, score: np.ndarray, flat_pairs: np.ndarray, m: int, n: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Extend every prefix by each admissible next index, in lexicographic order.

    idx: (P, j) lexicographically sorted prefixes, strictly increasing along rows; score: (P,)
    sum of the prefixes' pair scores. The next index at position j (0-based) runs from last+1 to
    m-n+j, so every prefix still has room for a full n-subset (no dead rows are built).
    Returns (P', j+1) and (P',), still in lexicographic order.
    """
    p, j = idx.shape
    last = idx[:, -1].astype(np.int64)
    counts = (m - n + j) - last
    total = int(counts.sum())
    rows = np.repeat(np.arange(p), counts)
    # position inside each prefix's run: 0, 1, ..., counts-1
    starts = np.cumsum(counts) - counts
    offset = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    new = last[rows] + 1 + offset
    new_idx = np.empty((total, j + 1), dtype=idx.dtype)
    new_idx[:, :j] = idx[rows]
    new_idx[:, j] = new
    new_score = score[rows]
    for col in range(j):  # add the pair scores of the new element with each earlier one
        new_score += flat_pairs[new_idx[:, col].astype(np.int64) * m + new]
    return new_idx, new_score


def iter_subset_scores(pairs: np.ndarray, n: int, chunk_size: int = 1 << 20
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every n-subset of range(M) with the SUM of its pairwise scores, in lexicographic order.

    Args:
        pairs: (M, M) symmetric pair scores (the diagonal is never read).
        n: subset size, 2 <= n <= M.
        chunk_size: bound on the rows of one yielded chunk (one prefix may exceed it only if a
            single prefix of length n-1 has more completions, i.e. never for chunk_size >= M).

    Yields:
        (idx (c, n) int16 sorted indices, sums (c,) float64).
    """
    pairs = np.ascontiguousarray(pairs, dtype=np.float64)
    m = pairs.shape[0]
    if not 2 <= n <= m:
        raise ValueError(f"Subset size n={n} must be between 2 and the pool size {m}.")
    flat = pairs.ravel()
    comb = _comb_table(m, n)
    dtype = np.int16 if m < 2**15 else np.int32

    def rec(idx: np.ndarray, score: np.ndarray):
        j = idx.shape[1]
        if j == n:
            yield idx, score
            return
        # completions of each prefix: choose the remaining n-j indices among those after `last`
        completions = comb[m - 1 - idx[:, -1].astype(np.int64), n - j]
        if completions.sum() <= chunk_size:
            while idx.shape[1] < n:
                idx, score = _expand(idx, score, flat, m, n)
            yield idx, score
            return
        if len(idx) == 1:
            yield from rec(*_expand(idx, score, flat, m, n))
            return
        # split the prefixes greedily into consecutive groups of at most chunk_size completions,
        # keeping lexicographic order; a group has at least one prefix, and the total exceeds
        # chunk_size, so there are >= 2 groups and the recursion ends
        cum = np.cumsum(completions)
        lo = 0
        while lo < len(idx):
            base = cum[lo - 1] if lo else 0.0
            hi = max(lo + 1, int(np.searchsorted(cum, base + chunk_size, side="right")))
            yield from rec(idx[lo:hi], score[lo:hi])
            lo = hi

    first = np.arange(m - n + 1, dtype=dtype)[:, None]
    yield from rec(first, np.zeros(len(first), dtype=np.float64))


def top_subsets(pairs: np.ndarray, n: int, k: int = 10, chunk_size: int = 1 << 20, progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k n-subsets with the LOWEST mean pairwise score, found exhaustively.

    Ties are broken by lexicographic order of the index tuples (the enumeration order), so the
    result is deterministic and equals a brute force over ``itertools.combinations`` sorted by
    (score, tuple).

    Args:
        pairs: (M, M) symmetric pair scores (e.g. `cosine_matrix`).
        n: subset size; k: how many subsets to keep (capped at C(M, n)).

    Returns:
        (subsets (k', n) int64 sorted index tuples, best first; means (k',) float64).
    """
    m = np.asarray(pairs).shape[0]
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"top k={k!r} must be >= 1.")
    if not 2 <= n <= m:
        raise ValueError(f"Subset size n={n} must be between 2 and the pool size {m}.")
    total = math.comb(m, n)
    k = min(int(k), total)
    n_pairs = n * (n - 1) // 2
    best_idx = np.empty((0, n), dtype=np.int64)
    best_sum = np.empty(0, dtype=np.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"scoring C({m},{n}) subsets", unit="subset", unit_scale=True)
    try:
        for idx, sums in iter_subset_scores(pairs, n, chunk_size):
            n_chunk = len(sums)
            if n_chunk > k:
                # keep every row up to the k-th smallest value (ties included), in enumeration order
                kth = np.partition(sums, k - 1)[k - 1]
                keep = np.flatnonzero(sums <= kth)
                idx, sums = idx[keep], sums[keep]
            # earlier chunks come first in the concatenation and the sort is stable: lexicographic
            # tie-breaking survives the merge
            cand_idx = np.concatenate([best_idx, idx.astype(np.int64)])
            cand_sum = np.concatenate([best_sum, sums])
            order = np.argsort(cand_sum, kind="stable")[:k]
            best_idx, best_sum = cand_idx[order], cand_sum[order]
            if bar is not None:
                bar.update(n_chunk)
    finally:
        if bar is not None:
            bar.close()
    return best_idx, best_sum / n_pairs


def best_order(pairs: np.ndarray) -> tuple[list[int], float]:
    """The order of a set that minimises the sum of consecutive-pair scores (a shortest
    Hamiltonian path, Held-Karp dynamic programme, O(2^n n^2)).

    A path and its reverse cost the same; among optimal orders the lexicographically smallest
    index sequence is returned, so the caller fixes the tie-break by how it indexes the set (the
    miner sorts the set by task name first).

    Args:
        pairs: (n, n) symmetric pair scores of the set's members.

    Returns:
        (order as a list of indices into ``pairs``, its sum of consecutive-pair scores).
    """
    c = np.asarray(pairs, dtype=np.float64)
    n = c.shape[0]
    if n == 1:
        return [0], 0.0
    if n > 16:
        raise ValueError(f"Ordering a set of {n} tasks exactly is too costly (2^n states); use n <= 16.")
    full = (1 << n) - 1
    # f[mask, i]: cheapest path that starts at i and visits exactly the members of mask
    f = np.full((1 << n, n), np.inf)
    for i in range(n):
        f[1 << i, i] = 0.0
    for mask in range(1, full + 1):
        for i in range(n):
            if not mask >> i & 1 or mask == 1 << i:
                continue
            rest = mask ^ (1 << i)
            js = [j for j in range(n) if rest >> j & 1]
            f[mask, i] = min(c[i, j] + f[rest, j] for j in js)
    tol = 1e-12 * max(1.0, float(np.abs(c).max()) * n)
    best = float(f[full].min())
    order = [int(np.flatnonzero(f[full] <= best + tol)[0])]
    mask = full
    while mask != 1 << order[-1]:
        i = order[-1]
        rest = mask ^ (1 << i)
        for j in range(n):  # smallest next index that stays on an optimal path
            if rest >> j & 1 and c[i, j] + f[rest, j] <= f[mask, i] + tol:
                order.append(j)
                break
        mask = rest
    cost = float(sum(c[a, b] for a, b in zip(order, order[1:])))
    return order, cost
