"""KeepLoRA (Luo et al., 2026): each task's update lives in the residual input subspace, away
from W0's principal input directions and earlier tasks' dominant gradient directions.

Before task 1: M = extend(empty, W0^T, eps_w). Before task t: G_t by the gradient probe on a
fraction rho of the task; A = top-r left singular vectors of (I - M M^T) G_t^T, transposed
(orthonormal rows, A M = 0); B = 0; A frozen, only B trains. After task t: G_t recomputed at the
trained weights on the same subset; M <- extend(M, (I - M M^T) G_t^T, eps_task). The trainer
then merges into the base."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from slice_trl.kernels.subspace import extend, orthonormal_rows_outside, project_out
from slice_trl.models.lora import ADAPTER, lora_layers, write_and_absorb
from slice_trl.strategies.base import ProbeConfig, Strategy, register, task_gradient

logger = logging.getLogger(__name__)


@dataclass
class KeepLoRAConfig(ProbeConfig):
    """KeepLoRA settings (defaults: the paper's LLaVA recipe)."""

    name: str = field(default="keeplora", metadata={"help": "'keeplora'."})
    eps_w: float = field(default=0.6, metadata={"help": "Energy of W0^T kept in M before task 1."})
    eps_task: float = field(default=0.99, metadata={"help": "Energy of each task's projected gradient added to M."})


@register
class KeepLoRA(Strategy):
    name = "keeplora"
    config_cls = KeepLoRAConfig
    defines_init = True
    merge = "base"

    @torch.no_grad()
    def _extend(self, name, layer, R, eps):
        M, info = extend(self.state.get(name), R, eps, self.config.cap_for(layer))
        self.state[name] = M.cpu()
        if info["capped"]:
            logger.warning("KeepLoRA: module %s: subspace capped at k=%d", name, info["k"])
        return info

    def before_task(self, ctx, t, peft_model):
        layers = lora_layers(peft_model, ADAPTER)
        self.report = {"k_before": {}, "extend_w0": {}}
        if t == 0 and not self.state:
            for name, layer in layers.items():
                w = layer.get_base_layer().weight
                self.report["extend_w0"][name] = self._extend(name, layer, w.detach().float().T, self.config.eps_w)
        cfg = self.config
        grads = task_gradient(ctx, t, peft_model, cfg.rho, cfg.batch_size, cfg.micro_batch_size)
        with torch.no_grad():
            for name, layer in layers.items():
                lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                M = self.state.get(name)
                M = None if M is None else M.to(lora_a.device)
                self.report["k_before"][name] = 0 if M is None else int(M.shape[1])
                a = orthonormal_rows_outside(M, grads.pop(name).T, layer.r[ADAPTER], where=f"KeepLoRA {name}")
                write_and_absorb(layer, ADAPTER, a.to(lora_a.device), torch.zeros_like(lora_b))
                lora_a.requires_grad_(False)  # frozen: every B step stays inside span(A), orthogonal to M

    def after_task(self, ctx, t):
        cfg = self.config
        peft_model = ctx.model
        layers = lora_layers(peft_model, ADAPTER)
        grads = task_gradient(ctx, t, peft_model, cfg.rho, cfg.batch_size, cfg.micro_batch_size)
        self.report["extend_task"] = {}
        for name, layer in layers.items():
            g = grads.pop(name)
            M = self.state.get(name)
            self.report["extend_task"][name] = self._extend(
                name, layer, project_out(None if M is None else M.to(g.device), g.T), cfg.eps_task)
