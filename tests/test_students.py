"""Students: encoding, response-only logits, shared frozen bases, adapters on disk."""

from __future__ import annotations

import pytest
import torch

from qrdistill.errors import ConfigError
from qrdistill.train.students import load_students
from tests.tiny_models import make_tiny_students

PROMPTS = [
    "Question: Today is 03/15/2021. What is the date one week from today?\nAnswer: Let's think step by step.\n",
    "Question: 12 + 30?\n",
]
RESPONSES = [
    "One week from 03/15/2021 is 03/22/2021.\nThe answer is (B) 03/22/2021.",
    "12 + 30 = 42. The answer is 42.",
]


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    return make_tiny_students(tmp_path_factory.mktemp("tiny"))


def spec(name, model, r=4, target="all-linear", **extra):
    return {"name": name, "model": model, "lora": {"r": r, "alpha": 2 * r, "target_modules": target}, **extra}


def perturb_lora_b(students, seed=0):
    """LoRA B starts at zero (so A gets no gradient and the adapter changes nothing): randomise it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in students:
            for name, p in s.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def full_forward_nll(student, batch):
    """Reference: the model's own forward over all positions, NLL of each response token."""
    student.activate()
    logits = student.base.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(nll, (1, 0)) * batch.response_mask


# ----------------------------------------------------------------------- encode
def test_encode_tokenizes_prompt_and_response_like_generation(tiny_paths):
    students = load_students([spec("llama", tiny_paths[0]), spec("gpt2", tiny_paths[1])])
    for s in students:
        tok = s.tokenizer
        batch = s.encode(PROMPTS, RESPONSES, max_length=256)
        assert batch.input_ids.shape == batch.response_mask.shape == batch.loss_weight.shape
        for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            n = int(batch.attention_mask[i].sum())
            ids = batch.input_ids[i, :n].tolist()
            prompt_ids = tok(prompt)["input_ids"]
            # The prompt is exactly what generation would feed; the response follows, then EOS.
            assert ids[: len(prompt_ids)] == prompt_ids
            assert ids[-1] == tok.eos_token_id
            resp_ids = ids[len(prompt_ids): -1]
            assert resp_ids == tok(response, add_special_tokens=False)["input_ids"]
            assert batch.response_mask[i].nonzero().flatten().tolist() == list(range(len(prompt_ids), n))
            assert not batch.response_mask[i, n:].any() and not batch.attention_mask[i, n:].any()
            offsets = batch.response_offsets[i]
            assert len(offsets) == len(resp_ids) + 1 and offsets[-1] == (len(response), len(response))
            # Offsets are relative to the response and whitespace-trimmed.
            for tid, (a, b) in zip(resp_ids, offsets, strict=False):
                piece = response[a:b]
                assert piece == piece.strip()
                if b > a and tid != tok.unk_token_id:
                    assert piece in tok.decode([tid]) or tok.decode([tid]).strip() in piece


def test_encode_never_cuts_a_pair_and_pair_lengths_match_it(tiny_paths):
    (s,) = load_students([spec("llama", tiny_paths[0])])
    tok = s.tokenizer
    prompt, response = PROMPTS[0], RESPONSES[0]
    p_ids = tok(prompt)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert s.pair_lengths([prompt], [response]) == [(len(p_ids), len(r_ids))]
    exact = len(p_ids) + len(r_ids)
    batch = s.encode([prompt], [response], max_length=exact)
    assert batch.input_ids[0].tolist() == p_ids + r_ids  # the whole question and the answer line with EOS
    with pytest.raises(ValueError, match="never cut"):
        s.encode([prompt], [response], max_length=exact - 1)


def test_answer_weight_marks_the_final_answer_line(tiny_paths):
    (s,) = load_students([spec("llama", tiny_paths[0])])
    batch = s.encode(PROMPTS, RESPONSES, max_length=256, answer_weight=10.0)
    for i, response in enumerate(RESPONSES):
        start = response.rindex("The answer is")
        end = len(response)
        positions = batch.response_mask[i].nonzero().flatten().tolist()
        for pos, (a, b) in zip(positions, batch.response_offsets[i], strict=True):
            inside = b > a and a >= start and b <= end
            assert float(batch.loss_weight[i, pos]) == (10.0 if inside else 1.0), response[a:b]
        assert float(batch.loss_weight[i][~batch.response_mask[i]].abs().sum()) == 0.0
    plain = s.encode(PROMPTS, RESPONSES, max_length=256)
    assert torch.equal(plain.loss_weight, plain.response_mask.float())


