"""InfLoRA (Liang and Li, 2024), for decoder LLMs: A from the input covariance projected away
from earlier tasks' input subspace, frozen; B = 0 trains.

Before task t: C_t = mean over non-padding tokens of x x^T for each target module's input
(through the current model, on a fraction rho of the task's train examples); A = the top-r left
singular vectors of (I - M M^T) C_t, transposed, scaled by ``a_scale`` (1/sqrt(3)); B = 0;
A frozen. After task t: C_t recomputed on the trained model; M <- extend(M, C_t^{1/2}, eps_t)
(C^{1/2} = V diag(sqrt(lambda)): the features' energy), eps_t rising linearly from eps_start to
eps_end over the sequence. Not implemented: storing the complement once k > d_in / 2 (M is
capped at d_in - r instead)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from slice_trl.kernels.subspace import extend, orthonormal_rows_outside
from slice_trl.models.lora import ADAPTER, eval_mode, lora_layers, write_and_absorb
from slice_trl.strategies.base import Strategy, StrategyConfig, check_config_fields, probe_batches, register


@dataclass
class InfLoRAConfig(StrategyConfig):
    """InfLoRA settings."""

    name: str = field(default="inflora", metadata={"help": "'inflora'."})
    eps_start: float = field(default=0.95, metadata={"help": "Subspace energy threshold after the first task."})
    eps_end: float = field(default=1.0, metadata={"help": "Threshold after the last task (linear in between)."})
    rho: float = field(default=0.2, metadata={"help": "Fraction of the task's train examples (evenly spaced) "
                                                     "for the input covariance."})
    batch_size: int = field(default=8, metadata={"help": "Examples per covariance forward pass."})
    a_scale: float = field(default=3 ** -0.5, metadata={"help": "Scale of the orthonormal rows of A (1/sqrt(3))."})

    def __post_init__(self):
        check_config_fields(self)
        if self.eps_end < self.eps_start:
            raise ValueError(f"InfLoRAConfig.eps_end={self.eps_end} must be >= eps_start={self.eps_start}.")
        if int(self.batch_size) < 1 or not self.a_scale > 0:
            raise ValueError("InfLoRAConfig.batch_size must be >= 1 and a_scale > 0.")


@torch.no_grad()
def input_covariance(ctx, t: int, model, rho: float, batch_size: int) -> dict[str, torch.Tensor]:
    """{module: mean over non-padding tokens of x x^T (d_in x d_in, fp32)} of each LoRA layer's input.

    Modules called on the same input tensor (a Llama's q/k/v and gate/up projections) get ONE
    matrix, computed once per batch and returned as the same tensor object under each name, so
    that callers can also decompose it once (``_Memo``). Sharing is decided by object identity
    in every forward pass (a weak reference, so a freed input whose address is reused never
    matches); modules whose input is a fresh tensor each time simply get their own matrix."""
    batches = probe_batches(ctx, t, rho, batch_size)
    layers = lora_layers(model, ADAPTER)
    acc: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}  # module -> the module whose input it shares (decided in the first batch)
    # seen (per forward): id(x) -> (weakref(x), the first module called on x); no tensors are held
    state = {"mask": None, "tokens": 0, "seen": {}, "batch": 0}

    def hook_for(name):
        def hook(_module, inputs, _output):
            x = inputs[0]
            hit = state["seen"].get(id(x))
            same = hit is not None and hit[0]() is x
            if name in alias:
                if not (same and hit[1] == alias[name]):
                    raise RuntimeError(f"InfLoRA input covariance: {name} shared its input with {alias[name]} in "
                                       f"the first batch but not in batch {state['batch']}.")
                return
            if same and state["batch"] == 0:
                alias[name] = hit[1]
                return
            if not same:
                state["seen"][id(x)] = (weakref.ref(x), name)
            xf = x.detach().float()
            xf = xf[state["mask"]] if state["mask"] is not None else xf.reshape(-1, xf.shape[-1])
            acc[name] = acc.get(name, 0) + xf.T @ xf
        return hook

    handles = [layer.get_base_layer().register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        with eval_mode(model):
            device = next(model.parameters()).device
            for b, batch in enumerate(batches):
                ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask", torch.ones_like(ids)).to(device).bool()
                state.update(mask=mask, seen={}, batch=b)
                state["tokens"] += int(mask.sum())
                model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    covs = {name: c / max(1, state["tokens"]) for name, c in acc.items()}
    return {name: covs[alias.get(name, name)] for name in layers if alias.get(name, name) in covs}


class _Memo:
    """Results keyed by the covariance object they came from and the module's basis M: modules
    that share an input (and so far the same M) get the result computed once, bitwise the same."""

    def __init__(self):
        self._store: dict[tuple, tuple[torch.Tensor | None, object]] = {}

    def get(self, cov: torch.Tensor, M: torch.Tensor | None, *extra, compute):
        key = (id(cov), *extra)
        hit = self._store.get(key)
        if hit is not None and (hit[0] is None) == (M is None) and (
                M is None or (hit[0].shape == M.shape and torch.equal(hit[0], M))):
            return hit[1], True
        value = compute()
        self._store[key] = (M, value)
        return value, False


def _sqrt_psd(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c.double())
    return (vecs * vals.clamp_min(0).sqrt()).float()


@register
class InfLoRA(Strategy):
    name = "inflora"
    config_cls = InfLoRAConfig
    defines_init = True
    merge = "base"

    def before_task(self, ctx, t, peft_model):
        cfg = self.config
        covs = input_covariance(ctx, t, peft_model, cfg.rho, cfg.batch_size)
        self.report = {"k_before": {}}
        memo = _Memo()
        with torch.no_grad():
            for name, layer in lora_layers(peft_model, ADAPTER).items():
                lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                M = self.state.get(name)
                M = None if M is None else M.to(lora_a.device)
                self.report["k_before"][name] = 0 if M is None else int(M.shape[1])
                r = layer.r[ADAPTER]
                a, _ = memo.get(covs[name], M, r, compute=lambda: cfg.a_scale * orthonormal_rows_outside(
                    M, covs[name], r, where=f"InfLoRA {name}"))
                write_and_absorb(layer, ADAPTER, a.to(lora_a.device), torch.zeros_like(lora_b))
                lora_a.requires_grad_(False)

    def after_task(self, ctx, t):
        cfg = self.config
        n = len(ctx.tasks)
        eps = cfg.eps_start + (cfg.eps_end - cfg.eps_start) * (t / (n - 1) if n > 1 else 1.0)
        covs = input_covariance(ctx, t, ctx.model, cfg.rho, cfg.batch_size)
        self.report["extend"] = {}
        roots, extended = _Memo(), _Memo()
        for name, layer in lora_layers(ctx.model, ADAPTER).items():
            M, cov, cap = self.state.get(name), covs[name], layer.in_features - layer.r[ADAPTER]
            root, _ = roots.get(cov, None, compute=lambda: _sqrt_psd(cov))
            (M_new, info), shared = extended.get(cov, M, cap, compute=lambda: extend(M, root, eps, cap))
            # a state entry of its own: safetensors refuses tensors that share memory
            self.state[name] = M_new.cpu().clone() if shared else M_new.cpu()
            self.report["extend"][name] = dict(info)
