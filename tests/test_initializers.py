"""The initialisers (SLICE, LoRA-GA, LoRAM, vanilla), weight absorption and their error paths.

Facts checked: the model's function is unchanged by every initialiser; SLICE with c = 0 or no
previous-task data is bit-for-bit LoRA-GA; SLICE's factors are the LoRA-GA slices of the
PCGrad-reconciled gradient computed here by hand; Var(B0 A0) = eta_r Var(W); absorption uses the
layer's real scaling; bad input fails before any work; zero gradients fall back to vanilla.
"""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from slice_trl import initializers as init_mod
from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches
from slice_trl.configs.config import InitConfig
from slice_trl.initializers import (
    LoraGAInitializer,
    LoramInitializer,
    SliceInitializer,
    VanillaInitializer,
    build_initializer,
)
from slice_trl.models.lora import lora_layers, write_and_absorb
from slice_trl.kernels.decompose import lora_ga_slices, module_seed
from slice_trl.models.gradients import DEFAULT_TARGETS, canonical_name, estimate_mean_gradients, target_weights
from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

WORDS = ["apple", "stone", "river", "cloud", "maple", "tiger", "olive", "piano"]
ADAPTER = "default"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny Llama whose two "tasks" conflict, batches through TRL's own tokenisation
# ---------------------------------------------------------------------------------------------

def _task_batches(tok, answer: str, n_batches: int, seed: int, prompt="Say: {w}"):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": prompt.format(w=w)}],
             "completion": [{"role": "assistant", "content": answer}]} for w in WORDS]
    prepared = prepare_sft_dataset(Dataset.from_list(rows), tok, max_length=64)
    return sample_batches(prepared, default_collator(tok), batch_size=4, n_batches=n_batches, seed=seed)


@pytest.fixture(scope="module")
def data():
    """cur: answer 'x' * 16; prev_conflict: answer 'z' * 16 where the LM-head row of 'z' is made
    partly opposite to that of 'x' (so the two gradients conflict); prev_agree: the current task
    itself, other batches (no conflict)."""
    import datasets

    datasets.disable_progress_bars()
    tok = tiny_tokenizer()
    return {
        "tok": tok,
        "cur": _task_batches(tok, "x" * 16, 2, seed=1),
        "prev_conflict": _task_batches(tok, "z" * 16, 2, seed=0),
        "prev_agree": _task_batches(tok, "x" * 16, 2, seed=5, prompt="Repeat: {w}"),
        "probe": _task_batches(tok, "x" * 16, 1, seed=9, prompt="Echo {w}!")[0],
    }


@pytest.fixture(scope="module")
def base_model(data):
    model = tiny_llama(seed=0)
    x, z = data["tok"].convert_tokens_to_ids(["x", "z"])
    with torch.no_grad():
        w = model.lm_head.weight
        w[z] = -0.6 * w[x] + 0.8 * w[z]
    return model


def _peft(base_model, r=4, alpha=8, rslora=False, targets=DEFAULT_TARGETS, **kw):
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, lora_dropout=0.0, target_modules=list(targets), **kw)
    return get_peft_model(copy.deepcopy(base_model), cfg)


def _cfg(method="slice", **kw):
    kw = {"cur_steps": 2, "prev_steps": 2, "batch_size": 4, "micro_batch_size": 2, **kw}
    return InitConfig(method=method, **kw)


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _factors(model):
    return {name: (layer.lora_B[ADAPTER].weight.detach().clone(), layer.lora_A[ADAPTER].weight.detach().clone())
            for name, layer in lora_layers(model, ADAPTER).items()}


def _base_weights(model):
    return {name: layer.get_base_layer().weight.detach().clone() for name, layer in lora_layers(model, ADAPTER).items()}


def _subspace_cos(x, y):
    """Mean cosine of the principal angles between the column spaces of x and y."""
    qx, _ = torch.linalg.qr(x.double())
    qy, _ = torch.linalg.qr(y.double())
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(max=1).mean())


