"""Conditional routing (paper section 2.4, eqs. 1–2).

A frozen text encoder embeds each reasoning path (eq. 1); a small MLP maps the
embedding to one logit per student; a per-student two-way Gumbel-softmax with a
straight-through hard sample turns the logits into a multi-hot assignment
``alpha in {0,1}^S`` (eq. 2). The Gumbel noise is a pure function of
``(seed, epoch, path key)`` so every rank of a distributed run makes the same
routing decision for a path, whatever batch it lands in.

Only the train stage imports this module (the CLI loads stages lazily), so torch is
imported at the top; transformers / sentence-transformers load inside PathEncoder.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import torch
from torch import Tensor, nn

from qrdistill.errors import ConfigError

ENCODER_FIELD = "train.router.encoder"


class PathEncoder:
    """Frozen encoder of eq. 1: ``h_j = Enc(R_j)``, texts -> ``[N, d]`` float32.

    ``"minilm"`` (and its aliases) loads the bundled all-MiniLM-L6-v2 through
    sentence-transformers (mean pooling + L2 normalisation, as the model was trained).
    Any other name is an HF encoder id or local dir loaded with AutoModel/AutoTokenizer
    and mean-pooled over the attention mask (e.g. ``roberta-base`` when online).
    The encoder never trains: eval mode, no grad.
    """

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64):
        from qrdistill.models import MINILM_ALIASES, resolve_model

        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{ENCODER_FIELD}: expected an encoder name, got {name!r}")
        if batch_size < 1:
            raise ConfigError(f"{ENCODER_FIELD}: batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._st = None
        self._model = None
        self._tokenizer = None
        if name in MINILM_ALIASES:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(resolve_model(name), device=device)
            self._st.eval()
            get_dim = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
            self.dim = int(get_dim())
        else:
            from transformers import AutoModel, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(name)
                self._model = AutoModel.from_pretrained(name)
            except (OSError, ValueError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"{ENCODER_FIELD}: cannot load encoder {name!r}: {first}") from None
            self._model.to(device).eval()
            self._model.requires_grad_(False)
            self.dim = int(self._model.config.hidden_size)
            max_len = getattr(self._tokenizer, "model_max_length", 512) or 512
            # Tokenizers without a limit report a huge sentinel; the model's positions cap it.
            positions = getattr(self._model.config, "max_position_embeddings", 512) or 512
            self.max_length = int(min(max_len, positions, 512))

    def encode(self, texts: list[str]) -> Tensor:
        """Embed ``texts`` -> ``[N, d]`` float32 on CPU (eq. 1), batched, no grad."""
        if not texts:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        show = len(texts) > 4 * self.batch_size
        if self._st is not None:
            with torch.no_grad():
                emb = self._st.encode(
                    list(texts), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=show
                )
            return emb.detach().float().cpu()
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        with torch.no_grad():
            for i in tqdm(starts, desc=f"encode paths ({self.name})", disable=not show):
                enc = self._tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state.float()
                out.append(masked_mean_pool(hidden, enc["attention_mask"]).cpu())
        return torch.cat(out, dim=0)


def masked_mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden [N, T, d]`` over positions where ``attention_mask [N, T]`` is set -> ``[N, d]``.

    Padding must not move an embedding: a text embeds the same alone or beside longer texts.
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _router_mlp(in_dim: int, num_students: int, hidden: int, dropout: float) -> nn.Sequential:
    last = nn.Linear(hidden, num_students)
    # Near-zero logits at start: every path goes to each student with probability about
    # 1/2 (the entropy regulariser's maximum), so training starts from balanced routing.
    # Small rather than zero weights: a zero last layer would block the first layer's
    # gradient on the first step.
    nn.init.normal_(last.weight, std=1e-2)
    nn.init.zeros_(last.bias)
    # Sentence embeddings are L2-normalised (MiniLM: entries of about 0.05), so without the
    # LayerNorm the hidden units sit near 0.01 and an Adam step of size lr moves a logit by
    # about lr * 4: routing could not leave 1/2 in a short run. Standardised inputs give O(1)
    # hidden units, so a logit moves by up to lr * hidden / 3 per step.
    return nn.Sequential(
        nn.LayerNorm(in_dim, elementwise_affine=False),
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), last,
    )


class Router(nn.Module):
    """Eq. 2's MLP: path embeddings ``h [B, d]`` -> routing logits ``[B, S]``.

    ``LayerNorm(d) -> Linear(d, hidden) -> GELU -> Dropout -> Linear(hidden, S)``. The last
    layer starts near zero, so ``P(alpha[s] = 1) ≈ sigmoid(0) = 1/2`` for every path and
    student before training.
    """

    def __init__(self, in_dim: int, num_students: int, hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        if num_students < 1:
            raise ValueError(f"Router needs at least one student, got {num_students}")
        self.in_dim = in_dim
        self.num_students = num_students
        self.mlp = _router_mlp(in_dim, num_students, hidden, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(h.float())


def _uniforms(seed: int, epoch: int, key: str, count: int) -> list[float]:
    """``count`` uniforms in (0, 1), a pure function of (seed, epoch, key).

    Counter-mode SHA-256: block b hashes ``seed|epoch|key|b`` and yields four 53-bit
    uniforms. No RNG state is involved, so the values do not depend on the platform,
    the torch version, the batch a key lands in, or its position in it.
    """
    out: list[float] = []
    block = 0
    while len(out) < count:
        digest = hashlib.sha256(f"{seed}\x1f{epoch}\x1f{key}\x1f{block}".encode()).digest()
        for (word,) in struct.iter_unpack(">Q", digest):
            # +0.5 keeps the uniform strictly inside (0, 1): -log(-log u) stays finite.
            out.append(((word >> 11) + 0.5) / 2.0**53)
        block += 1
    return out[:count]


def routing_noise(path_keys: list[str], epoch: int, seed: int, num_students: int) -> Tensor:
    """Gumbel(0, 1) noise for eq. 2's two-way Gumbel-softmax -> ``[B, S, 2]`` float32.

    ``[..., 0]`` perturbs the "assign" logit, ``[..., 1]`` the "do not assign" logit (0).
    Derived by hashing (seed, epoch, path key): identical on every rank, independent of
    batch composition and order, fresh each epoch.
    """
    rows = []
    for key in path_keys:
        u = _uniforms(seed, epoch, str(key), 2 * num_students)
        rows.append([-math.log(-math.log(x)) for x in u])
    if not rows:
        return torch.zeros(0, num_students, 2)
    return torch.tensor(rows, dtype=torch.float64).view(len(path_keys), num_students, 2).float()


def gumbel_multi_hot(logits: Tensor, noise: Tensor | None, tau: float, hard: bool = True) -> Tensor:
    """Eq. 2: routing logits ``[B, S]`` -> multi-hot assignment ``alpha [B, S]``.

    Each student is an independent two-way Gumbel-softmax between "assign" (logit
    ``l``) and "do not assign" (logit 0): ``p = softmax((l + g0, 0 + g1) / tau)[0] =
    sigmoid((l + g0 - g1) / tau)``. With ``hard`` the forward value is exactly
    ``1[l + g0 - g1 > 0]`` while the backward pass uses ``p``'s gradient
    (straight-through), so the router learns from every loss that uses ``alpha``.
    ``noise`` is ``routing_noise(...)`` ``[B, S, 2]``; ``None`` means noise-free
    (evaluation / deterministic routing).
    """
    if tau <= 0:
        raise ValueError(f"Gumbel temperature must be > 0, got {tau}")
    if noise is None:
        perturbed = logits
    else:
        if noise.shape != (*logits.shape, 2):
            raise ValueError(f"routing noise has shape {tuple(noise.shape)}, expected {(*logits.shape, 2)}")
        noise = noise.to(device=logits.device, dtype=logits.dtype)
        perturbed = logits + noise[..., 0] - noise[..., 1]
    soft = torch.sigmoid(perturbed / tau)
    if not hard:
        return soft
    sample = (perturbed > 0).to(soft.dtype)
    # `sample + (soft - soft.detach())` is exactly 0/1 in the forward pass (x - x == 0
    # in floating point), unlike the usual `sample - soft.detach() + soft`.
    return sample + (soft - soft.detach())


def assignment_probabilities(logits: Tensor) -> Tensor:
    """``P(alpha[s] = 1)`` under eq. 2's noise, ``[B, S]`` -> ``[B, S]``.

    The difference of two Gumbel(0, 1) draws is Logistic(0, 1), so the hard sample is 1
    with probability ``sigmoid(logit)`` at any temperature. Logged as routing ``probs``.
    """
    return torch.sigmoid(logits.detach().float())


def anneal_tau(step: int, total_steps: int, tau_start: float, tau_end: float) -> float:
    """Gumbel temperature at ``step``: geometric interpolation from ``tau_start`` to ``tau_end``.

    Geometric rather than linear because the soft probabilities' sharpness scales with
    ``1 / tau``; each step multiplies tau by the same factor. ``step`` is clamped to
    ``[0, total_steps]``; with ``total_steps <= 0`` the start value is kept.
    """
    if tau_start <= 0 or tau_end <= 0:
        raise ValueError(f"Gumbel temperatures must be > 0, got tau_start={tau_start}, tau_end={tau_end}")
    if total_steps <= 0:
        return float(tau_start)
    frac = min(max(step, 0), total_steps) / total_steps
    return float(tau_start * (tau_end / tau_start) ** frac)


def random_assignment(noise: Tensor) -> Tensor:
    """The random-router control: eq. 2's sample with every logit at 0 -> ``alpha [B, S]`` (no gradient).

    ``noise`` is ``routing_noise(...)`` ``[B, S, 2]``, the same keys a learned router would use, so
    a random and a learned run differ only in the logits. ``P(alpha[s] = 1) = 1/2`` exactly.
    """
    return ((noise[..., 0] - noise[..., 1]) > 0).float()


class RelativeSignal:
    """Eq. 2's router signal with difficulty cancelled: how much better a student fits a path than its peers do.

    Per path j and student s with observed loss ``ℓ_js`` (nats per response character, so students with
    different tokenizers compare), ``r_js = ℓ_js − mean_{s' ≠ s} ℓ_js'`` over the other observed
    students: difficulty shared by all students cancels. A student that is better on every path would
    still have ``r < 0`` everywhere and pull every path; a running mean per student (``momentum``)
    removes that offset, so the signal says only *which* paths fit a student better than they fit the
    others, and the load and entropy terms decide *how many*. A running standard deviation scales it to
    unit size, so the loss weights of those terms mean the same whatever the students' loss scale.

    The running statistics start as the exact pooled mean and variance of every ``r`` seen, and become
    an EMA only once a student has ``window = 1/(1 − momentum)`` observations (10 at 0.9): the EMA
    weighs each call's batch by 1 − momentum, so that is its window at one comparison per call. An EMA seeded from one value and updated with a second has a
    variance of (1 − momentum) times that step's own squared deviation, so the second observation
    standardises to ±1/√(1 − momentum) ≈ ±3.16 whatever ``r`` is: early routing gradients would be a
    sign of fixed size, not a measured fit. For the same reason a student gets no advantage (``A = 0``)
    until it has ``min_observations`` (default ``window``) observations, counting the current batch: a
    standard deviation from fewer values is not a scale worth following. Pure state (a few floats,
    checkpointed); `advantage` is a function of it and the batch.
    """

    def __init__(self, num_students: int, momentum: float = 0.9, min_observations: int | None = None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RelativeSignal: momentum must be in [0, 1), got {momentum}")
        if min_observations is not None and min_observations < 1:
            raise ValueError(f"RelativeSignal: min_observations must be >= 1, got {min_observations}")
        self.num_students = num_students
        self.momentum = momentum
        self._min_observations = min_observations
        self.mean = torch.zeros(num_students, dtype=torch.float64)
        self.var = torch.ones(num_students, dtype=torch.float64)
        self.count = torch.zeros(num_students, dtype=torch.float64)

    @property
    def window(self) -> int:
        """The EMA's effective number of observations, ``1/(1 − momentum)`` rounded (10 at 0.9)."""
        return max(1, round(1.0 / (1.0 - self.momentum)))

    @property
    def min_observations(self) -> int:
        return self.window if self._min_observations is None else self._min_observations

    def _update(self, s: int, vals: Tensor) -> None:
        k, c = len(vals), float(self.count[s])
        batch_mean = vals.mean()
        if c < self.window:
            # Exact pooled statistics (Chan et al.'s parallel update): every value counts once.
            total = c + k
            delta = batch_mean - self.mean[s]
            batch_m2 = ((vals - batch_mean) ** 2).sum()
            m2 = self.var[s] * c + batch_m2 + delta ** 2 * c * k / total
            self.mean[s] = self.mean[s] + delta * k / total
            self.var[s] = m2 / total
        else:
            m = self.momentum
            self.mean[s] = m * self.mean[s] + (1 - m) * batch_mean
            self.var[s] = m * self.var[s] + (1 - m) * ((vals - self.mean[s]) ** 2).mean()
        self.count[s] += k

    def advantage(self, losses: Tensor, observed: Tensor) -> Tensor:
        """``losses [B, S]`` (any value where unobserved), ``observed [B, S]`` bool -> ``A [B, S]``.

        ``A`` is 0 where a path has no comparison (fewer than two observed students) and for a student
        with fewer than ``min_observations`` observations after this batch; elsewhere
        ``(r − mean_s) / std_s / n`` with n the number of the remaining (emitted) compared
        (path, student) pairs, so that ``Σ alpha · A`` is a mean over the pairs that carry a signal.
        Updates the running statistics with this batch first (every compared pair counts, emitted or not).
        """
        from qrdistill.train.losses import relative_losses

        r, defined = relative_losses(losses, observed)
        r64, d = r.detach().double().cpu(), defined.cpu()
        for s in range(self.num_students):
            vals = r64[d[:, s], s]
            if len(vals):
                self._update(s, vals)
        emit = d & (self.count >= self.min_observations)[None, :]
        n = max(int(emit.sum()), 1)
        scaled = (r64 - self.mean) / (self.var.sqrt() + 1e-6)
        return torch.where(emit, scaled, torch.zeros_like(scaled)).to(losses.device, torch.float32) / n

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone(),
                "momentum": self.momentum, "min_observations": self.min_observations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict`. One written before ``min_observations`` existed keeps this signal's
        own setting (by default the window of the loaded momentum); its statistics, if still inside the
        window, are taken as the pooled ones of ``count`` values."""
        self.mean, self.var, self.count = (state[k].clone().double() for k in ("mean", "var", "count"))
        self.momentum = float(state["momentum"])
        if state.get("min_observations") is not None:
            self._min_observations = int(state["min_observations"])


def all_students_assignment(batch_size: int, num_students: int, device=None) -> Tensor:
    """The "no router" ablation: every path reaches every student -> ones ``[B, S]``."""
    return torch.ones(batch_size, num_students, device=device)
