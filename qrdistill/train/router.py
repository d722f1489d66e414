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
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), last)


class Router(nn.Module):
    """Eq. 2's MLP: path embeddings ``h [B, d]`` -> routing logits ``[B, S]``.

    The last layer starts near zero, so ``P(alpha[s] = 1) ≈ sigmoid(0) = 1/2`` for every
    path and student before training.
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


def all_students_assignment(batch_size: int, num_students: int, device=None) -> Tensor:
    """The "no router" ablation: every path reaches every student -> ones ``[B, S]``."""
    return torch.ones(batch_size, num_students, device=device)