# ---------------------------------------------------------------------- forward
@pytest.mark.parametrize("which", [0, 1], ids=["llama-bpe", "gpt2-unigram"])
def test_response_only_nll_equals_full_forward(tiny_paths, which):
    (s,) = load_students([spec("s", tiny_paths[which])])
    perturb_lora_b([s])
    assert s.base.head_is_exact
    batch = s.encode(PROMPTS, RESPONSES, max_length=256)
    s.model.eval()
    with torch.no_grad():
        out = s.forward(batch)
        ref = full_forward_nll(s, batch)
    assert out.token_nll.dtype == torch.float32
    assert out.hidden.shape == (*batch.input_ids.shape, s.hidden_size)
    assert bool((out.token_nll[~batch.response_mask] == 0).all())
    assert bool((out.token_nll[batch.response_mask] > 0).all())
    torch.testing.assert_close(out.token_nll, ref, atol=1e-5, rtol=0)
    # The fall-back path (full forward, for heads we cannot reproduce) gives the same numbers.
    s.base.head_is_exact = False
    with torch.no_grad():
        fallback = s.forward(batch)
    torch.testing.assert_close(fallback.token_nll, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fallback.hidden, out.hidden, atol=1e-5, rtol=0)


def test_softcapping_is_applied_to_response_logits(tiny_paths):
    (s,) = load_students([spec("s", tiny_paths[0])])
    perturb_lora_b([s])
    batch = s.encode(PROMPTS[:1], RESPONSES[:1], max_length=256)
    s.model.eval()
    with torch.no_grad():
        plain = s.forward(batch).token_nll
        s.base.softcap = 0.5  # squeezes every logit into (-0.5, 0.5): NLL close to log(vocab)
        capped = s.forward(batch).token_nll[batch.response_mask]
    vocab = s.base.head.weight.shape[0]
    assert not torch.allclose(plain[batch.response_mask], capped)
    assert bool(((capped - torch.log(torch.tensor(float(vocab)))).abs() < 1.0).all())


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_frozen_head_nll_matches_autograd_in_value_and_gradient(tiny_paths, softcap, monkeypatch):
    import qrdistill.train.students as students_mod

    (s,) = load_students([spec("s", tiny_paths[0])])
    base = s.base
    monkeypatch.setattr(students_mod, "HEAD_CHUNK_BYTES", 4 * base.head.weight.shape[0] * 128)
    base.softcap = softcap
    gen = torch.Generator().manual_seed(0)
    # 300 rows: three chunks of at most 128.
    hidden = torch.randn(300, s.hidden_size, generator=gen, requires_grad=True)
    targets = torch.randint(0, base.head.weight.shape[0], (300,), generator=gen)
    upstream = torch.rand(300, generator=gen)
    ref = torch.nn.functional.cross_entropy(base.logits(hidden).float(), targets, reduction="none")
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), hidden)
    mine = base.response_nll(hidden, targets)
    assert mine.grad_fn is not None and "FrozenHeadNLL" in type(mine.grad_fn).__name__
    (g_mine,) = torch.autograd.grad((mine * upstream).sum(), hidden)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_mine, g_ref, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(base.response_nll(hidden, targets), ref.detach(), atol=1e-5, rtol=1e-5)


def test_lora_gradients_equal_through_fused_head_and_full_logits(tiny_paths):
    (s,) = load_students([spec("s", tiny_paths[0])])
    perturb_lora_b([s])
    batch = s.encode(PROMPTS, RESPONSES, max_length=128, answer_weight=5.0)

    def grads():
        s.model.zero_grad(set_to_none=True)
        (s.forward(batch).token_nll * batch.loss_weight).sum().backward()
        return [p.grad.clone() for p in s.trainable_parameters()]

    fused = grads()
    s.base.head_is_exact = False
    full = grads()
    for x, y in zip(fused, full, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5 * float(y.abs().max()), rtol=1e-4)


