"""EBLoRA (Gu et al., 2026): every singular value of the update equal, the input side kept off
earlier tasks' gradient subspace.

Parametrisation per module: delta W = s * sigma * U V^T with U = lora_B.weight on the Stiefel
manifold St(d_out, r), V = lora_A.weight^T on St(d_in, r) restricted to F^T V = 0, and sigma a
learnable scalar (``eb_sigma`` on the LoRA layer, applied by a forward hook on lora_B; it is
folded into lora_B before the adapter is saved, so saved adapters are plain PEFT).

- Before task t: G_t by the gradient probe on a fraction rho of the task (at the current merged
  weights; the authors' code takes it at the pretrained ones); A = top-r left singular vectors of
  (I - F F^T) G_t^T, transposed; U = the matching output directions, orthonormal; sigma =
  sigma_init. The initial adapter (A, sigma_init U) is absorbed into the base and saved; right
  before training lora_B becomes U and sigma a parameter, so the function is unchanged.
  F_next = extend(F, G_t^T, eps) is computed here and committed after the task.
- Each optimiser step: before it, Euclidean -> Riemannian gradients (V: g <- (I - F F^T) g, then
  g <- g - V sym(V^T g); U alike without F); after it, the change is projected onto the tangent
  space (and off F for V) and retracted with the polar decomposition. fp32 throughout.
- After task t: sigma folded into B, merge into the base, F <- F_next.

Not done here: the authors multiply the number of steps by sqrt(4096 / r); set the epochs in the
recipe instead. Runs on one process or DDP, not under DeepSpeed (`base.engine_problem`: the
gradient edit of ``pre_step`` would come after DeepSpeed's optimiser step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slice_trl.kernels.subspace import extend, orthonormal_rows_outside, project_out
from slice_trl.models.lora import ADAPTER, lora_layers, write_and_absorb
from slice_trl.strategies.base import ProbeConfig, Strategy, register, task_gradient

SIGMA = "eb_sigma"  # not containing "lora_": PEFT's adapter state dict must not pick it up


@dataclass
class EBLoRAConfig(ProbeConfig):
    """EBLoRA settings (defaults: the paper's; weight decay 0.1 and lr 2e-4 belong in the recipe)."""

    name: str = field(default="eblora", metadata={"help": "'eblora'."})
    eps: float = field(default=0.99, metadata={"help": "Energy of each task's gradient added to the subspace F."})
    sigma_init: float = field(default=0.0, metadata={"help": "Initial sigma (0: the update starts at zero)."})

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.sigma_init, (int, float)):
            raise ValueError(f"EBLoRAConfig.sigma_init={self.sigma_init!r} must be a number.")


def sym(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + x.T)


