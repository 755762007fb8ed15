"""Continual strategies on tiny random Llamas: O-LoRA (+ SLICE), KeepLoRA, InfLoRA and SLAO over 3 tasks,
their invariants (docs/strategies.md), once-per-optimiser-step hooks under gradient accumulation,
resume of the strategy state, and bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import constant_task, lora, make_config

from slice_trl.configs.config import ContinualSFTConfig
from slice_trl.models.lora import lora_layers
from slice_trl.cli.recipe import SECTIONS
from slice_trl.strategies import StrategyConfig
from slice_trl.utils.run_folder import StageFolder
from slice_trl.strategies.olora import penalty, penalty_grad
from slice_trl.strategies.slao import merge_coefficients
from slice_trl.utils.testing import tiny_llama, tiny_tokenizer
from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

NAMES = ["yes", "no", "maybe"]
TINY_EVAL = {"max_samples": 2, "batch_size": 2, "max_new_tokens": 3}


def tasks(n=3):
    return [constant_task(name, name, n_train=8, n_eval=2, offset=100 * i) for i, name in enumerate(NAMES[:n])]


def build(tmp_path, cls=ContinualSFTTrainer, n_tasks=3, **cfg):
    cfg.setdefault("evaluation", TINY_EVAL)
    cfg.setdefault("max_length", 32)
    cfg.setdefault("init", {"method": "vanilla", "cur_steps": 1, "batch_size": 4})
    return cls(model=tiny_llama(seed=1), args=make_config(tmp_path, **cfg), tasks=tasks(n_tasks),
               peft_config=lora(), processing_class=tiny_tokenizer())


def stage(tmp_path, t):
    return tmp_path / "stages" / f"{t + 1:02d}-{NAMES[t]}"


def raw_adapter(tmp_path, t):
    return load_file(str(stage(tmp_path, t) / "adapter" / "adapter_model.safetensors"))


def _key(name, part):
    return f"base_model.model.{name}.lora_{part}.weight"


# ------------------------------------------------------------------ no strategy
def test_a_run_without_strategy_uses_the_no_op_strategy_and_leaves_no_trace(tmp_path):
    from slice_trl.strategies import NoStrategy

    trainer = build(tmp_path, n_tasks=2)
    assert type(trainer.strategy) is NoStrategy and trainer.strategy.merge == "base"
    steps = []
    trainer.strategy.pre_step = lambda ctx, model: steps.append(trainer._stage)  # its hooks run like any strategy's
    trainer.train()
    assert sorted(set(steps)) == [0, 1]
    for t in range(2):
        record = json.loads((stage(tmp_path, t) / "record.json").read_text())
        assert "strategy" not in record and "strategy_step_hooks" not in record["timings"]
        assert not (stage(tmp_path, t) / "strategy_state.safetensors").exists()  # the on-disk name


# ------------------------------------------------------------------ O-LoRA
def test_olora_penalty_gradient_equals_autograd_and_vanishes_iff_orthogonal():
    torch.manual_seed(0)
    a = torch.randn(4, 16, requires_grad=True)
    a_prev = torch.randn(8, 16)
    penalty(a, a_prev).backward()
    torch.testing.assert_close(penalty_grad(a.detach(), a_prev), a.grad, rtol=0, atol=1e-5)
    q = torch.linalg.qr(torch.randn(16, 12))[0].T  # 12 orthonormal rows
    assert float(penalty(q[:4], q[4:])) <= 1e-5
    assert float(penalty(q[:4] + 0.1 * q[4:8], q[4:])) > 0.1


@pytest.mark.parametrize("ga, n_tasks", [(1, 3), (4, 2)])
def test_slice_plus_olora_three_tasks_penalty_once_per_optimizer_step(tmp_path, ga, n_tasks):
    trainer = build(tmp_path, n_tasks=n_tasks, strategy={"name": "olora", "lambda1": 0.5},
                    init={"method": "slice", "cur_steps": 1, "prev_steps": 1, "batch_size": 4, "micro_batch_size": 4},
                    per_device_train_batch_size=4 // ga, gradient_accumulation_steps=ga)
    strategy = trainer.strategy
    original = strategy.pre_step
    calls, micro = [], []
    orig_training_step = trainer.training_step

    def counting_training_step(*args, **kwargs):
        micro.append(trainer._stage)
        return orig_training_step(*args, **kwargs)

    def checked_pre_step(tr, model):
        name, layer = next(iter(lora_layers(model, "default").items()))
        a = layer.lora_A["default"].weight
        before = a.grad.detach().clone()
        original(tr, model)
        if name in strategy.state:  # the penalty's gradient was added exactly once
            expected = 0.5 * penalty_grad(a.detach(), strategy.state[name])
            torch.testing.assert_close(a.grad - before, expected, rtol=1e-5, atol=1e-6)
        calls.append((trainer._stage, trainer.state.global_step))

    strategy.pre_step = checked_pre_step
    trainer.training_step = counting_training_step
    out = trainer.train()
    assert out.results.completed == n_tasks
    for t in range(n_tasks):  # 8 examples / 4 per optimiser step = 2 optimiser steps per stage, GA micro-steps each
        assert [s for s, _ in calls].count(t) == 2
        assert micro.count(t) == 2 * ga
        record = json.loads((stage(tmp_path, t) / "record.json").read_text())
        assert record["init"]["method"] == "slice" and record["strategy"]["name"] == "olora"
        assert record["strategy"]["report"]["steps"] == 2
        state = load_file(str(stage(tmp_path, t) / StageFolder.STRATEGY_STATE))
        assert all(v.shape == (4 * (t + 1), v.shape[1]) for v in state.values())  # r x d_in per task
        name = next(iter(state))
        torch.testing.assert_close(state[name][4 * t:], raw_adapter(tmp_path, t)[_key(name, "A")], rtol=0, atol=0)


# ------------------------------------------------------------------ KeepLoRA / InfLoRA
def _absmax(x):
    return float(x.abs().max()) if x.numel() else 0.0


class KeepRecorder(ContinualSFTTrainer):
    def initialize_adapter(self, t, replay):
        report = super().initialize_adapter(t, replay)
        layers = lora_layers(self.model, "default")
        self.seen = getattr(self, "seen", [])
        empty = torch.zeros(0, 0)
        self.seen.append({name: (self.strategy.state.get(name, empty.new_zeros(layer.in_features, 0)).clone(), layer.lora_A["default"].weight.detach().clone(),
                                 layer.get_base_layer().weight.detach().clone(),
                                 layer.lora_A["default"].weight.requires_grad)
                          for name, layer in layers.items()})
        return report

    def finish_stage(self, t):
        names = {f"{n}.weight" for n in self.seen[-1]}
        super().finish_stage(t)
        weights = dict(self.model.named_parameters())
        self.after = getattr(self, "after", []) + [{n[:-7]: weights[n].detach().clone() for n in names}]


@pytest.mark.parametrize("name, scale", [("keeplora", 1.0), ("inflora", 3 ** -0.5)])
def test_subspace_strategies_three_tasks_invariants_and_resume(tmp_path, name, scale):
    """KeepLoRA and InfLoRA: A M = 0, A A^T = scale^2 I, A frozen, (W_t - W_{t-1}) M = 0, M grows;
    KeepLoRA resumed mid-run (stage 3 rerun from stage 2's state) ends with the same R, M and weights."""
    # unset init.method -> vanilla (checked first: building a config resets accelerate's state)
    assert make_config(tmp_path, strategy={"name": name}, init=None).init.method == "vanilla"
    strategy = {"name": name, "rho": 0.5, "batch_size": 4}
    trainer = build(tmp_path, KeepRecorder, strategy=strategy)
    out = trainer.train()
    assert out.results.completed == 3
    moved = 0.0
    for t in range(3):
        for name, (M, a, w_prev, a_trainable) in trainer.seen[t].items():
            assert not a_trainable
            assert _absmax(a @ M) <= 1e-5                                    # A M = 0
            assert _absmax(a @ a.T - scale ** 2 * torch.eye(a.shape[0])) <= 1e-5    # A A^T = I (scaled)
            assert _absmax(M.T @ M - torch.eye(M.shape[1])) <= 1e-5            # M orthonormal
            delta = trainer.after[t][name] - w_prev
            moved = max(moved, float(delta.norm()))
            assert float((delta @ M).norm()) <= 1e-5 * float(delta.norm()) + 1e-12
            if t:
                assert M.shape[1] >= trainer.seen[t - 1][name][0].shape[1]  # k non-decreasing
                torch.testing.assert_close(M[:, :trainer.seen[t - 1][name][0].shape[1]], trainer.seen[t - 1][name][0])
    assert moved > 0  # B trained
    assert all(trainer.strategy.state[n].shape[1] > 0 for n in trainer.seen[0])
    if name == "inflora":
        return  # resume is strategy-independent: checked once, with KeepLoRA
    final_state = {k: v.clone() for k, v in trainer.strategy.state.items()}
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    (stage(tmp_path, 2) / "record.json").unlink()  # a crash late in stage 3: its files are half there
    resumed = build(tmp_path, strategy=strategy)
    out2 = resumed.train()  # stages 1-2 rebuilt from disk with the stage-2 state, stage 3 rerun
    assert json.loads((stage(tmp_path, 2) / "record.json").read_text())["R"] == out.results.to_dict()["R"]
    assert out2.results.to_dict()["R"] == out.results.to_dict()["R"]
    for k, v in final_state.items():
        torch.testing.assert_close(resumed.strategy.state[k], v, rtol=0, atol=0)
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


def test_inflora_input_covariance_is_shared_by_modules_with_one_input_and_equals_direct_sums(monkeypatch):
    """q/k/v and gate/up read one input tensor: ONE covariance object each group, equal to the
    per-module sum of x x^T over non-padding tokens computed directly; o and down get their own."""
    from peft import get_peft_model

    from slice_trl.strategies import inflora

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(seed=0), lora())
    ids = torch.randint(3, 100, (2, 3, 7))
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0  # padding must not count
    batches = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    monkeypatch.setattr(inflora, "probe_batches", lambda *a: batches)
    covs = inflora.input_covariance(None, 0, model, 1.0, 3)

    direct, handles = {}, []
    for name, layer in lora_layers(model, "default").items():
        def hook(_m, inputs, _o, name=name):
            x = inputs[0].detach().float()[state["mask"]]  # (non-padding tokens, d_in)
            direct[name] = direct.get(name, 0) + x.T @ x
        handles.append(layer.get_base_layer().register_forward_hook(hook))
    state = {}
    with torch.no_grad():
        for b in batches:
            state["mask"] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
    for h in handles:
        h.remove()
    tokens = int(mask.sum())
    assert covs.keys() == direct.keys()
    for name, c in covs.items():
        torch.testing.assert_close(c, direct[name] / tokens, rtol=0, atol=0)
    layers = {name.rsplit(".", 2)[0] for name in covs}
    assert len(layers) >= 2
    for layer in layers:
        def obj(module):
            return covs[f"{layer}.{module}"]
        assert obj("self_attn.q_proj") is obj("self_attn.k_proj") is obj("self_attn.v_proj")
        assert obj("mlp.gate_proj") is obj("mlp.up_proj")
        assert len({id(obj(m)) for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj",
                                         "mlp.down_proj")}) == 4


