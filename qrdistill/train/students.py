"""Students: LoRA adapters on (possibly shared) frozen causal-LM bases.

Design choices (issue 3, parts 3, 4 and 7):

* **Shared frozen base.** Students whose `model` resolves to the same path
  (and the same dtype / quantization) share one base in memory: one PEFT
  model holding one named LoRA adapter per student. Before a student's forward
  pass its adapter is made the active one. PEFT's `set_adapter` also sets
  `requires_grad=False` on every inactive adapter; we restore each student's
  own flag right after, so several students can run forward passes in one
  step and a single backward reaches every student's LoRA weights (and only
  them: the base stays frozen). Under gradient checkpointing a layer is
  recomputed during backward, when another student's adapter may be active;
  our checkpoint function therefore re-activates, for the recomputation, the
  adapter that was active when the layer first ran.
* **Response-only logits.** The output head of Gemma-3 maps 640 dims to a
  262,144-token vocabulary: 63 % of the forward FLOPs. We run the decoder body
  once for all positions (the hidden states feed eq. 5), gather the positions
  that predict response tokens and apply the head (and the final logit
  soft-capping some models use) only there. At load time every base is
  checked once against its own full forward; a model whose head does
  something else falls back to the full forward (correct, just slower).
* **Tokenization as generation sees it.** The prompt and the response are
  tokenized separately and concatenated: at evaluation time the prompt is
  tokenized on its own and the model produces the response tokens after it,
  so the prompt/response border is a token border both in training and in
  generation (tokenizing the concatenation could merge the prompt's last
  characters with the response's first). The response carries no special
  tokens except an EOS appended after it, so students learn to stop.
* **Offsets.** `StudentBatch.response_offsets` are character offsets relative
  to the response text, trimmed of surrounding whitespace (see
  `qrdistill.train.alignment`), EOS at (len, len).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qrdistill.errors import ConfigError
from qrdistill.train.alignment import trim_offsets

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

# The final answer line of a path: "The answer is (C) 03/15/2021." -- tasks' strict extraction
# pattern (lm-evaluation-harness convention).
ANSWER_LINE = re.compile(r"the answer is", re.IGNORECASE)
# Logits of the frozen head are computed this many bytes (fp32) at a time.
HEAD_CHUNK_BYTES = 512 << 20


@dataclass
class StudentBatch:
    """One student's view of a batch of B paths (right-padded)."""

    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] long, 1 on real tokens
    response_mask: Tensor  # [B, T] bool, True on response tokens (the loss positions, EOS included)
    loss_weight: Tensor  # [B, T] float32: 1.0 on response tokens (answer_weight on the answer line), 0 elsewhere
    response_offsets: list[list[tuple[int, int]]]  # per path, per response token: trimmed char offsets

    def to(self, device) -> StudentBatch:
        return StudentBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
            loss_weight=self.loss_weight.to(device),
            response_offsets=self.response_offsets,
        )


@dataclass
class StudentOutput:
    token_nll: Tensor  # [B, T] float32: -log p(token | prefix) at response positions, 0 elsewhere
    hidden: Tensor  # [B, T, H] last hidden states (eq. 5's z_s), all positions
    response_mask: Tensor  # [B, T] bool


def _spec_get(spec: Any, key: str, default=None):
    if isinstance(spec, dict):
        return spec.get(key, default)
    return getattr(spec, key, default)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _torch_dtype(value, field_name: str):
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    }
    if str(value).lower() == "auto":
        return None
    try:
        return names[str(value).lower()]
    except KeyError:
        raise ConfigError(f"{field_name}: unknown dtype '{value}' (use float32, bfloat16 or float16)") from None


