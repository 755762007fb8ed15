"""The gradient probe (docs/method.md, SLICE stage 1): mean over mini-batches of dL/dW, L = the token
mean over label tokens of one mini-batch, compared with a direct autograd computation through
the model's own (Hugging Face) loss."""

import copy

import pytest
import torch
from torch import nn

from slice_trl.kernels.gradients import check_finite, label_token_count, micro_batches, summed_cross_entropy
from slice_trl.models.gradients import DEFAULT_TARGETS, canonical_name, estimate_mean_gradients, target_weights
from slice_trl.utils.testing import tiny_llama

VOCAB = 260


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed: int, b: int, t: int, pad: int = 0, masked_prefix: int = 3) -> dict[str, torch.Tensor]:
    """Right-padded batch with a masked prompt prefix: rows have different lengths and different
    label counts, so a per-example or per-micro-batch mean would give a different number."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.long)
    labels = ids.clone()
    for i in range(b):
        length = t - (i * pad) % max(1, t // 2)
        ids[i, length:] = 0
        mask[i, length:] = 0
        labels[i, length:] = -100
        labels[i, : masked_prefix + i] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(scope="module")
def batches():
    return [_batch(1, 5, 24, pad=3), _batch(2, 3, 17, pad=2), _batch(3, 4, 20, pad=5)]


def _direct_mean_gradient(model, batches, names):
    """Independent reference: HF's own causal-LM loss (shift + mean over labels != -100) on the
    whole mini-batch, torch.autograd.grad, mean over mini-batches, in fp64."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    weights = [params[n + ".weight"] for n in names]
    total = [torch.zeros(w.shape, dtype=torch.float64) for w in weights]
    for b in batches:
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        for acc, g in zip(total, torch.autograd.grad(loss, weights)):
            acc += g.double()
    return {n: t / len(batches) for n, t in zip(names, total)}


def _assert_grads_close(got, expected, rel=1e-5):
    assert set(got) == set(expected)
    for n in expected:
        err = float((got[n].double() - expected[n].double()).norm())
        assert err <= rel * float(expected[n].double().norm()) + 1e-12, (n, err)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3)


def test_target_weights_finds_the_seven_projections(model):
    w = target_weights(model)
    assert len(w) == 2 * 7
    assert {n.rsplit(".", 1)[-1] for n in w} == set(DEFAULT_TARGETS)
    assert all(w[n] is model.get_submodule(n).weight for n in w)
    only = target_weights(model, ["q_proj", "down_proj"])
    assert sorted(only) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
                            "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def test_no_target_module_matched_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"No target module matched \(target_modules=\['c_attn'\]"):
        target_weights(model, ["c_attn"])


def test_canonical_name_strips_the_peft_prefix():
    assert canonical_name("base_model.model.model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj"
    assert canonical_name("model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj"


@pytest.mark.parametrize("micro_batch_size", [None, 1, 2])
def test_estimate_equals_direct_autograd_and_ignores_micro_batching(model, batches, micro_batch_size):
    weights = target_weights(model)
    expected = _direct_mean_gradient(model, batches, list(weights))
    got, n = estimate_mean_gradients(model, batches, weights, micro_batch_size=micro_batch_size)
    assert n == len(batches)
    assert all(g.dtype == torch.float32 and g.shape == weights[k].shape for k, g in got.items())
    _assert_grads_close(got, expected)


def test_mini_batches_weigh_equally_not_tokens(model, batches):
    """The mean over batches of per-batch token means differs from the pooled token mean."""
    weights = target_weights(model, ["v_proj"])
    got, _ = estimate_mean_gradients(model, batches, weights)
    # pooled token mean over all labels of all batches (what the probe must NOT compute)
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    ws = [params[n + ".weight"] for n in weights]
    sums = [torch.zeros(w.shape, dtype=torch.float64) for w in ws]
    n_tok = 0
    for b in batches:
        loss = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        k = int((b["labels"][:, 1:] != -100).sum())
        n_tok += k
        for acc, g in zip(sums, torch.autograd.grad(loss * k, ws)):
            acc += g.double()
    pooled = {n: s / n_tok for n, s in zip(weights, sums)}
    diff = max(float((got[n].double() - pooled[n]).norm() / pooled[n].norm()) for n in weights)
    assert diff > 1e-3


def test_gradient_checkpointing_gives_the_same_numbers(model, batches):
    weights = target_weights(model)
    plain, _ = estimate_mean_gradients(model, batches, weights, micro_batch_size=2)
    ckpt, _ = estimate_mean_gradients(model, batches, weights, micro_batch_size=2, gradient_checkpointing=True)
    _assert_grads_close(ckpt, plain)
    assert not model.is_activation_checkpointing  # switched off again


def test_flags_modes_and_existing_grads_are_restored(batches):
    model = tiny_llama(seed=4)
    model.train()
    model.model.layers[1].eval()  # a mixed train/eval state
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    weights = target_weights(model)
    name = "model.layers.0.mlp.up_proj"
    stale = torch.full_like(weights[name], 7.0)
    weights[name].grad = stale  # a user's own gradient, left from an earlier backward
    got, _ = estimate_mean_gradients(model, batches[:1], weights, micro_batch_size=2)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert weights[name].grad is stale  # restored, untouched
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith(name))
    # the stale gradient did not leak into the estimate
    fresh = tiny_llama(seed=4)
    ref, _ = estimate_mean_gradients(fresh, batches[:1], target_weights(fresh), micro_batch_size=2)
    _assert_grads_close(got, ref)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimation_runs_without_dropout(batches, checkpointing):
    """Dropout would make the estimate random: on a model with attention dropout 0.5 (in train
    mode), the estimate equals the dropout-free one, also with gradient checkpointing (which
    needs the checkpointed layers in train mode)."""
    model = tiny_llama(seed=5)
    reference = copy.deepcopy(model)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    weights = target_weights(model)
    g1, _ = estimate_mean_gradients(model, batches[:1], weights, gradient_checkpointing=checkpointing)
    g2, _ = estimate_mean_gradients(model, batches[:1], weights, gradient_checkpointing=checkpointing)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
    ref, _ = estimate_mean_gradients(reference, batches[:1], target_weights(reference))
    _assert_grads_close(g1, ref)
    assert model.training and all(m.training for m in model.modules())
    assert not model.is_activation_checkpointing


def test_plain_and_peft_wrapped_models_give_the_same_numbers(model, batches):
    from peft import LoraConfig, get_peft_model

    plain, _ = estimate_mean_gradients(model, batches, target_weights(model), micro_batch_size=2)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS)))
    lora_a = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    weights = target_weights(peft_model, adapter_name="default")
    assert set(weights) == set(plain)  # canonical names, no PEFT prefix
    assert all(w is peft_model.get_submodule("base_model.model." + n).base_layer.weight for n, w in weights.items())
    wrapped, _ = estimate_mean_gradients(peft_model, batches, weights, micro_batch_size=2)
    _assert_grads_close(wrapped, plain)
    # LoRA parameters were neither trained nor left with gradients, and still require grad
    for n, p in peft_model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, lora_a[n]) and p.grad is None and p.requires_grad