# ------------------------------------------------------------------ SLAO
class SlaoRecorder(ContinualSFTTrainer):
    def initialize_adapter(self, t, replay):
        report = super().initialize_adapter(t, replay)
        self.inits = getattr(self, "inits", []) + [{
            name: (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone())
            for name, layer in lora_layers(self.model, "default").items()}]
        return report


def test_slao_three_tasks_adapter_space_merge(tmp_path):
    reference = tiny_llama(seed=1)
    trainer = build(tmp_path, SlaoRecorder, strategy={"name": "slao"})
    out = trainer.train()
    assert out.results.completed == 3
    layers = lora_layers(trainer.model, "default")
    ref_modules = dict(reference.named_modules())
    for name, layer in layers.items():  # W0 bitwise unchanged
        assert torch.equal(layer.get_base_layer().weight, ref_modules[name].weight)
    ref_params = dict(reference.named_parameters())
    for pname, p in trainer.model.get_base_model().named_parameters():
        if "lora_" not in pname and "base_layer" not in pname:
            assert torch.equal(p, ref_params[pname])
    coeffs = merge_coefficients(3)
    assert sum(coeffs) == pytest.approx(1.0)
    trained = [raw_adapter(tmp_path, t) for t in range(3)]
    for t in (1, 2):
        for name, (a_init, b_init) in trainer.inits[t].items():
            a_prev, b_prev = trained[t - 1][_key(name, "A")], trained[t - 1][_key(name, "B")]
            assert (a_init @ a_init.T - torch.eye(a_init.shape[0])).abs().max() <= 1e-5
            torch.testing.assert_close(a_prev @ a_init.T @ a_init, a_prev, rtol=0, atol=1e-5)  # same row space
            assert torch.equal(b_init, b_prev)
    for name, layer in layers.items():  # deployed = W0 + s B_mg A_mg, B_mg = sum_j c_j B_j
        b_mg = sum(c * trained[j][_key(name, "B")] for j, c in enumerate(coeffs))
        torch.testing.assert_close(layer.lora_B["default"].weight.detach(), b_mg, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.lora_A["default"].weight.detach(), trained[2][_key(name, "A")])
    s1, s3 = (load_file(str(stage(tmp_path, t) / StageFolder.STRATEGY_STATE)) for t in (0, 2))
    assert {k: v.shape for k, v in s1.items()} == {k: v.shape for k, v in s3.items()}  # constant state
    deployed = load_file(str(stage(tmp_path, 2) / "adapter_original_base" / "adapter_model.safetensors"))
    name = next(iter(layers))
    torch.testing.assert_close(deployed[_key(name, "B")], s3[f"{name}.B_mg"])
    (stage(tmp_path, 2) / "record.json").unlink()  # a crash late in stage 3: resume reruns it from stage 2's state
    resumed = build(tmp_path, strategy={"name": "slao"})
    assert resumed.train().results.to_dict()["R"] == out.results.to_dict()["R"]
    for name, layer in lora_layers(resumed.model, "default").items():
        assert torch.equal(layer.lora_B["default"].weight, layers[name].lora_B["default"].weight)
        assert torch.equal(layer.get_base_layer().weight, ref_modules[name].weight)


