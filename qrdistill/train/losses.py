"""The loss terms of QR-Distill (paper eqs. 3–4 and 6–9), as pure tensor functions.

Shapes: B paths in a batch, S students, T tokens, N aligned spans, k = shared dim.
``alpha [B, S]`` is the routing assignment of eq. 2 (straight-through: exact 0/1 forward,
soft gradient backward). docs/method.md explains every normalisation chosen here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# log(0) guard of the entropy. Clamping only the argument of the log (never the
# probability itself) keeps a finite gradient that points back to 1/2 at 0 and 1.
ENTROPY_EPS = 1e-6


def mean_assignment(alpha: Tensor) -> Tensor:
    """Eq. 3: ``alpha [B, S]`` -> scalar ``ᾱ = (1 / (S·B)) Σ_j Σ_s alpha_j[s]``."""
    return alpha.float().mean()


def binary_entropy(p: Tensor) -> Tensor:
    """Eq. 4's ``-p log p - (1-p) log(1-p)`` elementwise, in nats; 0 at p ∈ {0, 1}, ln 2 at 1/2."""
    p = p.float()
    q = 1.0 - p
    return -(p * torch.log(p.clamp_min(ENTROPY_EPS)) + q * torch.log(q.clamp_min(ENTROPY_EPS)))


def per_question_mean_assignment(alpha: Tensor, question_index: Tensor) -> Tensor:
    """Eq. 3 as written, per question i: ``alpha [B, S]``, ``question_index [B]`` long -> ``[Q]``.

    ``ᾱ^(i)`` averages over the paths of question i present in the batch and all
    students; Q = number of distinct questions in the batch (order of first appearance
    does not matter: the result is only ever averaged).
    """
    _, inverse = torch.unique(question_index, return_inverse=True)
    inverse = inverse.to(alpha.device)
    num_q = int(inverse.max().item()) + 1 if inverse.numel() else 0
    sums = torch.zeros(num_q, dtype=torch.float32, device=alpha.device)
    sums = sums.index_add(0, inverse, alpha.float().sum(dim=1))
    counts = torch.zeros(num_q, dtype=torch.float32, device=alpha.device)
    counts = counts.index_add(0, inverse, torch.full_like(inverse, alpha.shape[1], dtype=torch.float32))
    return sums / counts


def assignment_entropy(alpha: Tensor, question_index: Tensor | None = None) -> Tensor:
    """Eq. 4: entropy of the mean routing assignment (scalar). The objective MAXIMISES it.

    ``alpha [B, S]``. Without ``question_index`` (default, ``train.router.entropy_scope:
    batch``): ``H(ᾱ)`` with ᾱ the mean over the batch's paths and students. With
    ``question_index [B]`` (``entropy_scope: question``): eq. 3 per question, the mean
    over questions of ``H(ᾱ^(i))``. Why batch is the default: with paths drawn at random,
    most questions have one path in a batch, and ``H(ᾱ^(i))`` of a single path pushes
    that path to exactly S/2 students (for S = 2: exactly one), i.e. it forbids the
    multi-hot routing eq. 2 allows; the batch mean only keeps overall usage balanced.
    """
    if alpha.numel() == 0:
        return alpha.new_zeros(())
    if question_index is None:
        return binary_entropy(mean_assignment(alpha))
    return binary_entropy(per_question_mean_assignment(alpha, question_index)).mean()


def load_entropy(alpha: Tensor) -> Tensor:
    """The load term (maximised, weight ``train.lambda_load``): ``(1/S) Σ_s H(ᾱ_s)``, ``alpha [B, S]`` -> scalar.

    ``ᾱ_s`` is student s's own mean assignment over the batch. Eq. 3's ``H(ᾱ)`` pools all students,
    so it is at its maximum when one student takes every path and another none (ᾱ = 1/2): it sets
    how many routes there are, not who gets them. Each student's own entropy is 0 when that student
    is starved (ᾱ_s = 0) or flooded (ᾱ_s = 1), so maximising their mean keeps every student in use
    while leaving each path free to go to any subset.
    """
    if alpha.numel() == 0:
        return alpha.new_zeros(())
    return binary_entropy(alpha.float().mean(dim=0)).mean()