def test_store_dtype_and_device(model, batches):
    weights = target_weights(model)
    ref, _ = estimate_mean_gradients(model, batches, weights, micro_batch_size=1)
    bf16, _ = estimate_mean_gradients(model, batches, weights, micro_batch_size=1,
                                      store_dtype=torch.bfloat16, store_device="cpu")
    assert all(g.dtype == torch.bfloat16 and g.device.type == "cpu" for g in bf16.values())
    for n in ref:
        # accumulated in fp32 and rounded once: within bf16's half-ulp of the fp32 mean
        torch.testing.assert_close(bf16[n].float(), ref[n].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_batches_without_label_tokens_contribute_zero_but_count(model, batches):
    weights = target_weights(model, ["o_proj"])
    empty = dict(batches[0])
    empty["labels"] = torch.full_like(empty["labels"], -100)
    one, _ = estimate_mean_gradients(model, batches[:1], weights)
    two, n = estimate_mean_gradients(model, [batches[0], empty], weights)
    assert n == 2
    _assert_grads_close(two, {k: v / 2 for k, v in one.items()})


def test_labels_default_to_input_ids_without_padding(model):
    b = _batch(9, 2, 12)
    b.pop("labels")
    weights = target_weights(model, ["k_proj"])
    got, _ = estimate_mean_gradients(model, [b], weights)
    with_labels = dict(b, labels=torch.where(b["attention_mask"] == 1, b["input_ids"], -100))
    _assert_grads_close(got, _direct_mean_gradient(model, [with_labels], list(weights)))


def test_no_batches_is_an_error(model):
    with pytest.raises(ValueError, match="got no mini-batches"):
        estimate_mean_gradients(model, [], target_weights(model))


def test_check_finite_names_the_module():
    grads = {"a": torch.zeros(2, 2), "model.layers.3.mlp.up_proj": torch.tensor([[0.0, float("inf")]])}
    with pytest.raises(FloatingPointError, match=r"previous-task gradient of module 'model\.layers\.3\.mlp\.up_proj'"):
        check_finite(grads, "previous-task")
    grads["model.layers.3.mlp.up_proj"] = torch.tensor([[float("nan")]])
    with pytest.raises(FloatingPointError, match="up_proj"):
        check_finite(grads, "current-task")
    check_finite({"a": torch.ones(3)}, "current-task")


def test_a_weight_outside_the_default_targets_can_be_probed():
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(4, 3))
    assert list(target_weights(net, ["proj"])) == ["proj"]


class _NoLogitsToKeep(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (the probe must fall back to full logits)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_lm_head_runs_only_where_a_label_follows_and_the_fallback_agrees(model, batches):
    weights = target_weights(model)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        trimmed, _ = estimate_mean_gradients(model, batches[:1], weights)
    finally:
        handle.remove()
    b = batches[0]
    used = int((b["labels"][:, 1:] != -100).any(0).sum())
    assert seen == [used] and used < b["input_ids"].shape[1] - 1  # prompt positions skipped
    wrapped = _NoLogitsToKeep(model)
    full, _ = estimate_mean_gradients(wrapped, batches[:1], target_weights(wrapped))
    _assert_grads_close({canonical_name(k.removeprefix("inner.")): v for k, v in full.items()}, trimmed)


def test_the_kernels_count_cut_and_sum_by_hand():
    # label tokens after the causal shift: position 0 is never predicted
    labels = torch.tensor([[5, -100, 7, 8], [-100, -100, -100, 9]])
    assert label_token_count(labels) == 3
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "note": "not a tensor"}
    assert [m["input_ids"].tolist() for m in micro_batches(batch, 2)] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]]]
    assert all(set(m) == {"input_ids"} for m in micro_batches(batch, 2))
    # two scored positions: -log softmax by hand; the -100 target adds nothing
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    targets = torch.tensor([[2, -100, 0]])
    by_hand = (torch.log(torch.tensor(1 + torch.e + torch.e ** 2)) - 2.0) + torch.log(torch.tensor(3.0))
    assert torch.allclose(summed_cross_entropy(logits, targets), by_hand)