# ------------------------------------------------------------------ bad input
def test_unknown_strategy_suggests_close_name(tmp_path):
    with pytest.raises(ValueError, match=r"strategy.name='keeplor' is unknown \(no such strategy\)\. Did you mean 'keeplora'"):
        make_config(tmp_path, strategy={"name": "keeplor"})
    with pytest.raises(ValueError, match="Did you mean 'lambda1'"):
        make_config(tmp_path, strategy={"name": "olora", "lamda1": 1.0})
    assert SECTIONS["strategy"] is StrategyConfig
    with pytest.raises(ValueError, match=r"strategy.name='slaoo' is unknown \(no such strategy\)\. Did you mean 'slao'"):
        StrategyConfig.from_dict({"name": "slaoo"})


@pytest.mark.parametrize("name", ["keeplora", "slao", "inflora", "eblora"])
def test_strategy_with_own_init_rejects_conflicting_initialiser(tmp_path, name):
    with pytest.raises(ValueError, match=f"strategy '{name}'.*init.method='slice'.*Set init.method to 'vanilla'"):
        make_config(tmp_path, strategy={"name": name}, init={"method": "slice"})
    cfg = make_config(tmp_path, strategy={"name": "olora"}, init={"method": "loram"})  # O-LoRA composes
    assert cfg.init.method == "loram" and cfg.to_dict()["strategy"]["name"] == "olora"
    assert isinstance(ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True), ContinualSFTConfig)


