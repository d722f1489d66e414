"""Mutual-student distillation (eqs. 5–8) and gradient flow through the whole objective (eq. 9)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qrdistill.errors import ConfigError
from qrdistill.train.losses import (
    assignment_entropy,
    competence_scores,
    mutual_mse,
    path_nll,
    routed_distill_loss,
    soft_ensemble,
    total_objective,
)
from qrdistill.train.mutual import MutualHead, peer_pair_weight, project_to_shared
from qrdistill.train.router import Router, gumbel_multi_hot, routing_noise

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyStudent(nn.Module):
    """A differentiable stand-in for a student LM: span features -> hidden states and token NLL."""

    def __init__(self, feat: int, hidden: int):
        super().__init__()
        self.body = nn.Linear(feat, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.body(x))  # [B, N, H]
        return h, nn.functional.softplus(self.head(h)).squeeze(-1)  # hidden, token NLL [B, N]


def _run_objective(detach_target: bool, peer_paths: str, router_bias: float):
    torch.manual_seed(0)
    B, N, F, D = 8, 5, 7, 12
    hidden_sizes = [6, 8, 5]
    students = nn.ModuleList(ToyStudent(F, h) for h in hidden_sizes)
    router = Router(in_dim=D, num_students=len(students), hidden=16)
    with torch.no_grad():
        router.mlp[-1].bias.fill_(router_bias)
    head = MutualHead(hidden_sizes, shared_dim=4)
    x = torch.randn(B, N, F)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 3:] = False
    keys = [f"q{j // 2}/style{j % 2}/0" for j in range(B)]
    alpha = gumbel_multi_hot(router(torch.randn(B, D)), routing_noise(keys, 0, 7, len(students)), tau=1.0)
    outs = [st(x) for st in students]
    distill = [
        routed_distill_loss(nll, torch.ones_like(nll), mask, alpha[:, s]) for s, (_, nll) in enumerate(outs)
    ]
    path_losses = torch.stack([path_nll(nll, torch.ones_like(nll), mask) for _, nll in outs], dim=1)
    pw = peer_pair_weight(alpha, peer_paths)
    mut = head([h for h, _ in outs], mask, detach_target, pw, path_losses=path_losses.detach())
    total = total_objective(distill, assignment_entropy(alpha), mut.loss, 0.1, 0.5)
    total.backward()
    return students, router, head, alpha


@pytest.mark.parametrize("detach_target", [False, True])
@pytest.mark.parametrize("peer_paths,router_bias", [("all", 0.0), ("co_routed", 2.0)])
def test_every_trainable_parameter_receives_gradient(detach_target, peer_paths, router_bias):
    students, router, head, alpha = _run_objective(detach_target, peer_paths, router_bias)
    hard = alpha.detach()
    assert 0 < hard.mean() < 1  # a real routing decision, not all / nothing
    if peer_paths == "co_routed":
        # Precondition: every student shares some path with a peer.
        assert all(((hard[:, s] > 0) & (hard.sum(dim=1) >= 2)).any() for s in range(hard.shape[1]))
    named = [
        *(f"router.{n}" for n, _ in router.named_parameters()),
        *(f"head.{n}" for n, _ in head.named_parameters()),
        *(f"student.{n}" for n, _ in students.named_parameters()),
    ]
    params = [*router.parameters(), *head.parameters(), *students.parameters()]
    assert len(head.projections) == 3 and len(head.regressors) == 3
    for name, p in zip(named, params, strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} receives no gradient"


def _head_with_equal_projections(hidden: int, num_students: int, shared_dim: int = 4) -> MutualHead:
    head = MutualHead([hidden] * num_students, shared_dim)
    with torch.no_grad():
        for proj in head.projections[1:]:
            proj.weight.copy_(head.projections[0].weight)
    return head


def test_mutual_loss_is_zero_when_all_projections_agree():
    torch.manual_seed(1)
    z = torch.randn(3, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    head = _head_with_equal_projections(8, 3)
    out = head([z, z.clone(), z.clone()], mask, detach_target=False)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    # Equal z̃ is what matters, not equal hidden states: a rescaled state projects to the
    # same unit vector.
    out = head([z, 2.5 * z, 0.3 * z], mask, detach_target=False)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(out.gamma.sum(dim=1), torch.ones(3))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 10_000))
def test_mutual_loss_positive_and_bounded_when_students_disagree(S, B, N, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = [int(h) for h in torch.randint(3, 9, (S,), generator=g)]
    torch.manual_seed(seed)
    head = MutualHead(hidden, shared_dim=5)
    pooled = [torch.randn(B, N, h, generator=g) for h in hidden]
    mask = torch.ones(B, N, dtype=torch.bool)
    loss = head(pooled, mask, detach_target=False).loss.item()
    # Unit-norm z̃: each span's squared distance to a convex combination is at most 4.
    assert 0.0 < loss <= 4.0 * S


def test_mutual_loss_cannot_vanish_by_shrinking_the_projections():
    torch.manual_seed(2)
    head = MutualHead([8, 6], shared_dim=4)
    pooled = [torch.randn(2, 5, 8), torch.randn(2, 5, 6)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    base = head(pooled, mask, detach_target=False).loss.item()
    assert base > 0.05
    for c in (1e-6, 1e-3, 10.0):
        scaled = MutualHead([8, 6], shared_dim=4)
        with torch.no_grad():
            for dst, src in zip(scaled.parameters(), head.parameters(), strict=True):
                dst.copy_(src)
            for proj in scaled.projections:
                proj.weight.mul_(c)
        assert scaled(pooled, mask, detach_target=False).loss.item() == pytest.approx(base, rel=1e-4)
    # And gradient descent on the projections is not pulled towards zero norm: the loss
    # is scale-invariant, so its gradient is orthogonal to each projection's weight.
    head(pooled, mask, detach_target=False).loss.backward()
    for proj in head.projections:
        assert abs((proj.weight.grad * proj.weight).sum().item()) < 1e-6


def test_projection_is_per_span_unit_norm():
    proj = nn.Linear(8, 4, bias=False)
    z = project_to_shared(torch.randn(2, 3, 8), proj)
    assert z.shape == (2, 3, 4)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 3), atol=1e-5)


def test_masked_spans_do_not_count():
    torch.manual_seed(3)
    head = MutualHead([8, 8], shared_dim=4)
    pooled = [torch.randn(2, 5, 8), torch.randn(2, 5, 8)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = head(pooled, mask, detach_target=False)
    changed = [p.clone() for p in pooled]
    changed[0][0, 3:] = 50.0 * torch.randn(2, 8)
    again = head(changed, mask, detach_target=False)
    assert again.loss.item() == pytest.approx(base.loss.item(), rel=1e-6)
    assert torch.allclose(again.gamma, base.gamma)


def test_co_routed_single_student_path_contributes_nothing():
    torch.manual_seed(4)
    head = MutualHead([8, 6, 5], shared_dim=4)
    pooled = [torch.randn(3, 4, h, requires_grad=True) for h in (8, 6, 5)]
    mask = torch.ones(3, 4, dtype=torch.bool)
    # path 0: students {0, 2}; path 1: only student 1; path 2: nobody.
    pw = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = head(pooled, mask, detach_target=False, pair_weight=pw)
    only_path0 = head([p[:1] for p in pooled], mask[:1], detach_target=False, pair_weight=pw[:1])
    assert out.loss.item() == pytest.approx(only_path0.loss.item(), rel=1e-6)
    assert out.loss.item() > 0
    out.loss.backward()
    for p in pooled:
        assert p.grad[1:].abs().sum() == 0  # paths 1 and 2 get no mutual gradient
    assert pooled[1].grad.abs().sum() == 0  # student 1 shares no path
    assert torch.isfinite(out.gamma).all()
    # γ ranges only over the co-routed students.
    assert out.gamma[0, 1] == 0 and out.gamma[0].sum().item() == pytest.approx(1.0)
    assert out.gamma[1].tolist() == [0.0, 1.0, 0.0]
    assert out.gamma[2].tolist() == [0.0, 0.0, 0.0]
    z = [t.detach() for t in out.z_tilde]
    scores = torch.stack([head.regressors[s](z[s][0].mean(dim=0)).squeeze() for s in (0, 2)])
    assert torch.allclose(out.gamma[0, [0, 2]], torch.softmax(scores, dim=0), atol=1e-6)


def test_peer_pair_weight():
    alpha = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    assert peer_pair_weight(alpha, "all") is None
    pw = peer_pair_weight(alpha, "co_routed")
    assert pw.dtype == torch.bool and pw.tolist() == [[True, False], [True, True]]
    with pytest.raises(ConfigError, match=r"train\.mutual\.peer_paths"):
        peer_pair_weight(alpha, "everyone")


def _two_student_batch(seed: int = 5):
    torch.manual_seed(seed)
    head = MutualHead([8, 6], shared_dim=4)
    pooled = [torch.randn(4, 5, 8, requires_grad=True), torch.randn(4, 5, 6, requires_grad=True)]
    mask = torch.ones(4, 5, dtype=torch.bool)
    return head, pooled, mask


def _sgd_step(module: nn.Module, lr: float) -> None:
    # Plain SGD by hand: torch.optim's first use costs seconds of lazy imports.
    with torch.no_grad():
        for p in module.parameters():
            p -= lr * p.grad


def test_detach_target_needs_path_losses():
    head, pooled, mask = _two_student_batch()
    with pytest.raises(ValueError, match="path_losses"):
        head(pooled, mask, detach_target=True)


def test_detach_target_semantics():
    head, pooled, mask = _two_student_batch()
    losses = torch.tensor([[0.5, 2.0]] * 4)
    out = head(pooled, mask, detach_target=True, path_losses=losses)
    out.mse.backward(retain_graph=True)
    # Stop-gradient on z_ens: eq. 8 trains the students and projections, never w_s.
    assert all(r.weight.grad is None for r in head.regressors)
    assert all(p.weight.grad.abs().sum() > 0 for p in head.projections)
    assert all(p.grad.abs().sum() > 0 for p in pooled)
    head.zero_grad()
    for p in pooled:
        p.grad = None
    out.competence.backward()
    # The competence term trains w_s only.
    assert all(r.weight.grad.abs().sum() > 0 for r in head.regressors)
    assert all(p.weight.grad is None or p.weight.grad.abs().sum() == 0 for p in head.projections)
    assert all(p.grad is None for p in pooled)


def test_detach_target_gamma_learns_which_student_fits_the_path_better():
    head, pooled, mask = _two_student_batch()
    pooled = [p.detach() for p in pooled]
    losses = torch.tensor([[0.5, 2.0], [0.4, 1.5], [3.0, 1.0], [2.5, 0.2]])  # paths 2, 3 favour student 1
    for _ in range(60):
        head.zero_grad()
        head(pooled, mask, detach_target=True, path_losses=losses).loss.backward()
        _sgd_step(head.regressors, lr=2.0)
    gamma = head(pooled, mask, detach_target=True, path_losses=losses).gamma
    assert (gamma[:2, 0] > 0.6).all() and (gamma[2:, 1] > 0.6).all()


def test_not_detached_regressors_learn_through_mse_and_two_students_drift_to_uniform():
    head, pooled, mask = _two_student_batch()
    pooled = [p.detach() for p in pooled]
    with torch.no_grad():  # start far from uniform
        head.regressors[0].weight.mul_(10.0)
    gamma0 = head(pooled, mask, detach_target=False).gamma
    assert (gamma0[:, 0] - 0.5).abs().mean() > 0.2
    for _ in range(200):
        head.zero_grad()
        head(pooled, mask, detach_target=False).loss.backward()
        _sgd_step(head.regressors, lr=1.0)
    gamma = head(pooled, mask, detach_target=False).gamma
    # For S = 2, Σ_s ||z̃_s − z_ens||² = (γ_0² + γ_1²)·||z̃_0 − z̃_1||² is smallest at γ = 1/2.
    assert (gamma[:, 0] - 0.5).abs().max() < 0.1


def test_equation_functions_compose_like_the_head():
    torch.manual_seed(6)
    head = MutualHead([8, 6], shared_dim=4)
    pooled = [torch.randn(2, 3, 8), torch.randn(2, 3, 6)]
    mask = torch.ones(2, 3, dtype=torch.bool)
    z = [project_to_shared(p, proj) for p, proj in zip(pooled, head.projections, strict=True)]
    gamma = competence_scores(z, mask, head.regressors)
    z_ens = soft_ensemble(z, gamma)
    assert z_ens.shape == (2, 3, 4)
    expected = sum(((zs - z_ens) ** 2).sum(-1).mean(-1) for zs in z).mean()
    assert mutual_mse(z, z_ens, mask, None).item() == pytest.approx(expected.item(), rel=1e-6)
    assert head(pooled, mask, detach_target=False).loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_single_student_has_no_mutual_term():
    head = MutualHead([8], shared_dim=4)
    out = head([torch.randn(2, 3, 8)], torch.ones(2, 3, dtype=torch.bool), detach_target=False)
    assert out.loss.item() == 0.0 and out.gamma.tolist() == [[1.0], [1.0]]


def test_shape_mismatch_is_reported():
    head = MutualHead([8, 6], shared_dim=4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="student 1"):
        head([torch.randn(2, 3, 8), torch.randn(2, 3, 7)], mask, detach_target=False)
    with pytest.raises(ValueError, match="projections"):
        head([torch.randn(2, 3, 8)], mask, detach_target=False)


def test_collaboration_reaches_real_students_with_different_tokenizers(tmp_path):
    """Real tiny LoRA students (Llama + byte BPE, GPT-2 + unigram) through span alignment."""
    from qrdistill.train.alignment import align_students
    from qrdistill.train.students import load_students
    from tests.tiny_models import make_tiny_students

    paths = make_tiny_students(tmp_path)
    students = load_students([{"name": "llama", "model": paths[0]}, {"name": "gpt2", "model": paths[1]}])
    prompts = ["Question: Jane has 12 apples and buys 30 more. How many?\n", "Q: 7 * 8 - 6?\n"]
    responses = ["She has 12 + 30 = 42 apples. The answer is 42.", "First, 7 * 8 = 56. Then 56 - 6 = 50."]
    batches = [s.encode(prompts, responses, max_length=256) for s in students]
    outputs = [s.forward(b) for s, b in zip(students, batches, strict=True)]
    pooled, span_mask = align_students(outputs, batches)
    head = MutualHead([s.hidden_size for s in students], shared_dim=8)
    alpha = torch.ones(2, 2)
    out = head(pooled, span_mask, detach_target=False, pair_weight=peer_pair_weight(alpha, "co_routed"))
    assert out.loss.item() > 0 and torch.isfinite(out.gamma).all()
    out.loss.backward(retain_graph=True)
    for s in students:
        grads = [p.grad for p in s.trainable_parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, f"{s.name} gets no mutual gradient"
    distill = [
        routed_distill_loss(o.token_nll, b.loss_weight, b.response_mask, alpha[:, i])
        for i, (o, b) in enumerate(zip(outputs, batches, strict=True))
    ]
    assert all(d.item() > 0 for d in distill)
    total_objective(distill, assignment_entropy(alpha), out.loss, 0.1, 0.1).backward()


@pytest.mark.parametrize("init", ["shared", "independent"])
def test_identical_students_start_with_zero_mutual_loss_only_with_shared_init(tmp_path, init):
    """Two LoRA adapters on one base have identical hidden states at step 0 (LoRA B starts at 0):
    with shared projections eq. 8 is exactly 0 there; independent projections start it with noise."""
    from qrdistill.train.alignment import align_students
    from qrdistill.train.students import load_students
    from tests.tiny_models import make_tiny_students

    paths = make_tiny_students(tmp_path)
    students = load_students([{"name": "first", "model": paths[0], "lora": {"r": 4, "dropout": 0.0}},
                              {"name": "second", "model": paths[0], "lora": {"r": 2, "dropout": 0.0}}])
    prompts = ["Question: Jane has 12 apples and buys 30 more. How many?\n", "Q: 7 * 8 - 6?\n"]
    responses = ["She has 12 + 30 = 42 apples. The answer is 42.", "First, 7 * 8 = 56. Then 56 - 6 = 50."]
    batches = [s.encode(prompts, responses, max_length=256) for s in students]
    outputs = [s.forward(b) for s, b in zip(students, batches, strict=True)]
    assert torch.equal(outputs[0].hidden, outputs[1].hidden)
    pooled, span_mask = align_students(outputs, batches)
    torch.manual_seed(0)
    head = MutualHead([s.hidden_size for s in students], shared_dim=8, init=init)
    out = head(pooled, span_mask, detach_target=True, path_losses=torch.ones(2, 2))
    if init == "shared":
        assert out.mse.item() == 0.0
        assert torch.allclose(out.gamma, torch.full((2, 2), 0.5))
    else:
        assert out.mse.item() > 0.1


def test_shared_init_leaves_students_of_other_widths_independent():
    torch.manual_seed(0)
    head = MutualHead([8, 6, 8], shared_dim=4, init="shared")
    assert torch.equal(head.projections[0].weight, head.projections[2].weight)
    assert head.projections[1].weight.shape == (4, 6)
    assert all(torch.equal(r.weight, head.regressors[0].weight) for r in head.regressors)
