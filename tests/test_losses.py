"""Loss terms: entropy regulariser (eqs. 3–4), routed distill loss, objective (eq. 9)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qrdistill.train.losses import (
    assignment_entropy,
    binary_entropy,
    mean_assignment,
    path_nll,
    per_question_mean_assignment,
    routed_distill_loss,
    total_objective,
)
from qrdistill.train.router import gumbel_multi_hot

LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=80, deadline=None)
@given(st.floats(0.0, 1.0))
def test_binary_entropy_symmetric_bounded_and_maximal_at_half(p):
    h = binary_entropy(torch.tensor(p)).item()
    assert h == pytest.approx(binary_entropy(torch.tensor(1.0 - p)).item(), abs=1e-5)
    assert -1e-6 <= h <= LN2 + 1e-6
    if abs(p - 0.5) > 1e-3:
        assert h < LN2


def test_binary_entropy_endpoints_and_finite_gradient_towards_half():
    assert binary_entropy(torch.tensor(0.5)).item() == pytest.approx(LN2)
    for p, sign in ((0.0, 1.0), (1.0, -1.0)):
        x = torch.tensor(p, requires_grad=True)
        h = binary_entropy(x)
        assert h.item() == pytest.approx(0.0, abs=1e-12)
        h.backward()
        # Maximising H moves ᾱ from 0 up and from 1 down; the log(0) guard keeps it finite.
        assert torch.isfinite(x.grad) and x.grad.item() * sign > 1.0


def test_mean_assignment_and_batch_entropy():
    alpha = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert mean_assignment(alpha).item() == pytest.approx(0.5)
    assert assignment_entropy(alpha).item() == pytest.approx(LN2)
    assert assignment_entropy(torch.ones(4, 2)).item() == pytest.approx(0.0, abs=1e-6)
    assert assignment_entropy(torch.zeros(4, 2)).item() == pytest.approx(0.0, abs=1e-6)


def test_per_question_entropy_follows_eq3_per_question():
    alpha = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    qid = torch.tensor([7, 3, 7, 3])
    means = per_question_mean_assignment(alpha, qid)
    assert sorted(means.tolist()) == pytest.approx([0.5, 1.0])
    # q7 routes everything (H = 0), q3 half (H = ln 2): mean ln2 / 2; the batch mean is 3/4.
    assert assignment_entropy(alpha, qid).item() == pytest.approx(LN2 / 2)
    assert assignment_entropy(alpha).item() == pytest.approx(binary_entropy(torch.tensor(0.75)).item())
    perm = torch.tensor([2, 0, 3, 1])
    assert assignment_entropy(alpha[perm], qid[perm]).item() == pytest.approx(LN2 / 2)


def test_entropy_gradient_reaches_logits_through_straight_through_alpha():
    logits = torch.full((6, 2), 2.0, requires_grad=True)  # everything routed: ᾱ = 1
    alpha = gumbel_multi_hot(logits, None, tau=1.0)
    assert mean_assignment(alpha).item() == 1.0
    (-assignment_entropy(alpha)).backward()
    # Minimising −H at ᾱ = 1 lowers every routing logit.
    assert (logits.grad > 0).all()


def _batch():
    # 3 paths x 5 tokens; the first two tokens are prompt (huge NLL that must be ignored).
    nll = torch.tensor(
        [
            [9.0, 9.0, 1.0, 1.0, 1.0],
            [9.0, 9.0, 2.0, 4.0, 0.0],
            [9.0, 9.0, 3.0, 3.0, 3.0],
        ]
    )
    mask = torch.tensor([[False, False, True, True, True]] * 3)
    mask[1, 4] = False  # path 1 ends one token earlier (padding)
    weight = torch.ones_like(nll)
    return nll, weight, mask


def test_path_nll_is_weighted_mean_over_response_tokens():
    nll, weight, mask = _batch()
    assert path_nll(nll, weight, mask).tolist() == pytest.approx([1.0, 3.0, 3.0])
    weight[1, 3] = 3.0  # upweight the "answer" token of path 1
    assert path_nll(nll, weight, mask)[1].item() == pytest.approx((2.0 + 3 * 4.0) / 4)
    assert path_nll(nll, weight, torch.zeros_like(mask)).tolist() == [0.0, 0.0, 0.0]


def test_routed_distill_loss_averages_over_routed_paths():
    nll, weight, mask = _batch()
    route = torch.tensor([1.0, 0.0, 1.0])
    assert routed_distill_loss(nll, weight, mask, route).item() == pytest.approx((1.0 + 3.0) / 2)
    assert routed_distill_loss(nll, weight, mask, torch.ones(3)).item() == pytest.approx(7.0 / 3)
    # Nothing routed: zero loss, zero gradient for the student and the router.
    student_nll = nll.clone().requires_grad_(True)
    route = torch.zeros(3, requires_grad=True)
    loss = routed_distill_loss(student_nll, weight, mask, route)
    loss.backward()
    assert loss.item() == 0.0 and student_nll.grad.abs().sum() == 0.0 and route.grad.abs().sum() == 0.0


def test_routed_distill_loss_router_gradient_is_centred_on_the_students_mean():
    nll, weight, mask = _batch()  # path losses 1, 3, 3
    nll = nll.clone()
    nll[2, 2:] = 6.0  # path 2 now has loss 6; mean over the three routed paths 10/3
    route = torch.ones(3, requires_grad=True)
    routed_distill_loss(nll, weight, mask, route).backward()
    # ∂L/∂alpha_j = (ℓ_j − L) / n_s: above-mean paths pushed away, below-mean pulled in,
    # and no net push on the routing rate.
    assert route.grad.tolist() == pytest.approx([(1 - 10 / 3) / 3, (3 - 10 / 3) / 3, (6 - 10 / 3) / 3])
    assert route.grad.sum().item() == pytest.approx(0.0, abs=1e-6)

    # Through the straight-through Gumbel sample: one descent step on the routing logits
    # lowers P(route) for the highest-loss path and raises it for the lowest.
    logits = torch.full((3,), 0.5, requires_grad=True)
    alpha = gumbel_multi_hot(logits[:, None], None, tau=1.0)[:, 0]
    routed_distill_loss(nll, weight, mask, alpha).backward()
    assert logits.grad[2] > 0 > logits.grad[0]
    assert logits.grad[2] > logits.grad[1] > logits.grad[0]


def test_routed_distill_loss_unrouted_rows_with_real_losses():
    # When the loop runs a student on every path (peer_paths: all), an unrouted path
    # whose loss is below the routed mean is pulled towards the student.
    nll, weight, mask = _batch()  # path losses 1, 3, 3
    route = torch.tensor([0.0, 1.0, 1.0], requires_grad=True)
    loss = routed_distill_loss(nll, weight, mask, route)
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert route.grad[0].item() == pytest.approx((1.0 - 3.0) / 2)


def test_routed_distill_loss_trains_the_student_only_on_its_paths():
    nll, weight, mask = _batch()
    student_nll = nll.clone().requires_grad_(True)
    routed_distill_loss(student_nll, weight, mask, torch.tensor([0.0, 1.0, 0.0])).backward()
    g = student_nll.grad
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    # Path 1 has two response tokens: each gets 1/2; prompt and padding get nothing.
    assert g[1, 2:4].tolist() == pytest.approx([0.5, 0.5])
    assert g[1, :2].abs().sum() == 0 and g[1, 4] == 0


def test_total_objective_signs_and_values():
    d = [torch.tensor(1.5), torch.tensor(2.0), torch.tensor(0.5)]
    ent = torch.tensor(0.6, requires_grad=True)
    mut = torch.tensor(0.3, requires_grad=True)
    total = total_objective(d, ent, mut, lambda_entropy=0.1, lambda_mutual=0.5)
    assert total.item() == pytest.approx(4.0 - 0.06 + 0.15)
    total.backward()
    # The entropy is maximised: minimising the objective raises it.
    assert ent.grad.item() == pytest.approx(-0.1) and mut.grad.item() == pytest.approx(0.5)
    assert total_objective(d, ent, mut, 0.0, 0.0).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        total_objective(d, ent, mut, -0.1, 0.0)
    with pytest.raises(ValueError):
        total_objective([], ent, mut, 0.1, 0.1)
