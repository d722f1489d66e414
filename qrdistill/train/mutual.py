"""Mutual-student distillation (paper section 2.5, eqs. 5–8).

Inputs are span-pooled last hidden states, one ``[B, N, H_s]`` tensor per student, and a
span mask ``[B, N]`` (``qrdistill.train.alignment.align_students``): span n of path j is
the same piece of text for every student, whatever its tokenizer, so students are
compared span against span, never token position against token position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from qrdistill.errors import ConfigError
from qrdistill.train.losses import competence_scores, competence_target_loss, mutual_mse, soft_ensemble

PEER_PATHS = ("co_routed", "all")


@dataclass
class MutualOutput:
    loss: Tensor  # scalar: the λ2 term of eq. 9 (eq. 8's MSE, plus the competence term if detached)
    gamma: Tensor  # [B, S] eq. 6 competence weights (0 for students outside a path's peer set)
    z_tilde: list[Tensor]  # S x [B, N, k] eq. 5 projections, unit L2 norm per span
    mse: Tensor  # scalar: eq. 8 alone
    competence: Tensor  # scalar: auxiliary competence loss (0 unless detach_target)


def peer_pair_weight(alpha: Tensor, peer_paths: str) -> Tensor | None:
    """Which students take part in each path's mutual term -> ``[B, S]`` bool, or None (= all).

    ``co_routed`` (default): the students the path was routed to (``alpha [B, S]``), so
    the forward passes that serve the distill loss serve the mutual loss too and routing
    keeps its cost saving. ``all``: every student on every path.
    """
    if peer_paths == "all":
        return None
    if peer_paths == "co_routed":
        return alpha.detach() > 0.5
    raise ConfigError(f"train.mutual.peer_paths: expected one of {list(PEER_PATHS)}, got {peer_paths!r}")


def project_to_shared(z: Tensor, projection: nn.Linear) -> Tensor:
    """Eq. 5: ``z̃_s = Proj_s(z_s)`` -> ``[B, N, k]`` from ``z [B, N, H_s]``, L2-normalised per span.

    Normalising makes eq. 8 invariant to the projection's scale: the projections cannot
    shrink towards zero to make the MSE vanish (a trivial collapse), and ``||z̃||² = 1``
    bounds each span's squared distance to [0, 4] whatever ``shared_dim`` is.
    """
    return F.normalize(projection(z.float()), dim=-1)


class MutualHead(nn.Module):
    """Per-student projections ``Proj_s: Linear(H_s -> k)`` (eq. 5) and competence
    regressors ``w_s: Linear(k -> 1)`` (eq. 6); ``forward`` computes eqs. 5–8.

    Both are bias-free, as in the paper's ``Proj_s(z)`` and ``w_sᵀ·mean_t(z̃)``: a bias
    in Proj_s would let every student output the same constant vector (MSE 0 for free).
    ``init`` (``train.mutual.init``): ``shared`` starts students of equal width with one
    projection, so identical students start at a zero mutual loss; ``independent`` draws each.
    """

    def __init__(self, hidden_sizes: list[int], shared_dim: int = 128, init: str = "shared"):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("MutualHead needs at least one student")
        if shared_dim < 1:
            raise ValueError(f"shared_dim must be >= 1, got {shared_dim}")
        self.hidden_sizes = list(hidden_sizes)
        self.shared_dim = shared_dim
        if init not in ("shared", "independent"):
            raise ConfigError(f"train.mutual.init: expected shared or independent, got {init!r}")
        self.projections = nn.ModuleList(nn.Linear(h, shared_dim, bias=False) for h in hidden_sizes)
        self.regressors = nn.ModuleList(nn.Linear(shared_dim, 1, bias=False) for _ in hidden_sizes)
        if init == "shared":
            # Two adapters on one base have identical hidden states at step 0 (LoRA's B starts at 0);
            # with independent random projections eq. 8 would still start near 1.7 and its gradient
            # would only distort the students until the projections line up. Students of one width
            # share the first one's initial projection, and every regressor starts alike (γ uniform).
            first: dict[int, nn.Linear] = {}
            for h, proj in zip(hidden_sizes, self.projections, strict=True):
                if h in first:
                    proj.weight.data.copy_(first[h].weight.data)
                else:
                    first[h] = proj
            for reg in self.regressors[1:]:
                reg.weight.data.copy_(self.regressors[0].weight.data)

    def forward(
        self,
        pooled: list[Tensor],
        mask: Tensor,
        detach_target: bool,
        pair_weight: Tensor | None = None,
        path_losses: Tensor | None = None,
    ) -> MutualOutput:
        """Eqs. 5–8 on one batch.

        ``pooled``: S x ``[B, N, H_s]`` span-pooled hidden states; ``mask [B, N]`` valid
        spans; ``pair_weight [B, S]`` the students taking part per path (see
        ``peer_pair_weight``; None = all). ``detach_target=False``: the ensemble target
        carries gradient, so ``w_s`` and every projection learn through eq. 8.
        ``detach_target=True``: stop-gradient on ``z_ens`` (each student is pulled to a
        fixed target); ``w_s`` would then get no gradient, so they are trained by
        ``competence_target_loss`` on ``path_losses [B, S]`` (each student's per-path
        distill loss), which is then required.
        """
        if len(pooled) != len(self.projections):
            raise ValueError(f"{len(pooled)} students' hidden states for {len(self.projections)} projections")
        for s, (z, h) in enumerate(zip(pooled, self.hidden_sizes, strict=True)):
            if z.dim() != 3 or z.shape[-1] != h or z.shape[:2] != mask.shape:
                raise ValueError(
                    f"student {s}: pooled hidden states {tuple(z.shape)} do not match "
                    f"span mask {tuple(mask.shape)} and hidden size {h}"
                )
        if detach_target and path_losses is None:
            raise ValueError("detach_target=True needs path_losses [B, S] to train the competence regressors")
        student_mask = None if pair_weight is None else pair_weight.detach() > 0.5
        z_tilde = [project_to_shared(z, proj) for z, proj in zip(pooled, self.projections, strict=True)]
        if detach_target:
            # γ sees detached projections: the competence term trains w_s only and does
            # not bend the shared space (or the students) towards predicting their losses.
            gamma = competence_scores([z.detach() for z in z_tilde], mask, self.regressors, student_mask)
            z_ens = soft_ensemble(z_tilde, gamma).detach()
            competence = competence_target_loss(gamma, path_losses, student_mask)
        else:
            gamma = competence_scores(z_tilde, mask, self.regressors, student_mask)
            z_ens = soft_ensemble(z_tilde, gamma)
            competence = z_ens.new_zeros(())
        mse = mutual_mse(z_tilde, z_ens, mask, student_mask)
        return MutualOutput(loss=mse + competence, gamma=gamma, z_tilde=z_tilde, mse=mse, competence=competence)