def _run(base_model, data, method, prev="prev_conflict", **kw):
    model = _peft(base_model, **{k: kw.pop(k) for k in ("r", "alpha", "rslora", "targets") if k in kw})
    report = build_initializer(_cfg(method, **kw))(model, ADAPTER, data["cur"], data[prev] if prev else None)
    return model, report


# ---------------------------------------------------------------------------------------------
# function preserved
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["slice", "lora_ga", "loram", "vanilla"])
@pytest.mark.parametrize("rslora", [False, True])
def test_function_is_preserved(base_model, data, method, rslora):
    model = _peft(base_model, r=4, alpha=16, rslora=rslora)
    before = _logits(model, data["probe"])
    w_before = _base_weights(model)
    report = build_initializer(_cfg(method))(model, ADAPTER, data["cur"], data["prev_conflict"])
    after = _logits(model, data["probe"])
    assert (after - before).abs().max().item() <= 1e-4
    factors = _factors(model)
    if method == "vanilla":  # B = 0: nothing to absorb
        assert all(not b.any() and a.any() for b, a in factors.values())
        assert all(torch.equal(w, w_before[n]) for n, w in _base_weights(model).items())
    else:  # a real, non-zero adapter was absorbed (the check above is not vacuous)
        assert all(b.any() and a.any() for b, a in factors.values())
        assert all(not torch.equal(w, w_before[n]) for n, w in _base_weights(model).items())
    assert report.method == method and set(report.modules) == set(factors)


def test_function_is_preserved_when_an_old_adapter_is_non_zero(base_model, data):
    model = _peft(base_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model, ADAPTER).values():
            layer.lora_B[ADAPTER].weight.copy_(0.1 * torch.randn(layer.lora_B[ADAPTER].weight.shape, generator=gen))
    before = _logits(model, data["probe"])
    LoraGAInitializer(_cfg("lora_ga"))(model, ADAPTER, data["cur"])
    assert (_logits(model, data["probe"]) - before).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------------
# SLICE vs LoRA-GA
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_ga(base_model, data):
    model, report = _run(base_model, data, "lora_ga", prev=None)
    return _factors(model), _base_weights(model), report


def _assert_bitwise(model, reference):
    factors, weights, _ = reference
    got = _factors(model)
    assert set(got) == set(factors)
    for n, (b, a) in got.items():
        assert torch.equal(b, factors[n][0]) and torch.equal(a, factors[n][1]), n
    for n, w in _base_weights(model).items():
        assert torch.equal(w, weights[n]), n


@pytest.mark.parametrize("case", ["c0", "prev_none", "prev_empty", "prev_steps0"])
def test_slice_without_projection_is_bitwise_lora_ga(base_model, data, lora_ga, case):
    model = _peft(base_model)
    if case == "c0":
        report = SliceInitializer(_cfg(c=0.0))(model, ADAPTER, data["cur"], data["prev_conflict"])
    elif case == "prev_none":
        report = SliceInitializer(_cfg())(model, ADAPTER, data["cur"], None)
    elif case == "prev_empty":
        report = SliceInitializer(_cfg())(model, ADAPTER, data["cur"], [])
    else:
        report = SliceInitializer(_cfg(prev_steps=0))(model, ADAPTER, data["cur"], data["prev_conflict"])
    assert report.n_batches_prev == 0 and "grad_prev" not in report.timings
    _assert_bitwise(model, lora_ga)


def test_slice_is_bitwise_lora_ga_when_the_global_gate_does_not_fire(base_model, data, lora_ga):
    model = _peft(base_model)
    report = SliceInitializer(_cfg())(model, ADAPTER, data["cur"], data["prev_agree"])
    assert report.surgery["cosine"] > 0 and not report.surgery["fired"]  # precondition
    assert report.n_batches_prev == 2
    _assert_bitwise(model, lora_ga)