# ------------------------------------------------------------------ shared base
def three_students(tiny_paths, **kw):
    return load_students(
        [
            spec("llama-a", tiny_paths[0], r=4),
            spec("llama-b", tiny_paths[1 - 1], r=2, target=["q_proj", "v_proj"]),
            spec("gpt2-c", tiny_paths[1], r=4),
        ],
        **kw,
    )


def test_students_on_one_model_share_one_frozen_base(tiny_paths):
    a, b, c = three_students(tiny_paths)
    assert a.base is b.base and a.model is b.model and c.base is not a.base
    assert a.tokenizer is b.tokenizer and c.tokenizer is not a.tokenizer
    base_params = [p for n, p in a.model.named_parameters() if "lora_" not in n]
    assert base_params and not any(p.requires_grad for p in base_params)
    own = [{id(p) for p in s.trainable_parameters()} for s in (a, b, c)]
    assert all(own) and not (own[0] & own[1]) and not (own[0] & own[2])
    # llama-b adapts only q/v: 2 layers x 2 modules x (A, B).
    assert len(b.trainable_parameters()) == 8


def joint_grads(students, batches):
    for s in students:
        s.model.zero_grad(set_to_none=True)
    loss = sum(s.forward(bt).token_nll.sum() for s, bt in zip(students, batches, strict=True))
    loss.backward()
    return [[None if p.grad is None else p.grad.clone() for p in s.trainable_parameters()] for s in students]