def test_keeplora_rank_larger_than_free_subspace_is_an_error(tmp_path):
    trainer = build(tmp_path, n_tasks=1, strategy={"name": "keeplora", "eps_w": 1.0, "cap": 64, "batch_size": 4})
    with pytest.raises(ValueError, match=r"free subspace has dimension d_in - k = 64 - 64 = 0 < r = 4"):
        trainer.train()


# ------------------------------------------------------------------ EBLoRA
def test_eblora_tangent_projection_and_retraction_closed_form():
    from slice_trl.strategies.eblora import polar, retract_rows, tangent_cols, tangent_rows

    torch.manual_seed(0)
    F = torch.linalg.qr(torch.randn(20, 5))[0]                       # protected input subspace
    a = polar(torch.randn(3, 20) - torch.randn(3, 20) @ F @ F.T)       # orthonormal rows off F
    a = polar(a - (a @ F) @ F.T)
    g = torch.randn(3, 20)
    xi = tangent_rows(a, g, F)
    assert _absmax(a @ xi.T + xi @ a.T) <= 1e-5   # tangent to the Stiefel manifold at V = a^T
    assert _absmax(xi @ F) <= 1e-5                 # and to F^T V = 0
    torch.testing.assert_close(tangent_rows(a, xi, F), xi, rtol=0, atol=1e-5)  # a projection
    assert _absmax(tangent_rows(a, a, F)) <= 1e-5  # the normal direction a itself is removed
    new = retract_rows(a, 0.3 * g, F)
    assert _absmax(new @ new.T - torch.eye(3)) <= 1e-5 and _absmax(new @ F) <= 1e-5
    torch.testing.assert_close(retract_rows(a, torch.zeros_like(a), F), a, rtol=0, atol=1e-5)
    u = polar(torch.randn(12, 3))
    gu = tangent_cols(u, torch.randn(12, 3))
    assert _absmax(u.T @ gu + gu.T @ u) <= 1e-5