class _Base:
    """One frozen base model (a PEFT model) and the students whose adapters live on it."""

    def __init__(self, peft_model, path: str):
        self.peft = peft_model
        self.path = path
        self.lm = peft_model.get_base_model()  # the *ForCausalLM, LoRA layers injected in place
        self.body = self.lm.base_model  # decoder stack without the head
        self.head = self.lm.get_output_embeddings()
        text_cfg = self.lm.config.get_text_config() if hasattr(self.lm.config, "get_text_config") else self.lm.config
        self.softcap = getattr(text_cfg, "final_logit_softcapping", None)
        self.students: list[Student] = []
        self.active: str | None = None
        self.head_is_exact = True

    def activate(self, adapter: str) -> None:
        if self.active == adapter:
            return
        self.peft.set_adapter(adapter)
        self.active = adapter
        # set_adapter froze every other adapter; each student keeps its own trainable flag.
        for student in self.students:
            for p in student.trainable_parameters():
                p.requires_grad_(student.trainable)

    def adapter_pinned_checkpoint(self, function, *args, **kwargs):
        """torch checkpoint that recomputes a layer with the adapter active when it first ran."""
        from torch.utils.checkpoint import checkpoint

        adapter = self.active

        def run(*inner):
            previous = self.active
            if previous != adapter:
                self.activate(adapter)
            try:
                return function(*inner)
            finally:
                if previous != adapter and previous is not None:
                    self.activate(previous)

        kwargs.setdefault("use_reentrant", False)
        return checkpoint(run, *args, **kwargs)

    def logits(self, hidden: Tensor) -> Tensor:
        logits = self.head(hidden)
        if self.softcap:
            import torch

            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def response_nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """NLL of `targets` [M] under the head applied to `hidden` [M, H] -> [M] float32."""
        import torch.nn.functional as F
        from torch import nn

        head = self.head
        if type(head) is nn.Linear and not head.weight.requires_grad and (
            head.bias is None or not head.bias.requires_grad
        ):
            return _FrozenHeadNLL.apply(hidden, head.weight, head.bias, targets, self.softcap)
        # A trainable or adapted head: plain autograd through the full [M, V] logits.
        return F.cross_entropy(self.logits(hidden).float(), targets, reduction="none")