@pytest.mark.parametrize("projection", ["global", "per_module"])
def test_slice_factors_are_lora_ga_slices_of_the_hand_reconciled_gradient(base_model, data, lora_ga, projection):
    model = _peft(base_model)
    w0 = _base_weights(model)
    # independent pipeline: gradients of the plain model, PCGrad written out here, slicing, beta
    plain = copy.deepcopy(base_model)
    weights = target_weights(plain)
    g_prev, _ = estimate_mean_gradients(plain, data["prev_conflict"], weights)
    g_cur, _ = estimate_mean_gradients(plain, data["cur"], weights)
    dots = {n: float((g_cur[n].double() * g_prev[n].double()).sum()) for n in g_cur}
    sq = {n: float((g_prev[n].double() ** 2).sum()) for n in g_cur}
    if projection == "global":
        gamma = -sum(dots.values()) / sum(sq.values()) if sum(dots.values()) < 0 else 0.0
        gammas = {n: gamma for n in g_cur}
        assert gamma > 0  # precondition: the conflict is real
    else:
        gammas = {n: (-dots[n] / sq[n] if dots[n] < 0 else 0.0) for n in g_cur}
        assert any(gm > 0 for gm in gammas.values())
    report = SliceInitializer(_cfg(projection=projection))(model, ADAPTER, data["cur"], data["prev_conflict"])
    assert report.surgery["fired"] and report.surgery["cosine"] < 0
    if projection == "global":
        assert report.surgery["gamma"] == pytest.approx(gammas[next(iter(gammas))], rel=1e-6)
    got = _factors(model)
    for n, (b, a) in got.items():
        g = g_cur[n] + gammas[n] * g_prev[n]
        phi_b, phi_a = lora_ga_slices(g, 4, 4, 4, seed=module_seed(42, n))
        assert _subspace_cos(b, phi_b) > 0.9999, n
        assert _subspace_cos(a.T, phi_a.T) > 0.9999, n
        # beta: Var(B0 A0) = eta_r Var(W) with W the weight before absorption
        eta_r = math.log(4) / math.log(min(w0[n].shape))
        assert float(torch.var(b.double() @ a.double())) == pytest.approx(eta_r * float(torch.var(w0[n].double())), rel=1e-3)
    # SLICE moved away from LoRA-GA (the projection changed the init)
    ga = lora_ga[0]
    assert min(_subspace_cos(got[n][1].T, ga[n][1].T) for n in got) < 0.99


# ---------------------------------------------------------------------------------------------
# rescaling, orthogonality
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["slice", "lora_ga", "loram"])
def test_variance_matched_and_orthogonal_factors(base_model, data, method):
    model = _peft(base_model, r=4)
    w0 = _base_weights(model)
    report = build_initializer(_cfg(method))(model, ADAPTER, data["cur"], data["prev_conflict"])
    for n, (b, a) in _factors(model).items():
        m = min(w0[n].shape)
        eta_r = math.log(4) / math.log(m)
        var_ba = float(torch.var(b.double() @ a.double()))
        assert var_ba == pytest.approx(eta_r * float(torch.var(w0[n].double())), rel=1e-3), n
        beta = report.modules[n]["beta"]
        eye = torch.eye(4, dtype=torch.float64)
        torch.testing.assert_close(b.double().T @ b.double(), beta**2 * eye, rtol=0, atol=1e-5 * beta**2)
        torch.testing.assert_close(a.double() @ a.double().T, beta**2 * eye, rtol=0, atol=1e-5 * beta**2)
        assert report.modules[n]["fallback"] is False


def test_rescale_off_gives_orthonormal_factors(base_model, data):
    model, report = _run(base_model, data, "loram", rescale=False)
    for n, (b, a) in _factors(model).items():
        torch.testing.assert_close(b.T @ b, torch.eye(4), rtol=0, atol=1e-5)
        assert report.modules[n]["beta"] == 1.0


# ---------------------------------------------------------------------------------------------
# absorption
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rslora, expected_s", [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_absorption_uses_the_layers_real_scaling(base_model, rslora, expected_s):
    model = _peft(base_model, r=4, alpha=16, rslora=rslora)
    layer = lora_layers(model, ADAPTER)["model.layers.0.mlp.up_proj"]
    w_before = layer.get_base_layer().weight.detach().clone()
    gen = torch.Generator().manual_seed(1)
    b0 = torch.randn(layer.out_features, 4, generator=gen)
    a0 = torch.randn(4, layer.in_features, generator=gen)
    write_and_absorb(layer, ADAPTER, a0, b0)
    expected = (w_before.double() - expected_s * (b0.double() @ a0.double())).float()
    torch.testing.assert_close(layer.get_base_layer().weight, expected, rtol=0, atol=1e-5)
    assert torch.equal(layer.lora_A[ADAPTER].weight, a0) and torch.equal(layer.lora_B[ADAPTER].weight, b0)