def relative_losses(losses: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Each student's loss on a path minus the mean of the other observed students' -> ``(r, defined)``.

    ``losses [B, S]``, ``observed [B, S]`` bool -> ``r [B, S]`` (0 where not defined) and ``defined [B, S]``:
    observed, with at least one other observed student on the same path. Difficulty that every
    student shares adds the same amount to each ``ℓ_js`` and cancels.
    """
    obs = observed.bool()
    vals = torch.where(obs, losses.float(), torch.zeros_like(losses, dtype=torch.float32))
    n_obs = obs.sum(dim=1, keepdim=True)
    others = (vals.sum(dim=1, keepdim=True) - vals) / (n_obs - obs.long()).clamp_min(1)
    defined = obs & (n_obs >= 2)
    r = torch.where(defined, vals - others, torch.zeros_like(vals))
    return r, defined


def own_mean_advantage(losses: Tensor, routed: Tensor) -> Tensor:
    """The router signal eq. 9's straight-through distill gradient gives: ``A_js = (ℓ_js − L_s) / n_s``.

    ``losses [B, S]`` per-path distill losses, ``routed [B, S]`` bool -> ``A [B, S]`` (0 off the routed
    entries); ``L_s`` is student s's mean over its n_s routed paths. ``Σ alpha·A`` has exactly the
    router gradient of ``Σ_s routed_distill_loss`` (``train.router.signal: own_mean``).
    """
    m = routed.float()
    n = m.sum(dim=0).clamp_min(1.0)
    vals = torch.where(routed.bool(), losses.float(), torch.zeros_like(losses, dtype=torch.float32))
    mean = vals.sum(dim=0) / n
    return (vals - mean) * m / n


def routing_fit_term(alpha: Tensor, advantage: Tensor) -> Tensor:
    """``Σ_js alpha_js · A_js`` (scalar): minimising it moves each path towards the students it fits.

    ``alpha [B, S]`` straight-through (its gradient reaches the router logits); ``advantage [B, S]``
    is detached: the router learns from the students' losses but never changes them.
    """
    return (alpha.float() * advantage.detach().float()).sum()


def path_nll(token_nll: Tensor, loss_weight: Tensor, response_mask: Tensor) -> Tensor:
    """Per-path SFT loss: ``[B, T]`` x3 -> ``[B]``, the weighted mean token NLL on response tokens.

    ``ℓ_j = Σ_t nll·w·m / Σ_t w·m``: a weighted average, so upweighting answer tokens
    shifts emphasis without changing the loss scale. A path without response tokens
    has ``ℓ_j = 0``.
    """
    w = loss_weight.float() * response_mask.float()
    return (token_nll.float() * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-8)


def routed_distill_loss(
    token_nll: Tensor, loss_weight: Tensor, response_mask: Tensor, route_weight: Tensor
) -> Tensor:
    """``L_distill^(s)`` of eq. 9: one student's SFT loss on the paths routed to it (scalar).

    ``token_nll, loss_weight, response_mask [B, T]``; ``route_weight [B] = alpha[:, s]``
    (straight-through: 0/1 forward, soft gradient). ``L = Σ_j alpha_j·ℓ_j / Σ_j alpha_j``,
    the mean of ``ℓ_j = path_nll(...)`` over the student's routed paths, so routing never
    acts as a hidden learning-rate scale (each routed path's tokens get weight ``1/n_s``).
    The denominator is NOT detached, which makes the router's gradient centred:
    ``∂L/∂alpha_j = (ℓ_j − L) / n_s`` — a path whose loss is above the student's mean is
    pushed away from it, one below is pulled towards it, and the distill term exerts no
    net push on the routing rate (with a detached count every ``∂L/∂alpha_j = ℓ_j/n_s >
    0`` and the router drifts towards routing nothing; the entropy term alone governs the
    rate here). Only rows of routed paths need real ``ℓ_j``; when nothing is routed the
    loss is 0 and carries no gradient.
    """
    ell = path_nll(token_nll, loss_weight, response_mask)
    r = route_weight.to(ell.dtype)
    total = r.sum()
    routed = (total.detach() > 0).to(ell.dtype)
    # Tensor ops only (no .item()): no host sync per student on GPU.
    return routed * (r * ell).sum() / (total + (1.0 - routed))


def _masked_span_mean(z: Tensor, mask: Tensor) -> Tensor:
    """``z [B, N, k]``, ``mask [B, N]`` -> ``[B, k]`` mean over valid spans (0 where none)."""
    m = mask.to(z.dtype).unsqueeze(-1)
    return (z * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _masked_softmax(scores: Tensor, student_mask: Tensor | None) -> Tensor:
    """Softmax over students ``[B, S]`` restricted to ``student_mask``; rows with no student -> 0."""
    if student_mask is None:
        return torch.softmax(scores, dim=-1)
    keep = student_mask.bool()
    any_kept = keep.any(dim=-1, keepdim=True)
    # Rows with no kept student would be all -inf (NaN softmax, NaN gradients that a
    # later multiplication by 0 cannot remove); give them finite scores, then zero them.
    filled = scores.masked_fill(~keep, float("-inf")).masked_fill(~any_kept, 0.0)
    return torch.softmax(filled, dim=-1) * any_kept.to(scores.dtype)


def competence_scores(
    z_tilde: list[Tensor], mask: Tensor, regressors: nn.ModuleList, student_mask: Tensor | None = None
) -> Tensor:
    """Eq. 6: ``γ_s = softmax_s(w_sᵀ · mean_t(z̃_s))`` -> ``gamma [B, S]``.

    ``z_tilde``: S tensors ``[B, N, k]``; ``mask [B, N]`` marks valid spans (the mean
    is over them only); ``regressors``: S ``Linear(k, 1)``. ``student_mask [B, S]``
    (co-routed students) restricts the softmax to the students a path was routed to.
    """
    if len(z_tilde) != len(regressors):
        raise ValueError(f"{len(z_tilde)} students but {len(regressors)} competence regressors")
    scores = torch.cat([reg(_masked_span_mean(z, mask)) for z, reg in zip(z_tilde, regressors, strict=True)], dim=-1)
    return _masked_softmax(scores, student_mask)


def soft_ensemble(z_tilde: list[Tensor], gamma: Tensor) -> Tensor:
    """Eq. 7: ``z_ens = Σ_s γ_s · z̃_s`` -> ``[B, N, k]`` (``z_tilde``: S x ``[B, N, k]``, ``gamma [B, S]``)."""
    stacked = torch.stack(z_tilde, dim=1)  # [B, S, N, k]
    return (gamma.to(stacked.dtype)[:, :, None, None] * stacked).sum(dim=1)


def mutual_mse(z_tilde: list[Tensor], z_ens: Tensor, mask: Tensor, pair_weight: Tensor | None) -> Tensor:
    """Eq. 8: ``Σ_s ||z̃_s − z_ens||²`` (scalar), averaged over spans and contributing paths.

    ``z_tilde``: S x ``[B, N, k]``; ``z_ens [B, N, k]``; ``mask [B, N]`` valid spans;
    ``pair_weight [B, S]`` (routing assignment; read as a 0/1 mask, no gradient) or None
    (= every student on every path). Per path j: ``Σ_s pw_js · mean_{valid n} ||z̃_s[j, n] − z_ens[j, n]||²``; a path contributes
    when at least two students take part, and the result is the mean over contributing
    paths (0 when none). The squared distance is summed over the k dims, as in eq. 8.
    """
    stacked = torch.stack(z_tilde, dim=1)  # [B, S, N, k]
    B, S = stacked.shape[:2]
    if pair_weight is None:
        pw = torch.ones(B, S, device=stacked.device)
    else:
        pw = (pair_weight.detach() > 0.5).to(stacked.dtype)
    sq = ((stacked - z_ens.unsqueeze(1)) ** 2).sum(dim=-1)  # [B, S, N]
    m = mask.to(sq.dtype).unsqueeze(1)
    per_student = (sq * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)  # [B, S]
    per_path = (per_student * pw).sum(dim=-1)  # [B]
    contributes = ((pw > 0).sum(dim=-1) >= 2) & mask.bool().any(dim=-1)
    c = contributes.to(per_path.dtype)
    return (per_path * c).sum() / c.sum().clamp_min(1.0)


def competence_target_loss(gamma: Tensor, path_losses: Tensor, student_mask: Tensor | None) -> Tensor:
    """Auxiliary training signal for eq. 6's regressors when the ensemble target is detached.

    ``gamma [B, S]`` (eq. 6, already restricted to ``student_mask``); ``path_losses
    [B, S]``: each student's per-path distill loss ``ℓ_j`` (from ``path_nll``, detached).
    Cross-entropy of γ against ``softmax_s(−ℓ_js)`` over the path's students: a student
    gets more ensemble weight on paths where it predicts the teacher's path better. Mean
    over paths with at least two students (0 when none).
    """
    target = _masked_softmax(-path_losses.detach().float(), student_mask)
    keep = torch.ones_like(target, dtype=torch.bool) if student_mask is None else student_mask.bool()
    logg = torch.log(gamma.clamp_min(1e-12))
    ce = -(target * logg * keep.to(logg.dtype)).sum(dim=-1)  # [B]
    c = (keep.sum(dim=-1) >= 2).to(ce.dtype)
    return (ce * c).sum() / c.sum().clamp_min(1.0)


def total_objective(
    distill: list[Tensor], entropy: Tensor, mutual: Tensor, lambda_entropy: float, lambda_mutual: float,
    load: Tensor | None = None, lambda_load: float = 0.0,
) -> Tensor:
    """Eq. 9: ``L = Σ_s L_distill^(s) − λ1·H(ᾱ) + λ2·L_mutual`` (scalar), minus ``λ_load·load`` when given.

    ``distill``: one scalar per student. The paper maximises the routing entropy, so it
    enters with a minus sign (minimising L maximises H); the load term (`load_entropy`) is
    maximised the same way. ``λ1, λ2, λ_load ≥ 0``.
    """
    if lambda_entropy < 0 or lambda_mutual < 0 or lambda_load < 0:
        raise ValueError(f"loss weights must be >= 0, got λ1={lambda_entropy}, λ2={lambda_mutual}, "
                         f"λ_load={lambda_load}")
    if not distill:
        raise ValueError("total_objective needs the distill loss of at least one student")
    total = torch.stack([d.float() for d in distill]).sum() - lambda_entropy * entropy + lambda_mutual * mutual
    if load is not None:
        total = total - lambda_load * load
    return total