def _frozen_head_nll_class():
    import torch

    class FrozenHeadNLL(torch.autograd.Function):
        """Per-token NLL through a frozen output head, [M, V] logits never kept.

        The gradient of token t's NLL w.r.t. its hidden state is
        (softmax(z_t) - onehot(y_t)) W (times the soft-cap derivative), which
        does not depend on the upstream gradient g_t; so the forward computes it
        chunk by chunk while each chunk's logits are at hand and keeps only that
        [M, H] matrix; backward scales its rows by g_t. Same FLOPs as autograd
        (one head matmul forward, one for the activation gradient), but the
        262k-wide logits, log-softmax and their gradients are never stored:
        a 512-row chunk of Gemma's logits is 512 MB, whatever the number of
        response tokens (autograd keeps 2 x 0.5 GB per 512 of them). Chunks
        much smaller than that make the head matmul re-read the 0.67 GB weight
        matrix too often and run memory-bound.
        """

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, softcap):
            needs_grad = hidden.requires_grad
            vocab = weight.shape[0]
            rows = max(1, HEAD_CHUNK_BYTES // (4 * vocab))
            nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_grad else None
            # One logits buffer reused by every chunk and updated in place: on CPU, fresh
            # 100-MB allocations cost page faults on every touch.
            fp32 = weight.dtype == torch.float32
            buffer = torch.empty(min(rows, hidden.shape[0]), vocab, dtype=torch.float32, device=hidden.device)
            for lo in range(0, hidden.shape[0], rows):
                h = hidden[lo: lo + rows]
                y = targets[lo: lo + rows]
                z = buffer[: h.shape[0]]
                if fp32:
                    torch.matmul(h.float(), weight.t(), out=z)
                    if bias is not None:
                        z.add_(bias)
                else:
                    z.copy_(torch.nn.functional.linear(h, weight, bias))
                if softcap:
                    z.div_(softcap).tanh_()
                    tanh = z.clone() if needs_grad else None
                    z.mul_(softcap)
                picked = z.gather(1, y[:, None])[:, 0]
                top = z.amax(dim=1, keepdim=True)
                total = z.sub_(top).exp_().sum(dim=1, keepdim=True)
                nll[lo: lo + rows] = (top + total.log())[:, 0] - picked
                if needs_grad:
                    probs = z.div_(total)
                    probs[torch.arange(len(y), device=y.device), y] -= 1.0
                    if softcap:
                        probs.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d(c tanh(x/c))/dx = 1 - tanh^2
                    grad_hidden[lo: lo + rows] = probs.to(weight.dtype) @ weight
            if needs_grad:
                ctx.save_for_backward(grad_hidden)
            return nll

        @staticmethod
        def backward(ctx, grad_nll):
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_nll[:, None].to(grad_hidden.dtype), None, None, None, None

    return FrozenHeadNLL


class _LazyFunction:
    """Builds the autograd Function on first use, so importing this module stays torch-free."""

    def __init__(self, factory):
        self._factory, self._fn = factory, None

    def apply(self, *args):
        if self._fn is None:
            self._fn = self._factory()
        return self._fn.apply(*args)


_FrozenHeadNLL = _LazyFunction(_frozen_head_nll_class)


class Student:
    """One student: a LoRA adapter, its tokenizer, and the base it runs on."""

    def __init__(self, name: str, adapter: str, base: _Base, tokenizer, spec: Any):
        self.name = name
        self.adapter = adapter
        self.base = base
        self.tokenizer = tokenizer
        self.spec = spec
        cfg = base.lm.config.get_text_config() if hasattr(base.lm.config, "get_text_config") else base.lm.config
        self.hidden_size: int = int(cfg.hidden_size)
        #: longest sequence the model's positions allow (None = no limit known)
        positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.max_positions: int | None = int(positions) if positions else None
        self.trainable = True
        self._params: list[nn.Parameter] | None = None

    @property
    def model(self):
        """The PEFT model this student's adapter lives on (shared with co-based students)."""
        return self.base.peft

    @property
    def device(self) -> torch.device:
        return self.base.head.weight.device

    def activate(self) -> None:
        """Make this student's adapter the one the shared base runs with."""
        self.base.activate(self.adapter)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self._params is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            params = []
            for module in self.base.peft.modules():
                if not isinstance(module, BaseTunerLayer):
                    continue
                for attr in module.adapter_layer_names:
                    container = getattr(module, attr, None)
                    if container is not None and self.adapter in container:
                        item = container[self.adapter]
                        params.extend(item.parameters() if hasattr(item, "parameters") else [item])
            self._params = params
        return self._params

    def set_trainable(self, flag: bool) -> None:
        """Freeze or unfreeze this student's LoRA weights (the frozen-peer ablation)."""
        self.trainable = bool(flag)
        for p in self.trainable_parameters():
            p.requires_grad_(self.trainable)

    # ------------------------------------------------------------------ data
    def _tokenize_pairs(self, prompts: list[str], responses: list[str]):
        """Token ids of each (prompt, response) pair exactly as training sees it, never shortened.

        -> per pair (prompt ids with special tokens, response ids + EOS, trimmed response offsets).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tok = self.tokenizer
        prompt_ids = tok(list(prompts), add_special_tokens=True)["input_ids"]
        enc = tok(list(responses), add_special_tokens=False, return_offsets_mapping=True)
        eos, bos = tok.eos_token_id, tok.bos_token_id
        rows = []
        for response, p_ids, r_ids, r_off in zip(
            responses, prompt_ids, enc["input_ids"], enc["offset_mapping"], strict=True
        ):
            p_ids = list(p_ids)
            if not p_ids:  # position 0 predicts nothing: the first response token needs a prefix
                p_ids = [bos if bos is not None else eos]
            r_ids = list(r_ids) + [eos]
            offsets = trim_offsets(response, r_off) + [(len(response), len(response))]
            rows.append((p_ids, r_ids, offsets))
        return rows

    def pair_lengths(self, prompts: list[str], responses: list[str]) -> list[tuple[int, int]]:
        """(prompt tokens, response tokens incl. EOS) of each pair, as `encode` would build it."""
        return [(len(p), len(r)) for p, r, _ in self._tokenize_pairs(prompts, responses)]

    def encode(
        self, prompts: list[str], responses: list[str], max_length: int, answer_weight: float = 1.0
    ) -> StudentBatch:
        """Tokenize (prompt, response) pairs into a right-padded training batch.

        A pair is never shortened: cutting the prompt removes the question (and the
        student then trains on a format evaluation never shows it), cutting the
        response removes the answer line and EOS. The loop sizes `max_length` from the
        data and drops pairs that do not fit before batching (`data.fit_to_length`), so
        a pair longer than `max_length` here is a ValueError. `answer_weight`
        multiplies the loss weight of the tokens on the final answer line ("The answer
        is ...").
        """
        import torch

        tok = self.tokenizer
        rows = []
        for i, (response, (p_ids, r_ids, offsets)) in enumerate(
            zip(responses, self._tokenize_pairs(prompts, responses), strict=True)
        ):
            if len(p_ids) + len(r_ids) > max_length:
                raise ValueError(
                    f"{self.name}: pair {i} has {len(p_ids)} prompt + {len(r_ids)} response tokens, more than "
                    f"max_length {max_length}; pairs are never cut (drop them before encoding)"
                )
            weights = [1.0] * len(r_ids)
            if answer_weight != 1.0:
                lo, hi = _answer_line(response)
                weights = [answer_weight if (e > s and s < hi and e > lo) else 1.0 for s, e in offsets]
            rows.append((p_ids, r_ids, offsets, weights))

        seq_len = max(len(p) + len(r) for p, r, _, _ in rows)
        bsz = len(rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.full((bsz, seq_len), pad, dtype=torch.long)
        attention = torch.zeros((bsz, seq_len), dtype=torch.long)
        response_mask = torch.zeros((bsz, seq_len), dtype=torch.bool)
        loss_weight = torch.zeros((bsz, seq_len), dtype=torch.float32)
        all_offsets = []
        for i, (p_ids, r_ids, offsets, weights) in enumerate(rows):
            n_p, n = len(p_ids), len(p_ids) + len(r_ids)
            input_ids[i, :n] = torch.tensor(p_ids + r_ids, dtype=torch.long)
            attention[i, :n] = 1
            response_mask[i, n_p:n] = True
            loss_weight[i, n_p:n] = torch.tensor(weights, dtype=torch.float32)
            all_offsets.append([(int(s), int(e)) for s, e in offsets])
        return StudentBatch(input_ids, attention, response_mask, loss_weight, all_offsets)

    # --------------------------------------------------------------- forward
    def forward(self, batch: StudentBatch) -> StudentOutput:
        """Token NLL at response positions and last hidden states, with this student's adapter."""
        import torch
        import torch.nn.functional as F

        self.activate()
        batch = batch.to(self.device)
        input_ids, attention = batch.input_ids, batch.attention_mask
        # Position t predicts token t+1: the rows of `hidden[:, :-1]` under `target_mask` score
        # exactly the response tokens.
        target_mask = batch.response_mask[:, 1:]
        targets = input_ids[:, 1:][target_mask]
        if self.base.head_is_exact:
            hidden = self.base.body(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
            nll = self.base.response_nll(hidden[:, :-1][target_mask], targets)
        else:
            out = self.base.lm(
                input_ids=input_ids, attention_mask=attention, use_cache=False, output_hidden_states=True
            )
            hidden = out.hidden_states[-1]
            nll = F.cross_entropy(out.logits[:, :-1][target_mask].float(), targets, reduction="none")
        nll_positions = F.pad(target_mask, (1, 0), value=False)  # back to the predicted token's position
        token_nll = torch.zeros(input_ids.shape, dtype=torch.float32, device=nll.device)
        token_nll = token_nll.masked_scatter(nll_positions, nll)
        return StudentOutput(token_nll=token_nll, hidden=hidden, response_mask=batch.response_mask)

    __call__ = forward

    # ------------------------------------------------------------------ save
    def save_adapter(self, path) -> None:
        """Save only this student's adapter so that `PeftModel.from_pretrained(base, path)` loads it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            self.base.peft.save_pretrained(tmp, selected_adapters=[self.adapter])
            # PEFT writes a non-"default" adapter into a sub-folder named after it.
            src = Path(tmp) / self.adapter if self.adapter != "default" else Path(tmp)
            staged = Path(tmp) / "_staged"
            shutil.move(str(src), str(staged))
            if path.exists():
                shutil.rmtree(path)
            os.replace(staged, path)
        self.tokenizer.save_pretrained(str(path))

    def __repr__(self) -> str:
        return f"Student({self.name!r}, base={self.base.path!r}, adapter={self.adapter!r})"


def _answer_line(response: str) -> tuple[int, int]:
    """Char range of the final answer line: from the last "The answer is" to the end of its line.

    Without that phrase, the last non-empty line.
    """
    matches = list(ANSWER_LINE.finditer(response))
    if matches:
        start = matches[-1].start()
    else:
        stripped = response.rstrip()
        start = stripped.rfind("\n") + 1
    end = response.find("\n", start)
    return start, (len(response) if end < 0 else end)


# ---------------------------------------------------------------------- loading
def _lora_config(spec: Any):
    from peft import LoraConfig

    lora = _spec_get(spec, "lora", None) or {}
    target = _spec_get(lora, "target_modules", "all-linear")
    if isinstance(target, (list, tuple)):
        target = list(target)
    return LoraConfig(
        r=int(_spec_get(lora, "r", 8)),
        lora_alpha=float(_spec_get(lora, "alpha", 16)),
        lora_dropout=float(_spec_get(lora, "dropout", 0.0)),
        target_modules=target,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _use_qlora(spec: Any, device, field_prefix: str) -> bool:
    import torch

    want = _spec_get(spec, "qlora", None)
    on_cuda = torch.cuda.is_available() and torch.device(device).type == "cuda"
    if want is True and not on_cuda:
        raise ConfigError(f"{field_prefix}.qlora: QLoRA (4-bit bitsandbytes) needs a CUDA device")
    return on_cuda if want is None else bool(want)


def _load_base_model(path: str, device, dtype, qlora: bool, field_prefix: str, model_id: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{field_prefix}.qlora: QLoRA needs bitsandbytes: pip install 'qrdistill[qlora]'"
            ) from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.device(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any load failure is the user's model id
        raise ConfigError(f"{field_prefix}.model: cannot load '{model_id}': {_short(exc)}") from None
    if qlora:
        from peft import prepare_model_for_kbit_training

        # Our own checkpointing (adapter-aware, below) replaces PEFT's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(torch.device(device))
    model.config.use_cache = False
    return model


def _enable_checkpointing(base: _Base) -> None:
    lm = base.lm
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(lm).__name__} does not support it")
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable()
    for module in lm.modules():
        if hasattr(module, "_gradient_checkpointing_func"):
            module._gradient_checkpointing_func = base.adapter_pinned_checkpoint


def _check_head(base: _Base, tokenizer) -> None:
    """Does body + head reproduce the model's own logits? If not, use the full forward."""
    import torch

    ids = tokenizer("The answer is 42.", add_special_tokens=True, return_tensors="pt")["input_ids"]
    ids = ids.to(base.head.weight.device)
    was_training = base.peft.training
    base.peft.eval()
    with torch.no_grad():
        full = base.lm(input_ids=ids, use_cache=False).logits.float()
        mine = base.logits(base.body(input_ids=ids, use_cache=False).last_hidden_state).float()
    base.peft.train(was_training)
    tol = 1e-3 * max(1.0, float(full.abs().max()))
    base.head_is_exact = bool(full.shape == mine.shape and (full - mine).abs().max() <= tol)


@dataclass
class _BaseKey:
    path: str
    dtype: Any
    qlora: bool
    members: list[int] = field(default_factory=list)


def load_students(specs: list[Any], device="cpu", dtype=None, gradient_checkpointing: bool = False) -> list[Student]:
    """Load one Student per spec; students on the same model share one frozen base.

    `specs` are StudentConfig-like objects (name, model, lora{r, alpha,
    dropout, target_modules}, optional qlora and dtype). `dtype` overrides
    every spec's; the default is float32 on CPU and bfloat16 on a CUDA GPU
    that supports it.
    """
    import torch
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from qrdistill.models import quiet_peft_wrap, resolve_model

    device = torch.device(device)
    names = [str(_spec_get(s, "name")) for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"train.students: student names must be unique, got {names}")

    groups: dict[tuple, _BaseKey] = {}
    for i, spec in enumerate(specs):
        prefix = f"train.students.{i}"
        model_id = str(_spec_get(spec, "model"))
        try:
            path = resolve_model(model_id)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}.model: cannot load '{model_id}': {exc}") from None
        if os.path.isdir(path):
            path = os.path.realpath(path)
        want = _torch_dtype(dtype if dtype is not None else _spec_get(spec, "dtype"), f"{prefix}.dtype")
        if want is None:
            cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            want = torch.bfloat16 if cuda_bf16 else torch.float32
        qlora = _use_qlora(spec, device, prefix)
        key = (path, want, qlora)
        groups.setdefault(key, _BaseKey(path, want, qlora)).members.append(i)

    students: list[Student | None] = [None] * len(specs)
    for group in groups.values():
        first = group.members[0]
        prefix = f"train.students.{first}"
        model_id = str(_spec_get(specs[first], "model"))
        model = _load_base_model(group.path, device, group.dtype, group.qlora, prefix, model_id)
        try:
            tokenizer = AutoTokenizer.from_pretrained(group.path)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{prefix}.model: cannot load the tokenizer of '{model_id}': {_short(exc)}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{prefix}.model: '{model_id}' has no fast tokenizer (span alignment needs offsets)")
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"{prefix}.model: the tokenizer of '{model_id}' has no EOS token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

        peft_model = None
        adapters = {}
        for i in group.members:
            # PEFT keeps adapters in ModuleDicts, whose keys cannot contain dots.
            adapters[i] = re.sub(r"[^A-Za-z0-9_-]", "_", names[i])
            try:
                lora_cfg = _lora_config(specs[i])
                if peft_model is None:
                    with quiet_peft_wrap():
                        peft_model = get_peft_model(model, lora_cfg, adapter_name=adapters[i])
                else:
                    peft_model.add_adapter(adapters[i], lora_cfg)
            except ValueError as exc:
                raise ConfigError(f"train.students.{i}.lora: {_short(exc)}") from None
        base = _Base(peft_model, group.path)
        for i in group.members:
            student = Student(names[i], adapters[i], base, tokenizer, specs[i])
            base.students.append(student)
            students[i] = student
        peft_model.train()
        base.activate(base.students[0].adapter)
        _check_head(base, tokenizer)
        if gradient_checkpointing:
            _enable_checkpointing(base)
    return students  # type: ignore[return-value]

