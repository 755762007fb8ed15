"""The initialiser interface, its report, and the parts every initialiser shares.

An initialiser is called before each task as

    report = initializer(model, adapter_name, current_batches, previous_batches)

with ``model`` a PeftModel holding a fresh LoRA adapter ``adapter_name``, and the batches
collated mini-batches (see `slice_trl.models.gradients.estimate_mean_gradients`). It writes A and B
into the adapter's layers, absorbs s * B0 A0 into the frozen base so the model's function is
unchanged, and returns an `InitReport`. One file per initialiser registers its class with
``@initializers.register(name, **traits)`` (`slice_trl.utils.registry`); `build_initializer` looks
it up.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from slice_trl.utils import distributed
from slice_trl.utils.registry import initializers
from slice_trl.kernels.decompose import module_seed, rank_factor, variance_matched_beta
from slice_trl.models.lora import lora_layers, write_and_absorb
from slice_trl.configs.settings import InitConfig

logger = logging.getLogger(__name__)

Batches = Iterable[Mapping[str, torch.Tensor]]


@dataclass
class InitReport:
    """What an initialiser did. ``modules[name]`` holds norms of A0, B0, beta and whether the
    module fell back to the vanilla init; ``timings`` are seconds per stage."""

    method: str
    adapter_name: str
    modules: dict[str, dict] = field(default_factory=dict)
    surgery: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_batches_cur: int = 0
    n_batches_prev: int = 0
    loss: str = "token mean over label tokens (labels != -100)"
    fallbacks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def vanilla_reset(layer, adapter_name: str, seed: int, name: str) -> None:
    """PEFT's default init (A Kaiming-uniform with a = sqrt(5), as `nn.Linear`; B = 0), seeded per
    module, written through `write_and_absorb` so a non-zero old adapter is absorbed too."""
    weight, weight_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    # ds_shape: the full shape of a ZeRO-3-partitioned parameter (its .shape is the local shard)
    a0 = torch.empty(getattr(weight, "ds_shape", weight.shape), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(module_seed(seed, name))
        nn.init.kaiming_uniform_(a0, a=math.sqrt(5))
    b0 = torch.zeros(getattr(weight_b, "ds_shape", weight_b.shape))
    write_and_absorb(layer, adapter_name, a0.to(weight.device), b0.to(weight.device))


def module_entry(a0: torch.Tensor, b0: torch.Tensor, beta: float | None, fallback: bool) -> dict:
    return {"norm_A": float(a0.detach().float().norm()), "norm_B": float(b0.detach().float().norm()), "beta": beta, "fallback": fallback}


# docs/method.md, "Operating point when scaling down": the paper's rsLoRA r = 64, alpha = 2 (s = 0.25) on
# Llama-3.2-3B (m = 3072 or 1024) gives std(s B0 A0) / std(W) = s * sqrt(eta_r) = 0.18-0.19.
PAPER_RELATIVE_MAGNITUDE = 0.19
FAR_ABOVE = 2.0  # warn above twice the paper's relative magnitude


def relative_magnitudes(layers: Mapping[str, nn.Module], adapter_name: str) -> dict[str, float]:
    """Per module, std(s B0 A0) / std(W) of a variance-matched init = s * sqrt(eta_r), with s the
    layer's own scaling (alpha / sqrt(r) under rsLoRA, alpha / r otherwise) and eta_r = ln r / ln m,
    m = min(d_out, d_in)."""
    return {name: layer.scaling[adapter_name] * math.sqrt(rank_factor(layer.r[adapter_name], layer.out_features,
                                                                      layer.in_features))
            for name, layer in layers.items()}


def warn_if_far_from_paper(model, adapter_name: str, config: InitConfig) -> float | None:
    """One warning line when a rescaled init (LoRA-GA, LoRAM, SLICE) would start with s * sqrt(eta_r)
    far above the paper's ~0.19: the absorbed initial adapter is then a large fraction of W (or
    larger), and a comparison with vanilla LoRA becomes one of magnitude, not of subspace. Returns
    the largest value over the modules (None for inits it does not apply to)."""
    if not initializers.get(config.method).rescaled or not config.rescale:
        return None
    values = relative_magnitudes(lora_layers(model, adapter_name), adapter_name)
    top = max(values.values())
    if top > FAR_ABOVE * PAPER_RELATIVE_MAGNITUDE:
        logger.warning("init %s starts with s * sqrt(ln r / ln m) up to %.2f (%s), %.0fx the paper's ~%.2f: the "
                       "initial adapter is a large share of W; lower lora_alpha (rsLoRA: alpha = 0.25 * sqrt(r), "
                       "e.g. r = 16, alpha = 1) to run at the paper's magnitude.", config.method, top,
                       max(values, key=values.get), top / PAPER_RELATIVE_MAGNITUDE, PAPER_RELATIVE_MAGNITUDE)
    return top


class RescaledInitializer:
    """Shared path of LoRAM, LoRA-GA and SLICE: per-module (Phi_B, Phi_A) -> beta -> absorb."""

    method = ""
    needs_2r = True

    def __init__(self, config: InitConfig):
        self.config = config

    def _bases(self, name: str, layer, r: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        raise NotImplementedError

    def _release(self, name: str) -> None:
        """Free what ``_bases`` would have used for module ``name`` (called on the ranks that do
        not compute that module's factors)."""

    def _finish(self, model, adapter_name: str, layers, report: InitReport) -> InitReport:
        # Multi-process, decided here and measured (`python -m torch.distributed.run --nproc_per_node
        # 2 tests/dist_worker.py bench_svd`): the factors of module i are computed by ONE rank,
        # i % world, and broadcast from it. Every rank then holds bit-identical A0, B0 by
        # construction (no reliance on the SVD being deterministic across devices), and the SVD
        # work is split across ranks. On 2 CPU processes (gloo; 28 modules of a 512/1408-wide
        # model, r = 16) this took 1.4 s, against 2.2-2.4 s for recomputing every module on
        # every rank (with or without broadcasting rank 0's result afterwards) and 1.4-1.8 s for
        # rank 0 computing everything; the broadcasts themselves (2.3 MB) took 0.06 s. The
        # surgery before this (inner products) is cheap and runs on every rank, on the
        # all-reduced gradients, which are identical on every rank.
        rank, world = distributed.rank_and_world()
        t_svd = t_abs = 0.0
        for i, (name, layer) in enumerate(layers.items()):
            r = layer.r[adapter_name]
            owner = i % world
            device = layer.lora_A[adapter_name].weight.device
            t0 = time.perf_counter()
            if rank == owner:
                bases = self._bases(name, layer, r)
            else:
                self._release(name)
                bases = None
            # the owner's verdict (1 = factors follow, 0 = zero gradient) and beta, for every rank
            head = torch.tensor([0.0 if bases is None else 1.0, 0.0], dtype=torch.float64, device=device)
            if bases is not None:
                phi_b, phi_a = (x.to(device=device, dtype=torch.float32) for x in bases)
            else:
                phi_b = torch.empty(layer.out_features, r, dtype=torch.float32, device=device)
                phi_a = torch.empty(r, layer.in_features, dtype=torch.float32, device=device)
            weight = layer.get_base_layer().weight
            # Var(W) of the full (gathered) weight; the gather is collective: every rank enters it
            with distributed.gathered([weight], modifier_rank=None):
                if bases is not None:
                    w = weight.T if getattr(layer, "fan_in_fan_out", False) else weight
                    head[1] = variance_matched_beta(w, phi_b, phi_a) if self.config.rescale else 1.0
            distributed.broadcast_tensors([head], src=owner)
            if head[0] == 0:  # zero gradient: nothing to slice
                vanilla_reset(layer, adapter_name, self.config.seed, name)
                msg = f"module {name!r}: gradient is exactly zero; fell back to the vanilla init"
                warnings.warn(msg, stacklevel=2)
                report.fallbacks.append(name)
                lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
                with distributed.gathered([lora_a, lora_b], modifier_rank=None):  # norms of the full A, B
                    report.modules[name] = module_entry(lora_a, lora_b, None, True)
                continue
            beta = float(head[1])
            b0, a0 = beta * phi_b, beta * phi_a
            distributed.broadcast_tensors([b0, a0], src=owner)
            t1 = time.perf_counter()
            write_and_absorb(layer, adapter_name, a0, b0)
            t_abs += time.perf_counter() - t1
            t_svd += t1 - t0
            report.modules[name] = module_entry(a0, b0, beta, False)
        report.timings["svd_rescale"] = t_svd
        report.timings["absorb"] = t_abs
        return report


def non_empty(batches: Batches | None) -> Batches | None:
    """None for None or an empty iterable (task 1: no previous-task data, so SLICE = LoRA-GA);
    otherwise an iterable over the same batches (a one-shot iterator is not consumed)."""
    if batches is None:
        return None
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return None
    return itertools.chain([first], it)


def build_initializer(config: InitConfig):
    """The initialiser named by ``config.method`` (registered in `slice_trl.utils.registry.initializers`)."""
    return initializers.get(config.method).obj(config)
