"""Gradient reconciliation: PCGrad with strength c (docs/method.md, SLICE stage 2).

    G~ = G_cur - c * min(<G_cur, G_prev>_F, 0) / ||G_prev||_F^2 * G_prev

Global mode (the paper's default) takes ONE coefficient from inner products summed over all
target modules; per-module mode applies the formula to each module alone. Sums are in fp64.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

import torch


@dataclass
class SurgeryReport:
    """What the projection did. ``cosine`` and ``gamma`` are the global ones (per-module values
    in ``module_cosines``/``module_gammas``); ``fired`` is True if any correction was applied."""

    mode: str
    c: float
    cosine: float | None
    gamma: float
    fired: bool
    frac_negative_modules: float
    module_cosines: dict[str, float] = field(default_factory=dict)
    module_gammas: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        out = {k: getattr(self, k) for k in ("mode", "c", "cosine", "gamma", "fired", "frac_negative_modules")}
        if self.mode == "per_module":  # where the surgery acted (in global mode: everywhere or nowhere)
            out["fired_modules"] = sorted(n for n, g in self.module_gammas.items() if g != 0.0)
        return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    # b may be stored in bf16 or on the CPU: bring it to a's device in fp32, sum in fp64
    return float(torch.sum(a.double() * b.to(a.device, torch.float64)))


def pcgrad_coefficient(dot: float, prev_sq: float, c: float) -> float:
    """gamma such that G~ = G_cur + gamma * G_prev; 0 when there is no conflict or no G_prev."""
    if prev_sq <= 0.0 or dot >= 0.0:
        return 0.0
    return -c * dot / prev_sq


def reconcile(
    g_cur: MutableMapping[str, torch.Tensor],
    g_prev: Mapping[str, torch.Tensor] | None,
    c: float,
    mode: str = "global",
) -> SurgeryReport:
    """Apply PCGrad-c to ``g_cur`` IN PLACE (saves a full gradient set of memory).

    Args:
        g_cur, g_prev: name -> (d_out, d_in). ``g_prev`` may be None/empty (task 1) and may be
            stored in another dtype or device.
        c: strength in [0, 1]; 0 leaves ``g_cur`` unchanged.
        mode: "global" or "per_module".
    """
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"c={c!r} must be in [0, 1].")
    if mode not in ("global", "per_module"):
        raise ValueError(f"projection mode {mode!r} must be 'global' or 'per_module'.")
    if not g_prev:
        return SurgeryReport(mode, c, None, 0.0, False, 0.0)
    missing = set(g_cur) ^ set(g_prev)
    if missing:
        raise ValueError(f"G_cur and G_prev cover different modules: {sorted(missing)[:5]}")

    dots, prev_sqs, cur_sqs, cosines = {}, {}, {}, {}
    for name in sorted(g_cur):
        dots[name] = _dot(g_cur[name], g_prev[name])
        prev_sqs[name] = _dot(g_prev[name].to(g_cur[name].device, torch.float32), g_prev[name])
        cur_sqs[name] = _dot(g_cur[name], g_cur[name])
        denom = (prev_sqs[name] * cur_sqs[name]) ** 0.5
        cosines[name] = dots[name] / denom if denom > 0 else 0.0
    frac_neg = sum(v < 0 for v in cosines.values()) / len(cosines)
    sum_dot, sum_prev, sum_cur = sum(dots.values()), sum(prev_sqs.values()), sum(cur_sqs.values())
    denom = (sum_prev * sum_cur) ** 0.5
    cos = sum_dot / denom if denom > 0 else 0.0

    if mode == "global":
        gamma = pcgrad_coefficient(sum_dot, sum_prev, c)
        gammas = {n: gamma for n in g_cur}
    else:
        gammas = {n: pcgrad_coefficient(dots[n], prev_sqs[n], c) for n in g_cur}
        gamma = 0.0
    for name, gm in gammas.items():
        if gm != 0.0:
            g_cur[name].add_(g_prev[name].to(g_cur[name].device, g_cur[name].dtype), alpha=gm)
    fired = any(gm != 0.0 for gm in gammas.values())
    return SurgeryReport(mode, c, cos, gamma, fired, frac_neg, cosines, gammas)
