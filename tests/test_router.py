"""Routing (eqs. 1–2): encoder, router MLP, Gumbel multi-hot sampling, rank-stable noise."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qrdistill.errors import ConfigError
from qrdistill.train.losses import routed_distill_loss
from qrdistill.train.router import (
    PathEncoder,
    Router,
    all_students_assignment,
    anneal_tau,
    assignment_probabilities,
    gumbel_multi_hot,
    masked_mean_pool,
    routing_noise,
)

finite = st.floats(-6, 6, allow_nan=False, allow_infinity=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda s: st.tuples(st.lists(finite, min_size=s, max_size=s), st.lists(finite, min_size=2 * s, max_size=2 * s))
    ),
    st.floats(0.05, 5.0),
)
def test_gumbel_multi_hot_forward_is_exact_0_1_and_follows_perturbed_sign(data, tau):
    logits_l, noise_l = data
    logits = torch.tensor([logits_l])
    noise = torch.tensor(noise_l).view(1, len(logits_l), 2)
    alpha = gumbel_multi_hot(logits, noise, tau)
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    expected = (logits + noise[..., 0] - noise[..., 1] > 0).float()
    assert torch.equal(alpha.detach(), expected)


def test_gumbel_multi_hot_backward_is_the_soft_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    noise = routing_noise([f"p{i}" for i in range(5)], epoch=0, seed=1, num_students=3)
    weights = torch.randn(5, 3)
    (gumbel_multi_hot(logits, noise, tau=0.7) * weights).sum().backward()
    hard_grad = logits.grad.clone()
    logits.grad = None
    (gumbel_multi_hot(logits, noise, tau=0.7, hard=False) * weights).sum().backward()
    assert torch.allclose(hard_grad, logits.grad)
    assert hard_grad.abs().min() > 0


def test_gumbel_small_tau_noise_free_follows_logit_sign():
    logits = torch.tensor([[2.0, -0.5, 0.3], [-3.0, 0.01, -0.01]])
    soft = gumbel_multi_hot(logits, None, tau=1e-4, hard=False)
    assert torch.allclose(soft, (logits > 0).float(), atol=1e-6)
    assert torch.equal(gumbel_multi_hot(logits, None, tau=1.0).detach(), (logits > 0).float())
    # At a high temperature the soft sample is far from 0/1: tau matters.
    assert (gumbel_multi_hot(logits, None, tau=100.0, hard=False) - 0.5).abs().max() < 0.01


def test_gumbel_rejects_bad_tau_and_noise_shape():
    with pytest.raises(ValueError, match="temperature"):
        gumbel_multi_hot(torch.zeros(2, 2), None, tau=0.0)
    with pytest.raises(ValueError, match="shape"):
        gumbel_multi_hot(torch.zeros(2, 2), torch.zeros(2, 3, 2), tau=1.0)


def test_routing_noise_depends_only_on_seed_epoch_key():
    keys = [f"q{i}/cot/0" for i in range(7)]
    base = routing_noise(keys, epoch=3, seed=11, num_students=2)
    assert base.shape == (7, 2, 2) and base.dtype == torch.float32
    perm = [4, 0, 6, 2, 1, 5, 3]
    shuffled = routing_noise([keys[i] for i in perm], epoch=3, seed=11, num_students=2)
    assert torch.equal(shuffled, base[perm])
    alone = routing_noise([keys[5]], epoch=3, seed=11, num_students=2)
    assert torch.equal(alone[0], base[5])
    # Another rank in another process would compute exactly the same numbers: nothing
    # depends on torch's global RNG.
    torch.manual_seed(12345)
    assert torch.equal(routing_noise(keys, epoch=3, seed=11, num_students=2), base)
    assert not torch.equal(routing_noise(keys, epoch=4, seed=11, num_students=2), base)
    assert not torch.equal(routing_noise(keys, epoch=3, seed=12, num_students=2), base)
    assert len({tuple(r.flatten().tolist()) for r in base}) == 7


def test_routing_noise_is_gumbel_and_hard_rate_matches_assignment_probabilities():
    keys = [f"path-{i}" for i in range(4000)]
    noise = routing_noise(keys, epoch=0, seed=0, num_students=2)
    assert torch.isfinite(noise).all()
    euler_gamma = 0.5772156649
    assert abs(noise.mean().item() - euler_gamma) < 0.03
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.1
    logits = torch.tensor([[1.2, -0.7]]).expand(len(keys), 2)
    rate = gumbel_multi_hot(logits, noise, tau=0.5).mean(dim=0)
    assert torch.allclose(rate, assignment_probabilities(logits[:1])[0], atol=0.025)


def test_anneal_tau_geometric_and_clamped():
    assert anneal_tau(0, 100, 1.0, 0.25) == pytest.approx(1.0)
    assert anneal_tau(100, 100, 1.0, 0.25) == pytest.approx(0.25)
    assert anneal_tau(50, 100, 1.0, 0.25) == pytest.approx(0.5)
    assert anneal_tau(500, 100, 1.0, 0.25) == pytest.approx(0.25)
    assert anneal_tau(-3, 100, 1.0, 0.25) == pytest.approx(1.0)
    assert anneal_tau(7, 0, 2.0, 0.5) == pytest.approx(2.0)
    taus = [anneal_tau(s, 20, 2.0, 0.1) for s in range(21)]
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    with pytest.raises(ValueError):
        anneal_tau(0, 10, 0.0, 0.5)


def test_router_shapes_and_balanced_start():
    torch.manual_seed(0)
    router = Router(in_dim=16, num_students=3, hidden=8)
    logits = router(torch.randn(10, 16))
    assert logits.shape == (10, 3)
    probs = assignment_probabilities(logits)
    assert (probs - 0.5).abs().max() < 0.02
    with pytest.raises(ValueError):
        Router(16, 0)


def test_no_router_sends_every_path_to_every_student():
    alpha = all_students_assignment(5, 3)
    assert alpha.shape == (5, 3) and torch.equal(alpha, torch.ones(5, 3))
    # With everything routed, each student's distill loss is the plain mean path loss.
    nll = torch.tensor([[0.0, 1.0, 3.0], [0.0, 2.0, 2.0], [0.0, 5.0, 1.0], [0.0, 0.5, 0.5], [0.0, 4.0, 0.0]])
    mask = torch.tensor([[False, True, True]] * 5)
    for s in range(3):
        loss = routed_distill_loss(nll, torch.ones_like(nll), mask, alpha[:, s])
        assert loss.item() == pytest.approx(nll[:, 1:].mean().item())


def test_masked_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    out = masked_mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(out, torch.tensor([[2.0, 3.0]]))


def test_path_encoder_bad_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.router\.encoder"):
        PathEncoder(str(tmp_path / "no-such-encoder"))
    with pytest.raises(ConfigError, match=r"train\.router\.encoder"):
        PathEncoder("")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny random BERT with an offline word-level tokenizer, saved like a hub model."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "the answer is a b c first then so we compute check date year step fact".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    d = tmp_path_factory.mktemp("tiny_encoder")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(d)
    return str(d)


def test_path_encoder_hf_mean_pools_over_attention_mask(tiny_encoder_dir):
    enc = PathEncoder(tiny_encoder_dir, batch_size=2)
    assert enc.dim == 32
    texts = ["the answer is a", "first we compute the date then we check the year step by step so", "fact"]
    emb = enc.encode(texts)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32 and not emb.requires_grad
    # Embedding a text alone (no padding) or beside longer texts gives the same vector.
    for i, t in enumerate(texts):
        assert torch.allclose(enc.encode([t])[0], emb[i], atol=1e-5)
    assert not torch.allclose(emb[0], emb[2])
    assert all(not p.requires_grad for p in enc._model.parameters())
    assert enc.encode([]).shape == (0, 32)


@pytest.mark.slow
def test_path_encoder_minilm_matches_hf_mean_pooling(minilm_path):
    texts = [
        "First, retrieve the facts: Paris is the capital of France. So the answer is yes.",
        "def solve():\n    return 3 * 4\nprint(solve())  # The answer is 12.",
        "Working backwards from 12, 12 / 4 = 3, which matches. The answer is 12.",
    ]
    st_enc = PathEncoder("minilm")
    emb = st_enc.encode(texts)
    assert emb.shape == (3, 384) and st_enc.dim == 384 and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-4)
    # The same weights through the generic HF path (mean pooling, then the L2 norm the
    # sentence-transformers pipeline adds) give the same vectors.
    hf = PathEncoder(minilm_path, batch_size=2).encode(texts)
    assert torch.allclose(torch.nn.functional.normalize(hf, dim=-1), emb, atol=1e-4)
    sims = emb @ emb.T
    assert sims[0, 1] < sims[1, 2]


def _train_router(seed: int, loss: torch.Tensor, style: torch.Tensor, steps: int = 50, batch: int = 8,
                  advantage=None, lambda_load: float | None = None, observe: str = "all"):
    """The router alone, trained exactly as the loop trains it, on fixed per-path losses [P, S].

    Default settings throughout: RouterConfig's optimizer (AdamW, its lr, constant schedule), the
    relative signal, λ1 and the load weight of a default TrainConfig. `observe`: which (path, student)
    losses the signal sees — "all" (as with train.router.peer_forward) or "routed" (the default loop:
    only the students a path was routed to ran on it, so only co-routed paths compare).
    `advantage(idx) -> [B, S]` replaces the signal (for the starvation toy); `lambda_load` overrides
    the load weight.
    Returns mean P(route) [style, student].
    """
    from qrdistill.config.train import TrainConfig
    from qrdistill.train.losses import assignment_entropy, load_entropy, routing_fit_term
    from qrdistill.train.optim import build_optimizer, build_param_groups
    from qrdistill.train.router import RelativeSignal

    tc = TrainConfig()
    lam_load = tc.lambda_load if lambda_load is None else lambda_load
    torch.manual_seed(seed)
    P, S = loss.shape
    n_styles = int(style.max()) + 1
    onehot = torch.nn.functional.one_hot(style, n_styles).float()
    # Unit-norm embeddings, like a sentence encoder's: the style is a direction plus noise.
    h = torch.nn.functional.normalize(torch.cat([onehot, torch.zeros(P, 30)], 1) + 0.3 * torch.randn(P, 30 + n_styles),
                                      dim=-1)
    router = Router(h.shape[1], S, hidden=tc.router.hidden)
    groups = build_param_groups([], [], router, None, tc)
    optimizer, scheduler = build_optimizer(groups, tc.scheduler, 0, steps)
    signal = RelativeSignal(S)
    for step in range(steps):
        idx = torch.randperm(P)[:batch]
        noise = routing_noise([f"p{i}" for i in idx.tolist()], epoch=step, seed=seed, num_students=S)
        alpha = gumbel_multi_hot(router(h[idx]), noise, tau=tc.router.tau)
        seen = torch.ones(batch, S, dtype=torch.bool) if observe == "all" else alpha.detach() > 0.5
        adv = advantage(idx) if advantage is not None else signal.advantage(loss[idx], seen)
        objective = (routing_fit_term(alpha, adv) - tc.lambda_entropy * assignment_entropy(alpha)
                     - lam_load * load_entropy(alpha))
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        scheduler.step()
    probs = assignment_probabilities(router(h))
    return torch.stack([probs[style == a].mean(dim=0) for a in range(n_styles)])  # [style, student]


def _two_styles(P: int = 64) -> torch.Tensor:
    return torch.arange(P) % 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_router_learns_to_send_each_style_to_the_student_that_fits_it(seed):
    """Student 0 fits style 0 (path loss 1 vs 3), student 1 style 1; default settings, 50 steps of 8."""
    style = _two_styles()
    loss = torch.where(style[:, None] == torch.arange(2)[None], 1.0, 3.0)
    rate = _train_router(seed, loss, style)
    assert rate[0, 0] > 0.75 and rate[1, 1] > 0.75
    assert rate[0, 1] < 0.1 and rate[1, 0] < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_router_specialises_from_co_routed_paths_alone(seed):
    """The default loop (no peer forward): only paths routed to both students compare them, about a
    quarter at first and fewer as the router specialises. With 8 paths a step (batch_size x grad_accum)
    it specialises in 100 steps; with 4 it learns the same direction more weakly (0.6-0.9 in 150 steps)."""
    style = _two_styles()
    loss = torch.where(style[:, None] == torch.arange(2)[None], 1.0, 3.0)
    rate = _train_router(seed, loss, style, steps=100, batch=8, observe="routed")
    assert rate[0, 0] > 0.75 and rate[1, 1] > 0.75
    assert rate[0, 1] < 0.15 and rate[1, 0] < 0.15
    weak = _train_router(seed, loss, style, steps=150, batch=4, observe="routed")
    assert weak[0, 0] > weak[0, 1] + 0.3 and weak[1, 1] > weak[1, 0] + 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_router_routes_by_fit_not_by_ease(seed):
    """Both students find style 0 easy (loss 1) and style 1 hard (loss 4); student 0 is relatively better
    on style 1 and student 1 on style 0 (by 0.6). Eq. 9's own-mean signal sends the easy style to
    everyone and the hard one to no one; the relative signal sends each style to the student it fits."""
    style = _two_styles()
    base = torch.where(style == 0, 1.0, 4.0)[:, None].expand(-1, 2)
    loss = base + torch.where(style[:, None] == torch.tensor([1, 0])[None], -0.3, 0.3)
    rate = _train_router(seed, loss, style)
    assert rate[1, 0] > 0.75 and rate[0, 1] > 0.75  # hard style 1 -> student 0, easy style 0 -> student 1
    assert rate[0, 0] < 0.25 and rate[1, 1] < 0.25

    from qrdistill.train.losses import own_mean_advantage

    def own_mean(idx):
        return own_mean_advantage(loss[idx], torch.ones(len(idx), 2, dtype=torch.bool))

    rate_own = _train_router(seed, loss, style, advantage=own_mean)
    assert rate_own[0].min() > 0.7 and rate_own[1].max() < 0.3  # the difficulty filter the issue measured


def test_load_term_keeps_a_student_that_every_path_disfavours():
    """A signal that always prefers student 0 starves student 1 under eq. 3's pooled entropy alone
    (its mean assignment 1/2 is already the maximum); the per-student load term keeps it in use."""
    style = _two_styles()
    loss = torch.zeros(64, 2)

    def push(idx):
        return torch.tensor([[-1.0, 1.0]]).expand(len(idx), 2) / len(idx)

    without = _train_router(0, loss, style, steps=300, advantage=push, lambda_load=0.0)
    with_load = _train_router(0, loss, style, steps=300, advantage=push)
    assert without[:, 1].max() < 0.02 and without[:, 0].min() > 0.98
    assert with_load[:, 1].min() > 0.08


def test_router_logits_move_by_several_units_in_a_short_run():
    """The demo trains for a few dozen steps: the default router must be able to leave P = 1/2 in that time."""
    style = _two_styles()
    loss = torch.where(style[:, None] == torch.arange(2)[None], 1.0, 3.0)
    rate = _train_router(0, loss, style, steps=30)
    logit = torch.logit(rate.clamp(1e-6, 1 - 1e-6))
    assert logit.abs().min() > 2.0


def test_random_router_is_half_and_uses_the_learned_routers_noise():
    from qrdistill.train.router import random_assignment

    keys = [f"path-{i}" for i in range(4000)]
    noise = routing_noise(keys, epoch=0, seed=0, num_students=2)
    alpha = random_assignment(noise)
    assert set(alpha.unique().tolist()) == {0.0, 1.0} and not alpha.requires_grad
    assert (alpha.mean(dim=0) - 0.5).abs().max() < 0.03
    # The same keys with zero logits through eq. 2's sampler: identical decisions.
    assert torch.equal(alpha, gumbel_multi_hot(torch.zeros(4000, 2), noise, tau=1.0).detach())


def test_relative_signal_cancels_shared_difficulty_and_a_uniform_student_offset():
    from qrdistill.train.router import RelativeSignal

    sig = RelativeSignal(2)
    observed = torch.ones(4, 2, dtype=torch.bool)
    fit = torch.tensor([[-0.1, 0.1], [0.1, -0.1], [-0.1, 0.1], [0.1, -0.1]])
    # Three batches of 4: the signal is silent until a student has `window` (10) observations.
    for difficulty in ([1.0, 5.0, 2.0, 9.0], [3.0, 0.5, 7.0, 1.0], [2.0, 4.0, 0.5, 6.0]):
        # Student 1 is worse by 2 nats/char on every path: an offset, not a fit.
        loss = torch.tensor(difficulty)[:, None] + fit + torch.tensor([0.0, 2.0])
        adv = sig.advantage(loss, observed)
    # What is left is the fit: negative (pull) where a student is relatively better.
    assert torch.equal(adv < 0, fit < 0)
    assert torch.allclose(adv.sum(dim=0), torch.zeros(2), atol=1e-5)
    # A path seen by one student only gives no comparison.
    alone = sig.advantage(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]))
    assert torch.equal(alone, torch.zeros(1, 2))


def _feed_one(sig, value: float) -> torch.Tensor:
    """One compared path between two students with r = (value, −value)."""
    return sig.advantage(torch.tensor([[value, 0.0]]), torch.ones(1, 2, dtype=torch.bool))


def test_relative_signal_is_silent_and_exact_until_its_window_fills():
    """One comparison per call (the demo's rate): an EMA seeded from one or two values standardises
    the second to ±1/√0.1 ≈ ±3.16 whatever r is. Until a student has `window` observations the
    statistics are numpy's mean/var of everything seen and no advantage is emitted; from then on the
    advantage is r standardised by those statistics (so a stream of spread 0.01 and one of spread 1
    with the same pattern give the same unit-scale advantage), then the EMA takes over."""
    import numpy as np

    from qrdistill.train.router import RelativeSignal

    z = np.random.default_rng(0).standard_normal(14).astype(np.float32)
    sigs = {scale: RelativeSignal(2) for scale in (0.01, 1.0)}
    advs = {scale: [] for scale in sigs}
    for scale, sig in sigs.items():
        vals = (z * np.float32(scale)).astype(np.float32)
        for t, v in enumerate(vals, start=1):
            adv = _feed_one(sig, float(v))
            advs[scale].append(adv)
            seen = vals[:t].astype(np.float64)
            if t < 10:
                assert torch.equal(adv, torch.zeros(1, 2)), f"advantage emitted at observation {t}"
            if t <= 10:
                np.testing.assert_allclose(sig.mean[0].item(), seen.mean(), rtol=1e-12, atol=1e-15)
                np.testing.assert_allclose(sig.var[0].item(), seen.var(), rtol=1e-12, atol=1e-15)
                np.testing.assert_allclose(sig.mean[1].item(), -seen.mean(), rtol=1e-12, atol=1e-15)
                np.testing.assert_allclose(sig.var[1].item(), seen.var(), rtol=1e-12, atol=1e-15)
            if t == 10:
                # Two compared pairs (both students on the one path): n = 2.
                want = (seen[-1] - seen.mean()) / (seen.std() + 1e-6) / 2  # the signal's std epsilon
                np.testing.assert_allclose(adv[0, 0].item(), want, rtol=1e-4)
                np.testing.assert_allclose(adv[0, 1].item(), -want, rtol=1e-4)
            if t == 11:
                # Past the window: the EMA (momentum 0.9) as before.
                m10, v10 = vals[:10].astype(np.float64).mean(), vals[:10].astype(np.float64).var()
                m11 = 0.9 * m10 + 0.1 * float(v)
                np.testing.assert_allclose(sig.mean[0].item(), m11, rtol=1e-12)
                np.testing.assert_allclose(sig.var[0].item(), 0.9 * v10 + 0.1 * (float(v) - m11) ** 2, rtol=1e-12)
    for t in range(10, 14):
        a_small, a_big = advs[0.01][t], advs[1.0][t]
        assert torch.allclose(a_small, a_big, rtol=1e-3, atol=1e-6)
    assert all(s.window == 10 and s.min_observations == 10 for s in sigs.values())


def test_relative_signal_pools_whole_batches_and_counts_only_emitted_pairs_in_n():
    """Batches of comparisons pool exactly (each value counted once) while a student is below the
    window — a batch that starts below it is pooled whole — and the EMA takes over after. `/ n` counts
    only the pairs that carry a signal: a student still below `min_observations` adds neither A nor n."""
    import numpy as np

    from qrdistill.train.losses import relative_losses
    from qrdistill.train.router import RelativeSignal

    rng = np.random.default_rng(1)
    sig = RelativeSignal(3)
    both = torch.tensor([[True, True, False]] * 3)
    seen: list[float] = []
    for call in range(4):  # 3 comparisons of students 0 and 1 a call: counts 3, 6, 9, 12
        loss = torch.tensor(rng.standard_normal((3, 3)), dtype=torch.float32)
        adv = sig.advantage(loss, both)
        seen += (loss[:, 0] - loss[:, 1]).double().tolist()
        np.testing.assert_allclose(sig.mean[0].item(), np.mean(seen), rtol=1e-6)
        np.testing.assert_allclose(sig.var[0].item(), np.var(seen), rtol=1e-6)
        assert int(sig.count[0]) == 3 * (call + 1) and int(sig.count[2]) == 0
        if call < 3:
            assert torch.equal(adv, torch.zeros(3, 3))
        else:
            assert (adv[:, :2] != 0).all() and (adv[:, 2] == 0).all()
    # Now student 2 joins on one path: it is compared (counted in its statistics) but below the
    # threshold, so its entry is 0 and n = 2 + 2 (paths 0-1 for students 0, 1), not 5.
    loss = torch.tensor(rng.standard_normal((2, 3)), dtype=torch.float32)
    observed = torch.tensor([[True, True, False], [True, True, True]])
    mean0, var0 = sig.mean[0].clone(), sig.var[0].clone()
    adv = sig.advantage(loss, observed)
    assert int(sig.count[2]) == 1 and adv[1, 2] == 0
    r, _ = relative_losses(loss, observed)
    r0 = r[:, 0].double()
    # Past the window: one EMA step for the whole batch.
    m = 0.9 * mean0 + 0.1 * r0.mean()
    v = 0.9 * var0 + 0.1 * ((r0 - m) ** 2).mean()
    assert torch.allclose(sig.mean[0], m) and torch.allclose(sig.var[0], v)
    want = ((r0 - m) / v.sqrt() / 4).float()
    assert torch.allclose(adv[:, 0], want, rtol=1e-4, atol=1e-7)


def test_relative_signal_state_round_trips_and_accepts_an_older_state(tmp_path):
    from qrdistill.train.router import RelativeSignal

    sig = RelativeSignal(2, min_observations=4)
    for v in (0.3, -0.2, 0.5):  # mid-window: the pooled statistics must carry over exactly
        _feed_one(sig, v)
    path = tmp_path / "signal.pt"
    torch.save(sig.state_dict(), path)
    state = torch.load(path, weights_only=True)
    resumed = RelativeSignal(2)
    resumed.load_state_dict(state)
    assert resumed.min_observations == 4 and resumed.momentum == sig.momentum
    for v in (0.1, -0.4, 0.25, 0.6, -0.05, 0.2, 0.7, -0.3, 0.15, 0.4):
        assert torch.equal(_feed_one(sig, v), _feed_one(resumed, v))
    for k in ("mean", "var", "count"):
        assert torch.equal(getattr(sig, k), getattr(resumed, k))
    # A state written before min_observations existed: the default threshold (the window) applies.
    old = {k: v for k, v in state.items() if k != "min_observations"}
    legacy = RelativeSignal(2)
    legacy.load_state_dict(old)
    assert legacy.min_observations == legacy.window == 10 and int(legacy.count[0]) == 3
    assert torch.equal(_feed_one(legacy, 0.1), torch.zeros(1, 2))  # 4 observations < 10: still silent