def polar(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor U' V'^T of x (m x n, any orientation), in fp32."""
    u, _, vh = torch.linalg.svd(x.float(), full_matrices=False)
    return u @ vh


def tangent_rows(a: torch.Tensor, g: torch.Tensor, F: torch.Tensor | None = None) -> torch.Tensor:
    """Project g (r x d_in) onto the tangent space at a (orthonormal rows, r x d_in) of the Stiefel
    manifold of V = a^T, restricted to F^T V = 0 (F: d_in x k):
        g <- g (I - F F^T);  g <- g - sym(a g^T) a.
    The result xi satisfies a xi^T + xi a^T = 0 and xi F = 0."""
    g = g.float()
    if F is not None and F.shape[1]:
        g = project_out(F, g.T).T
    return g - sym(a.float() @ g.T) @ a.float()


def tangent_cols(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Tangent projection for U (d_out x r, orthonormal columns): g - U sym(U^T g)."""
    return tangent_rows(u.T, g.T).T


def retract_rows(a: torch.Tensor, step: torch.Tensor, F: torch.Tensor | None = None) -> torch.Tensor:
    """The retraction of an optimiser step: the change ``step`` (r x d_in) projected onto the
    tangent space at a (and off F), then the polar factor of a + step, kept off F."""
    x = a.float() + tangent_rows(a, step, F)
    if F is not None and F.shape[1]:
        x = project_out(F, x.T).T
    return polar(x)


@register
class EBLoRA(Strategy):
    name = "eblora"
    config_cls = EBLoRAConfig
    defines_init = True
    merge = "base"
    edits_gradients = True

    def before_task(self, ctx, t, peft_model):
        cfg = self.config
        self._layers = lora_layers(peft_model, ADAPTER)
        self._pending, self._old, self._hooks, self._unit_b = {}, {}, [], {}
        self.report = {"k_before": {}, "extend": {}, "steps": 0, "max_orthonormality_error": 0.0,
                       "max_F_leak": 0.0, "sigma": {}}
        grads = task_gradient(ctx, t, peft_model, cfg.rho, cfg.batch_size, cfg.micro_batch_size)
        with torch.no_grad():
            for name, layer in self._layers.items():
                lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                g = grads.pop(name)  # (d_out, d_in)
                F = self.state.get(name)
                F = None if F is None else F.to(g.device)
                self.report["k_before"][name] = 0 if F is None else int(F.shape[1])
                a = orthonormal_rows_outside(F, g.T, layer.r[ADAPTER], where=f"EBLoRA {name}")
                b = polar(g @ a.T)  # G' V = Q S for the top directions: its polar factor is Q
                # the initial adapter is (A, sigma0 U): absorbed into the base and saved as such;
                # before training lora_B becomes the unit U and sigma0 moves into eb_sigma
                write_and_absorb(layer, ADAPTER, a.to(lora_a.device), (cfg.sigma_init * b).to(lora_b.device))
                self._unit_b[name] = b
                F_next, info = extend(F, g.T, cfg.eps, cfg.cap_for(layer))
                self._pending[name] = F_next.cpu()
                self.report["extend"][name] = info

    @torch.no_grad()
    def before_training(self, ctx, t):
        for name, layer in self._layers.items():
            lora_b = layer.lora_B[ADAPTER].weight
            lora_b.data.copy_(self._unit_b.pop(name).to(lora_b.device, lora_b.dtype))
            self._add_sigma(layer, float(self.config.sigma_init))

    def _add_sigma(self, layer, value: float) -> None:
        lora_b = layer.lora_B[ADAPTER]
        sigma = torch.nn.Parameter(torch.tensor(value, dtype=torch.float32, device=lora_b.weight.device))
        layer.register_parameter(SIGMA, sigma)
        self._hooks.append(lora_b.register_forward_hook(lambda _m, _inp, out: out * sigma.to(out.dtype)))

    def _F(self, name, device):
        F = self.state.get(name)
        return None if F is None else F.to(device)

    @torch.no_grad()
    def pre_step(self, ctx, model):
        for name, layer in self._layers.items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            self._old[name] = (a.detach().float().clone(), b.detach().float().clone())
            if a.grad is not None:
                a.grad.copy_(tangent_rows(a, a.grad, self._F(name, a.device)).to(a.grad.dtype))
            if b.grad is not None:
                b.grad.copy_(tangent_cols(b, b.grad).to(b.grad.dtype))

    @torch.no_grad()
    def post_step(self, ctx, model):
        err, leak = 0.0, 0.0
        for name, layer in self._layers.items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            a_old, b_old = self._old.pop(name)
            F = self._F(name, a.device)
            a_new = retract_rows(a_old, a.detach().float() - a_old, F)
            b_new = retract_rows(b_old.T, b.detach().float().T - b_old.T).T
            a.data.copy_(a_new.to(a.dtype))
            b.data.copy_(b_new.to(b.dtype))
            eye = torch.eye(a_new.shape[0], device=a.device)
            err = max(err, float((a_new @ a_new.T - eye).abs().max()), float((b_new.T @ b_new - eye).abs().max()))
            if F is not None and F.shape[1]:
                leak = max(leak, float((a_new @ F).abs().max()))
        self.report["steps"] += 1
        self.report["max_orthonormality_error"] = max(self.report["max_orthonormality_error"], err)
        self.report["max_F_leak"] = max(self.report["max_F_leak"], leak)

    @torch.no_grad()
    def before_save(self, ctx, t):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for name, layer in lora_layers(ctx.model, ADAPTER).items():
            sigma = layer._parameters.pop(SIGMA)
            self.report["sigma"][name] = float(sigma)
            lora_b = layer.lora_B[ADAPTER].weight
            lora_b.data.mul_(sigma.detach().to(lora_b.dtype))  # delta W = s (sigma B) A: plain LoRA

    def after_task(self, ctx, t):
        self.state.update(self._pending)
        self._pending = {}