def test_absorption_returns_the_old_adapter_to_the_base(base_model):
    model = _peft(base_model, r=2, alpha=4)  # s = 2
    layer = lora_layers(model, ADAPTER)["model.layers.1.self_attn.v_proj"]
    gen = torch.Generator().manual_seed(2)
    b_old = torch.randn(layer.out_features, 2, generator=gen)
    a_old = torch.randn(2, layer.in_features, generator=gen)
    b0 = torch.randn(layer.out_features, 2, generator=gen)
    a0 = torch.randn(2, layer.in_features, generator=gen)
    with torch.no_grad():
        layer.lora_A[ADAPTER].weight.copy_(a_old)
        layer.lora_B[ADAPTER].weight.copy_(b_old)
    w_before = layer.get_base_layer().weight.detach().double().clone()
    write_and_absorb(layer, ADAPTER, a0, b0)
    effective_before = w_before + 2 * b_old.double() @ a_old.double()
    effective_after = layer.get_base_layer().weight.double() + 2 * b0.double() @ a0.double()
    torch.testing.assert_close(effective_after, effective_before, rtol=0, atol=1e-5)


def test_bf16_base_is_rounded_once(base_model, data):
    model = _peft(copy.deepcopy(base_model).to(torch.bfloat16))
    layer = lora_layers(model, ADAPTER)["model.layers.0.self_attn.q_proj"]
    w = layer.get_base_layer().weight.detach().clone()
    gen = torch.Generator().manual_seed(3)
    b0, a0 = 0.1 * torch.randn(layer.out_features, 4, generator=gen), 0.1 * torch.randn(4, layer.in_features, generator=gen)
    write_and_absorb(layer, ADAPTER, a0, b0)
    s = layer.scaling[ADAPTER]
    expected = (w.float() - s * (b0 @ a0)).to(torch.bfloat16)  # fp32 product, one rounding
    assert layer.get_base_layer().weight.dtype == torch.bfloat16
    assert torch.equal(layer.get_base_layer().weight, expected)


# ---------------------------------------------------------------------------------------------
# errors before any work, fallbacks
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_gradient_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("gradient estimation started before the input was validated")

    from slice_trl.initializers import slice as slice_module  # where SLICE and LoRA-GA look the estimator up

    monkeypatch.setattr(slice_module, "estimate_mean_gradients", fail)


@pytest.mark.parametrize("method", ["slice", "lora_ga"])
def test_rank_too_large_for_2r_is_rejected_before_any_work(base_model, data, no_gradient_work, method):
    model = _peft(base_model, r=17)  # k_proj / v_proj are 32 x 64: 2r = 34 > 32
    w_before = _base_weights(model)
    with pytest.raises(ValueError, match=r"LoraConfig\.r=17 is too large for module 'model\.layers\.0\.self_attn\.k_proj' "
                                         r"\(32x64\): this init needs 2r=34 <= 32\. Lower r to at most 16"):
        build_initializer(_cfg(method))(model, ADAPTER, data["cur"], data["prev_conflict"])
    assert all(torch.equal(w, w_before[n]) for n, w in _base_weights(model).items())


def test_loram_needs_only_r(base_model, data):
    LoramInitializer(_cfg("loram"))(_peft(base_model, r=17), ADAPTER)  # r <= 32 is enough
    with pytest.raises(ValueError, match=r"LoraConfig\.r=33 is too large .* needs r=33 <= 32"):
        LoramInitializer(_cfg("loram"))(_peft(base_model, r=33), ADAPTER)


def test_no_target_module_matched_is_a_clear_error(base_model, data, no_gradient_work):
    model = _peft(base_model)
    for init in (SliceInitializer(_cfg()), LoramInitializer(_cfg("loram")), VanillaInitializer(_cfg("vanilla"))):
        with pytest.raises(ValueError, match=r"No LoRA layer holds adapter 'other': no target module matched"):
            init(model, "other", data["cur"], data["prev_conflict"])


