"""PCGrad-c gradient reconciliation (docs/method.md, SLICE stage 2):

    G~ = G_cur - c * min(<G_cur, G_prev>_F, 0) / ||G_prev||_F^2 * G_prev

Checked against independent facts: orthogonality of the result to G_prev (c = 1), identity when
there is no conflict, and a hand-computed gamma.
"""

import math

import pytest
import torch

from slice_trl.kernels.surgery import pcgrad_coefficient, reconcile

SHAPES = {"l0.q": (6, 4), "l0.v": (3, 4), "l1.up": (8, 5), "l1.down": (5, 8)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grads(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def _clone(g):
    return {n: t.clone() for n, t in g.items()}


def _model_dot(a, b) -> float:
    """Whole-model Frobenius inner product, in fp64 (independent of the library's _dot)."""
    return sum(float((a[n].double() * b[n].double()).sum()) for n in a)


def _conflicting_pair(seed=0, weight=-0.6):
    """G_cur = weight * G_prev + noise: a clear global conflict for weight < 0."""
    prev = _grads(seed)
    noise = _grads(seed + 1)
    cur = {n: weight * prev[n] + 0.5 * noise[n] for n in prev}
    return cur, prev


def test_c1_global_projection_is_orthogonal_to_g_prev_in_the_whole_model_inner_product():
    cur, prev = _conflicting_pair()
    assert _model_dot(cur, prev) < 0  # precondition: a real conflict
    original = _clone(cur)
    report = reconcile(cur, prev, c=1.0, mode="global")
    assert report.fired and report.cosine < 0
    rel = abs(_model_dot(cur, prev)) / math.sqrt(_model_dot(cur, cur) * _model_dot(prev, prev))
    assert rel < 1e-6
    # one coefficient for every module: G~ - G_cur = gamma * G_prev everywhere
    for n in cur:
        torch.testing.assert_close(cur[n], original[n] + report.gamma * prev[n], rtol=0, atol=1e-6)
    # ...and this one coefficient does not make each module orthogonal on its own
    per_module = [abs(float((cur[n].double() * prev[n].double()).sum())) for n in cur]
    assert max(per_module) > 1e-3


def test_no_conflict_leaves_g_cur_bitwise_unchanged():
    cur, prev = _conflicting_pair(weight=+0.6)
    assert _model_dot(cur, prev) > 0
    original = _clone(cur)
    for mode in ("global", "per_module"):
        report = reconcile(cur, prev, c=1.0, mode=mode)
        assert not report.fired and report.cosine > 0
        for n in cur:
            assert torch.equal(cur[n], original[n])


@pytest.mark.parametrize("g_prev", [None, {}])
def test_no_previous_gradient_is_the_identity(g_prev):
    cur = _grads(3)
    original = _clone(cur)
    report = reconcile(cur, g_prev, c=1.0)
    assert not report.fired and report.cosine is None and report.gamma == 0.0
    assert all(torch.equal(cur[n], original[n]) for n in cur)


def test_zero_previous_gradient_is_the_identity():
    cur = _grads(3)
    original = _clone(cur)
    prev = {n: torch.zeros_like(t) for n, t in cur.items()}
    report = reconcile(cur, prev, c=1.0)
    assert not report.fired
    assert all(torch.equal(cur[n], original[n]) for n in cur)


def test_c0_is_the_identity_even_under_conflict():
    cur, prev = _conflicting_pair()
    original = _clone(cur)
    report = reconcile(cur, prev, c=0.0)
    assert not report.fired and report.cosine < 0
    assert all(torch.equal(cur[n], original[n]) for n in cur)


def test_per_module_mode_makes_each_conflicting_module_orthogonal_and_leaves_the_others():
    prev = _grads(10)
    noise = _grads(11)
    signs = {"l0.q": -1.0, "l0.v": +1.0, "l1.up": -1.0, "l1.down": +1.0}
    cur = {n: signs[n] * prev[n] + 0.3 * noise[n] for n in prev}
    original = _clone(cur)
    report = reconcile(cur, prev, c=1.0, mode="per_module")
    assert report.fired
    assert report.frac_negative_modules == pytest.approx(0.5)
    for n in cur:
        own_cos = float((original[n] * prev[n]).sum() / (original[n].norm() * prev[n].norm()))
        assert report.module_cosines[n] == pytest.approx(own_cos, rel=1e-6)
        if own_cos < 0:
            rel = abs(float((cur[n].double() * prev[n].double()).sum())) / float(cur[n].norm() * prev[n].norm())
            assert rel < 1e-6, n
            assert report.module_gammas[n] > 0
        else:
            assert torch.equal(cur[n], original[n]), n
            assert report.module_gammas[n] == 0.0


def test_gamma_closed_form_on_a_hand_case():
    # <G_cur, G_prev> = (1)(-1) + (1)(0.5) = -0.5 ; ||G_prev||^2 = 1 + 0.25 = 1.25 ; ||G_cur||^2 = 2
    cur = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    prev = {"a": torch.tensor([[-1.0, 0.0]]), "b": torch.tensor([[0.0, 0.5]])}
    g = _clone(cur)
    report = reconcile(g, prev, c=0.5, mode="global")
    assert report.gamma == pytest.approx(0.5 * 0.5 / 1.25)  # -c * dot / ||G_prev||^2 = 0.2
    assert report.cosine == pytest.approx(-0.5 / math.sqrt(1.25 * 2.0))
    assert report.frac_negative_modules == pytest.approx(0.5)
    assert torch.equal(g["a"], torch.tensor([[0.8, 0.0]]))
    torch.testing.assert_close(g["b"], torch.tensor([[0.0, 1.1]]))
    # per-module: a has dot -1, ||prev||^2 1 -> gamma 0.5 ; b has dot +0.5 -> untouched
    g = _clone(cur)
    report = reconcile(g, prev, c=0.5, mode="per_module")
    assert report.module_gammas == {"a": pytest.approx(0.5), "b": 0.0}
    assert torch.equal(g["a"], torch.tensor([[0.5, 0.0]]))
    assert torch.equal(g["b"], cur["b"])


@pytest.mark.parametrize(
    "dot, prev_sq, c, expected",
    [(-2.0, 4.0, 1.0, 0.5), (-2.0, 4.0, 0.25, 0.125), (3.0, 4.0, 1.0, 0.0), (0.0, 4.0, 1.0, 0.0), (-1.0, 0.0, 1.0, 0.0)],
)
def test_pcgrad_coefficient(dot, prev_sq, c, expected):
    assert pcgrad_coefficient(dot, prev_sq, c) == pytest.approx(expected)


def test_g_prev_stored_in_bfloat16_is_projected_out_exactly_as_stored():
    cur, prev = _conflicting_pair(seed=4)
    prev_bf16 = {n: t.to(torch.bfloat16) for n, t in prev.items()}
    report = reconcile(cur, prev_bf16, c=1.0)
    assert report.fired
    prev_up = {n: t.float() for n, t in prev_bf16.items()}
    rel = abs(_model_dot(cur, prev_up)) / math.sqrt(_model_dot(cur, cur) * _model_dot(prev_up, prev_up))
    assert rel < 1e-6
    assert all(t.dtype == torch.float32 for t in cur.values())


def test_partial_c_removes_that_fraction_of_the_conflict():
    cur, prev = _conflicting_pair(seed=5)
    dot0 = _model_dot(cur, prev)
    reconcile(cur, prev, c=0.3)
    assert _model_dot(cur, prev) == pytest.approx(0.7 * dot0, rel=1e-5)


def test_bad_arguments_are_rejected():
    cur, prev = _conflicting_pair()
    with pytest.raises(ValueError, match=r"c=1\.5 must be in \[0, 1\]"):
        reconcile(cur, prev, c=1.5)
    with pytest.raises(ValueError, match="projection mode 'layer'"):
        reconcile(cur, prev, c=1.0, mode="layer")
    del prev["l1.down"]
    with pytest.raises(ValueError, match="l1.down"):
        reconcile(cur, prev, c=1.0)


def test_per_module_summary_names_the_modules_it_corrected():
    # hand-built: module "a" conflicts (cosine -1), module "b" agrees (cosine +1)
    prev = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    cur = {"a": torch.tensor([[-2.0, 0.0]]), "b": torch.tensor([[0.0, 3.0]])}
    summary = reconcile(cur, prev, c=1.0, mode="per_module").summary()
    assert summary["fired"] and summary["frac_negative_modules"] == 0.5
    assert summary["fired_modules"] == ["a"]
    assert torch.equal(cur["a"], torch.zeros(1, 2)) and torch.equal(cur["b"], torch.tensor([[0.0, 3.0]]))
    assert "fired_modules" not in reconcile({"a": torch.ones(1, 2)}, {"a": -torch.ones(1, 2)}, 1.0).summary()