class EBRecorder(ContinualSFTTrainer):
    probe = torch.arange(3, 15).reshape(2, 6)

    def _logits(self):
        with torch.no_grad():
            return self.model(input_ids=self.probe).logits.float()

    def initialize_adapter(self, t, replay):
        self.before = self._logits()
        report = super().initialize_adapter(t, replay)
        self.init_gap = max(getattr(self, "init_gap", 0.0), float((self._logits() - self.before).abs().max()))
        if not hasattr(self, "checks"):
            self.checks = []
            strategy, original, original_bt = self.strategy, self.strategy.post_step, self.strategy.before_training

            def checked_before_training(tr, t):  # U and sigma swapped in: still the same function
                original_bt(tr, t)
                self.init_gap = max(self.init_gap, float((self._logits() - self.before).abs().max()))
                assert any(n.endswith("eb_sigma") for n, p in tr.model.named_parameters() if p.requires_grad)

            strategy.before_training = checked_before_training

            def checked_post_step(tr, model):  # the invariants after EVERY optimiser step
                original(tr, model)
                for name, layer in lora_layers(model, "default").items():
                    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
                    F = strategy.state.get(name, torch.zeros(a.shape[1], 0))
                    self.checks.append((self._stage, _absmax(a @ a.T - torch.eye(a.shape[0])),
                                        _absmax(b.T @ b - torch.eye(b.shape[1])), _absmax(a @ F), F.shape[1]))

            strategy.post_step = checked_post_step
        return report

    def finish_stage(self, t):
        super().finish_stage(t)
        if t == 0:
            self.after_first = self._logits()


def test_eblora_three_tasks_stiefel_invariants_every_step_and_equal_singular_values(tmp_path):
    trainer = build(tmp_path, EBRecorder, strategy={"name": "eblora", "rho": 0.5, "batch_size": 4, "sigma_init": -0.01},
                    learning_rate=1e-2)
    out = trainer.train()
    assert out.results.completed == 3
    assert trainer.init_gap <= 1e-4                              # the init leaves the outputs unchanged
    n_modules = len(json.loads((stage(tmp_path, 0) / "record.json").read_text())["strategy"]["report"]["sigma"])
    assert [t for t, *_ in trainer.checks] == [t for t in range(3) for _ in range(2 * n_modules)]  # 2 steps per stage
    assert max(c[1] for c in trainer.checks) <= 1e-5              # V^T V = I
    assert max(c[2] for c in trainer.checks) <= 1e-5              # U^T U = I
    assert max(c[3] for c in trainer.checks) <= 1e-5              # F^T V = 0
    assert max(c[4] for c in trainer.checks if c[0] == 2) > 0     # F was non-empty for the later tasks
    scale = lora().lora_alpha / lora().r ** 0.5  # rsLoRA
    for t in range(3):
        record = json.loads((stage(tmp_path, t) / "record.json").read_text())
        sigmas = record["strategy"]["report"]["sigma"]
        raw = raw_adapter(tmp_path, t)                             # plain PEFT: sigma folded into B
        moved = 0
        for name, sigma in sigmas.items():
            sv = torch.linalg.svdvals(scale * raw[_key(name, "B")] @ raw[_key(name, "A")])
            torch.testing.assert_close(sv[:4], torch.full((4,), abs(scale * sigma)), rtol=1e-4, atol=1e-7)
            moved += sigma != -0.01
        assert moved                                                # sigma trained
    F = trainer.strategy.state
    assert all(_absmax(m.T @ m - torch.eye(m.shape[1])) <= 1e-5 for m in F.values())
    from peft import PeftModel  # the published stage 1 loads with plain PEFT on the original base

    loaded = PeftModel.from_pretrained(tiny_llama(seed=1), str(stage(tmp_path, 0) / "adapter_original_base"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=EBRecorder.probe).logits.float(), trainer.after_first,
                                   rtol=0, atol=1e-4)