@pytest.mark.parametrize("which, label", [(0, "previous-task"), (1, "current-task")])
def test_non_finite_gradient_names_the_module_and_changes_nothing(base_model, data, monkeypatch, which, label):
    from slice_trl.initializers import slice as slice_module  # where SLICE looks the estimator up

    real = slice_module.estimate_mean_gradients
    calls = []

    def poisoned(*args, **kwargs):
        g, n = real(*args, **kwargs)
        if len(calls) == which:
            g["model.layers.1.mlp.gate_proj"][3, 5] = float("nan" if which else "inf")
        calls.append(1)
        return g, n

    monkeypatch.setattr(slice_module, "estimate_mean_gradients", poisoned)
    model = _peft(base_model)
    w_before = _base_weights(model)
    with pytest.raises(FloatingPointError, match=rf"The {label} gradient of module 'model\.layers\.1\.mlp\.gate_proj'"):
        SliceInitializer(_cfg())(model, ADAPTER, data["cur"], data["prev_conflict"])
    assert all(torch.equal(w, w_before[n]) for n, w in _base_weights(model).items())
    assert all(not b.any() for b, _ in _factors(model).values())
    assert len(calls) == which + 1  # G_prev is checked before G_cur is estimated


def test_zero_gradient_module_falls_back_to_vanilla_with_a_warning(base_model, data):
    """Layer 0's o_proj = 0 (not a target): nothing flows back into layer 0's attention, so the
    q/k/v gradients are exactly zero."""
    zeroed = copy.deepcopy(base_model)
    with torch.no_grad():
        zeroed.model.layers[0].self_attn.o_proj.weight.zero_()
    targets = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    model = _peft(zeroed, targets=targets)
    before = _logits(model, data["probe"])
    expected = {f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")}
    with pytest.warns(UserWarning, match="gradient is exactly zero; fell back to the vanilla init") as record:
        report = SliceInitializer(_cfg())(model, ADAPTER, data["cur"], data["prev_conflict"])
    assert {m for m in expected if any(m in str(w.message) for w in record)} == expected
    assert set(report.fallbacks) == expected
    assert (_logits(model, data["probe"]) - before).abs().max().item() <= 1e-4
    vanilla = _peft(zeroed, targets=targets)
    VanillaInitializer(_cfg("vanilla"))(vanilla, ADAPTER)
    ref = _factors(vanilla)
    for n, (b, a) in _factors(model).items():
        entry = report.modules[n]
        if n in expected:
            assert entry["fallback"] is True and entry["beta"] is None
            assert not b.any() and torch.equal(a, ref[n][1])
        else:
            assert entry["fallback"] is False and b.any()


# ---------------------------------------------------------------------------------------------
# vanilla, memory options, report
# ---------------------------------------------------------------------------------------------

def test_vanilla_is_peft_default_seeded_per_module(base_model):
    m1, m2 = _peft(base_model), _peft(base_model)
    torch.manual_seed(1)
    VanillaInitializer(_cfg("vanilla", seed=7))(m1, ADAPTER)
    torch.manual_seed(2)  # the global RNG does not matter
    VanillaInitializer(_cfg("vanilla", seed=7))(m2, ADAPTER)
    f1, f2 = _factors(m1), _factors(m2)
    for n, (b, a) in f1.items():
        assert torch.equal(a, f2[n][1]) and not b.any()
        bound = 1.0 / math.sqrt(a.shape[1])  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert a.abs().max() <= bound and a.abs().max() > 0.8 * bound
    assert len({float(a.sum()) for _, a in f1.values()}) == len(f1)  # a different seed per module


_FP32_REFS: dict = {}


@pytest.mark.parametrize("option", [{"prev_grad_dtype": "bfloat16"}, {"prev_grad_device": "cpu"},
                                    {"prev_grad_dtype": "bfloat16", "prev_grad_device": "cpu"}])
@pytest.mark.parametrize("projection", ["global", "per_module"])
def test_memory_options_give_inits_close_to_fp32(base_model, data, option, projection):
    if projection not in _FP32_REFS:
        _FP32_REFS[projection] = _run(base_model, data, "slice", projection=projection)
    ref, ref_report = _FP32_REFS[projection]
    got, report = _run(base_model, data, "slice", projection=projection, **option)
    assert report.surgery["fired"] and ref_report.surgery["fired"]  # G_prev really enters the init
    fr, fg = _factors(ref), _factors(got)
    cos_b = [_subspace_cos(fg[n][0], fr[n][0]) for n in fr]
    cos_a = [_subspace_cos(fg[n][1].T, fr[n][1].T) for n in fr]
    assert sum(cos_b) / len(cos_b) >= 0.99 and sum(cos_a) / len(cos_a) >= 0.99


def test_report_records_the_surgery_and_the_stages(base_model, data):
    _, report = _run(base_model, data, "slice")
    d = report.to_dict()
    assert d["method"] == "slice" and d["adapter_name"] == ADAPTER
    assert d["n_batches_cur"] == 2 and d["n_batches_prev"] == 2
    assert set(d["surgery"]) == {"mode", "c", "cosine", "gamma", "fired", "frac_negative_modules"}
    assert d["surgery"]["fired"] and d["surgery"]["cosine"] < 0 and d["surgery"]["gamma"] > 0
    assert set(d["timings"]) >= {"grad_prev", "grad_cur", "surgery", "svd_rescale", "absorb"}
    assert len(d["modules"]) == 14 and d["fallbacks"] == []


@pytest.mark.parametrize("method, cls", [("slice", SliceInitializer), ("lora_ga", LoraGAInitializer),
                                         ("loram", LoramInitializer), ("vanilla", VanillaInitializer)])
def test_build_initializer(method, cls):
    init = build_initializer(InitConfig(method=method))
    assert type(init) is cls and init.config.method == method


def test_one_shot_iterators_are_accepted(base_model, data, lora_ga):
    model = _peft(base_model)
    SliceInitializer(_cfg())(model, ADAPTER, iter(data["cur"]), iter(data["prev_agree"]))
    _assert_bitwise(model, lora_ga)
    assert canonical_name("base_model.model.x") == "x"


# ---------------------------------------------------------------------------------------------
# the real model (slow; runs in CI)
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_function_is_preserved_on_smollm2(smollm2):
    """The real model, every initialiser, fp32 weights. The change of function is measured by
    evaluating the original and the initialised model in fp64 (<= 1e-4): evaluated in fp32, two
    mathematically equal SmolLM2 forwards that split a weight differently (W vs W_base + s B A)
    already differ by a few 1e-4 (the fp32 forward alone is ~5e-5 off the exact logits), so
    the fp32 comparison gets a rounding-level bound of 1e-3."""
    import json
    from pathlib import Path

    model, tok = smollm2
    original = copy.deepcopy(model).float().eval()  # never touch the shared session model
    root = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "superni"
    texts = {}
    for task in ("task088_identify_typo_verification", "task1510_evalution_relation_extraction"):
        raw = json.loads((root / f"{task}.json").read_text())
        texts[task] = [raw["Definition"][0] + "\nInput: " + inst["input"] for inst in raw["Instances"][:2]]

    def batch(lines):
        enc = tok(lines, max_length=32, truncation=True, padding="max_length", return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    cur = [batch(texts["task1510_evalution_relation_extraction"])]
    prev = [batch(texts["task088_identify_typo_verification"])]
    exact_before = _logits(copy.deepcopy(original).double(), cur[0])
    cfg = dict(cur_steps=1, prev_steps=1, batch_size=2, micro_batch_size=2)
    for method in ("slice", "lora_ga", "loram", "vanilla"):
        peft_model = get_peft_model(copy.deepcopy(original), LoraConfig(
            r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS), lora_dropout=0.0))
        before = _logits(peft_model, cur[0])
        build_initializer(InitConfig(method=method, **cfg))(peft_model, ADAPTER, cur, prev)
        assert (_logits(peft_model, cur[0]) - before).abs().max().item() <= 1e-3, method
        exact_after = _logits(copy.deepcopy(peft_model).double(), cur[0])
        assert (exact_after - exact_before).abs().max().item() <= 1e-4, method
        if method != "vanilla":  # a real adapter was absorbed: the check is not vacuous
            assert all(layer.lora_B[ADAPTER].weight.any() for layer in lora_layers(peft_model, ADAPTER).values())
        del peft_model


def test_relative_magnitude_and_the_far_from_paper_warning(caplog):
    """s * sqrt(ln r / ln m) against hand-computed values; the warning fires only far above 0.19."""
    import logging

    from peft import LoraConfig as _LoraConfig
    from peft import get_peft_model as _get_peft_model

    from slice_trl.configs.config import InitConfig as _InitConfig
    from slice_trl.initializers import relative_magnitudes, warn_if_far_from_paper
    from slice_trl.models.lora import lora_layers as _layers

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(576, 576, bias=False)  # m = 576 (SmolLM2's q_proj)
            self.k = torch.nn.Linear(576, 192, bias=False)  # m = 192 (its k_proj)

    def peft(r, alpha, rslora=True):
        cfg = _LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["q", "k"])
        return _get_peft_model(Two(), cfg)

    paper_op = peft(16, 1)  # s = 1 / 4
    values = relative_magnitudes(_layers(paper_op, "default"), "default")
    q = next(v for n, v in values.items() if n.endswith("q"))
    k = next(v for n, v in values.items() if n.endswith("k"))
    assert q == pytest.approx(0.25 * (2.772588722 / 6.356107660) ** 0.5)  # ln 16 / ln 576
    assert k == pytest.approx(0.25 * (2.772588722 / 5.257495372) ** 0.5)  # ln 16 / ln 192
    with caplog.at_level(logging.WARNING, logger="slice_trl.initializers"):
        assert warn_if_far_from_paper(paper_op, "default", _InitConfig(method="slice")) == pytest.approx(k)
        assert not caplog.records
        # the earlier benchmark: r = 8, alpha = 8, rsLoRA -> s = 8 / sqrt(8) = 2.83
        big = warn_if_far_from_paper(peft(8, 8), "default", _InitConfig(method="lora_ga"))
        assert big == pytest.approx(8 / 8 ** 0.5 * (2.079441542 / 5.257495372) ** 0.5)  # ln 8 / ln 192
        assert len(caplog.records) == 1 and "lower lora_alpha" in caplog.records[0].getMessage()
        # plain LoRA scaling alpha / r, and vanilla (not rescaled): no warning
        # plain LoRA scaling alpha / r = 4 / 16 = 0.25: the paper's magnitude again
        assert warn_if_far_from_paper(peft(16, 4, rslora=False), "default", _InitConfig(method="loram")) == \
            pytest.approx(k)
        assert warn_if_far_from_paper(peft(8, 8), "default", _InitConfig(method="vanilla")) is None
        assert len(caplog.records) == 1


def test_each_initializer_file_registers_itself_with_its_traits():
    # adding an initialiser is adding one file: every module of the package but `base` registers one name
    from pathlib import Path

    from slice_trl.utils.registry import initializers

    files = {p.stem for p in Path(init_mod.__file__).parent.glob("*.py")} - {"__init__", "base"}
    assert set(initializers.names()) >= files
    assert {n: (e.uses_gradients, e.needs_2r) for n, e in ((n, initializers.get(n)) for n in files)} == {
        "slice": (True, True), "lora_ga": (True, True), "loram": (False, False), "vanilla": (False, False)}
    assert InitConfig(method="lora_ga").needs_2r and not InitConfig(method="loram").needs_2r
    with pytest.raises(ValueError, match=r"init\.method='slise' is unknown \(no such initialiser\)\. Did you mean 'slice'"):
        InitConfig(method="slise")


def test_data_free_initializers_need_no_batches(base_model):
    # uses_gradients False: called with no data at all (what the trainer does for them)
    for method in ("loram", "vanilla"):
        report = build_initializer(_cfg(method))(_peft(base_model), ADAPTER, None, None)
        assert report.n_batches_cur == 0 and len(report.modules) == 14