def test_joint_backward_reaches_each_students_own_params_only(tiny_paths):
    students = three_students(tiny_paths)
    perturb_lora_b(students)
    batches = [s.encode(PROMPTS, RESPONSES, max_length=128) for s in students]
    grads = joint_grads(students, batches)
    for s, g in zip(students, grads, strict=True):
        assert all(x is not None and float(x.abs().sum()) > 0 for x in g), s.name
        assert all(p.requires_grad for p in s.trainable_parameters())
    for s in students:
        assert all(p.grad is None for n, p in s.model.named_parameters() if "lora_" not in n)
    # Each student's gradient is what it gets when trained alone: no leakage between adapters.
    for i, s in enumerate(students):
        alone = joint_grads([s], [batches[i]])[0]
        for x, y in zip(grads[i], alone, strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_recomputes_with_the_right_adapter(tiny_paths):
    plain = three_students(tiny_paths)
    ckpt = three_students(tiny_paths, gradient_checkpointing=True)
    perturb_lora_b(plain, seed=3)
    perturb_lora_b(ckpt, seed=3)
    for p, q in zip(plain, ckpt, strict=True):
        for x, y in zip(p.trainable_parameters(), q.trainable_parameters(), strict=True):
            with torch.no_grad():
                y.copy_(x)  # LoRA A is initialised randomly per load
    batches = [s.encode(PROMPTS, RESPONSES, max_length=128) for s in plain]
    g_plain = joint_grads(plain, batches)
    g_ckpt = joint_grads(ckpt, batches)
    assert ckpt[0].base.lm.model.layers[0].gradient_checkpointing
    for a, b in zip(g_plain, g_ckpt, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_frozen_peer_and_optimizer_step_touch_only_trainable_students(tiny_paths):
    students = three_students(tiny_paths)
    perturb_lora_b(students)
    a, b, c = students
    b.set_trainable(False)
    batches = [s.encode(PROMPTS, RESPONSES, max_length=128) for s in students]
    before = {n: p.detach().clone() for s in students for n, p in s.model.named_parameters()}
    params = [p for s in students for p in s.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    joint_grads(students, batches)
    # Re-activation for a's and c's passes must not unfreeze b.
    assert all(p.grad is None and not p.requires_grad for p in b.trainable_parameters())
    opt.step()
    changed = {n for s in students for n, p in s.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".llama-a." in n for n in changed) and any(".gpt2-c." in n for n in changed)
    assert not any(".llama-b." in n for n in changed)
    assert all("lora_" in n for n in changed)
    b.set_trainable(True)
    assert all(p.requires_grad for p in b.trainable_parameters())


# ---------------------------------------------------------------------- saving
def test_saved_adapter_reloads_on_a_fresh_base(tiny_paths, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, b = load_students([spec("first", tiny_paths[0]), spec("second", tiny_paths[0], r=2)])
    perturb_lora_b([a, b])
    b.save_adapter(tmp_path / "adapters" / "second")
    b.save_adapter(tmp_path / "adapters" / "second")  # overwriting an earlier save is fine
    saved = tmp_path / "adapters" / "second"
    assert (saved / "adapter_config.json").exists() and not (saved / "second").exists()

    batch = b.encode(PROMPTS, RESPONSES, max_length=128)
    b.model.eval()
    with torch.no_grad():
        trained = b.forward(batch).token_nll
    fresh = AutoModelForCausalLM.from_pretrained(tiny_paths[0])
    reloaded = PeftModel.from_pretrained(fresh, str(saved)).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_paths[0])(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    def nll(lg):
        out = -torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        return torch.nn.functional.pad(out, (1, 0)) * batch.response_mask

    torch.testing.assert_close(nll(logits), trained, atol=1e-5, rtol=0)
    assert (nll(base_logits) - trained).abs().max() > 1e-3
    assert len(reloaded.peft_config) == 1  # only this student's adapter was saved


# ---------------------------------------------------------------------- errors
def test_unloadable_model_names_the_config_field(tiny_paths, tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.students\.1\.model: cannot load 'no/such-model': "):
        load_students([spec("ok", tiny_paths[0]), spec("bad", "no/such-model")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^train\.students\.0\.model: cannot load '.*empty'"):
        load_students([spec("bad", str(tmp_path / "empty"))])
    with pytest.raises(ConfigError, match="unique"):
        load_students([spec("x", tiny_paths[0]), spec("x", tiny_paths[1])])
    with pytest.raises(ConfigError, match=r"train\.students\.0\.lora"):
        load_students([spec("x", tiny_paths[0], target=["no_such_module"])])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_qlora_without_cuda_is_a_config_error(tiny_paths):
    with pytest.raises(ConfigError, match=r"train\.students\.0\.qlora: .*CUDA"):
        load_students([spec("x", tiny_paths[0], qlora=True)])
    (s,) = load_students([spec("x", tiny_paths[0], qlora=None)])  # auto: plain LoRA on CPU
    assert s.base.lm.dtype == torch.float32


# ------------------------------------------------------------------ real Gemma
@pytest.mark.slow
def test_gemma_two_students_on_one_base(gemma_path):
    students = load_students(
        [
            spec("gemma-a", "gemma3-270m", r=8),
            spec("gemma-b", "gemma3-270m", r=4, target=["q_proj", "v_proj"]),
        ]
    )
    a, b = students
    assert a.base is b.base and a.base.head_is_exact and a.hidden_size == 640
    perturb_lora_b(students)
    batch = a.encode(["Question: What is 2 + 3?\nAnswer: Let's think step by step.\n"],
                     ["2 + 3 = 5. The answer is 5."], max_length=64)
    assert batch.input_ids[0, 0] == a.tokenizer.bos_token_id
    a.model.eval()
    with torch.no_grad():
        for s in students:
            out = s.forward(batch)
            torch.testing.assert_close(out.token_nll, full_forward_nll(s, batch), atol=1e-4, rtol=1e-4)
    a.model.train()
    before = {n: p.detach().clone() for n, p in a.model.named_parameters() if "lora_" in n}
    base_before = a.base.head.weight.detach().clone()
    opt = torch.optim.AdamW([p for s in students for p in s.trainable_parameters()], lr=1e-3)
    a.forward(batch).token_nll.sum().backward()  # only gemma-a is active in this step
    opt.step()
    changed = {n for n, p in a.model.named_parameters() if "lora_" in n and not torch.equal(p, before[n])}
    assert len(changed) == len(a.trainable_parameters())
    assert all(".gemma-a." in n for n in changed)
    assert torch.equal(a.base.head.weight, base_before)
