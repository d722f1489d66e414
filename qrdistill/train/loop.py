"""The joint training loop (eq. 9) shared by QR-Distill, its ablations and the baselines.

One optimizer step, for `grad_accum` global micro-batches of paths:
1. Routing (eqs. 1-2), by `train.router.mode`: `learned` (cached encoder embeddings ->
   Router -> Gumbel multi-hot alpha [B, S]), `random` (the same Gumbel noise with every
   logit at 0: P(route) = 1/2, a control) or `off` (every path to every student). Noise
   is keyed by (seed, epoch, path), and every rank routes the whole global micro-batch,
   so eq. 3's mean assignment covers the global batch and ranks decide alike.
2. Each student runs forward ONLY on its routed paths (`mutual.peer_paths: co_routed`),
   and that one forward serves its distill loss, the mutual term and the router signal:
   this is where a joint epoch becomes cheaper than S separate trainings (paper Table 3).
3. Paths routed to >= 2 students: hidden states pooled on common character spans
   (alignment.align_students) -> MutualHead (eqs. 5-8).
4. Students: Σ_s L_distill^(s) + λ2·L_mutual, backward per micro-batch (routing enters
   only as a selection). Router, once per step over all its micro-batches: the fit term
   Σ alpha·A (A: which students fit each path, `train.router.signal`) − λ1·H(ᾱ) −
   λ_load·load. Together these are eq. 9 with the distill term's router gradient replaced
   by a lower-variance estimate of the same thing (docs/method.md, "Routing signal").
5. AdamW with one param group per student (its own lr), one for the router (constant lr by
   default) and one for the mutual head (train/optim.py).

Sequences are sized from the data (`train.max_length: auto`, per student tokenizer); a
pair that does not fit is dropped and counted, never cut.

Distributed (accelerate / torchrun): students sharing a base run several forward
passes per backward, which DDP's reducer does not support, and only the small
trainable tensors (LoRA, router, mutual head) need syncing. So gradients are
averaged by hand: one all-reduce of a flat buffer per optimizer step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.train.data import Schedule, TrainItem, text_hash

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.pt"
ROUTING_FINAL_FILE = "routing_final.jsonl"


def _append_jsonl(f, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()


def _rows_upto(path: Path, step: int) -> list[str]:
    """Lines of a per-step JSONL log with `step <= step`.

    A last line cut short by a kill is dropped; any other line that is not a log row means the file is not the
    log this training wrote, and resuming on top of it would mix the two: DataError naming file:line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    keep = []
    for i, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
            row = json.loads(line)
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise ValueError("no integer step")
        except ValueError as e:  # JSON and UTF-8 errors included
            if i == len(lines):
                continue
            from qrdistill.errors import DataError

            raise DataError(f"{path}:{i}: not a training log row ({str(e).splitlines()[0][:80]}); restore the "
                            "file, or delete it to continue without the rows logged so far") from None
        if row["step"] <= step:
            keep.append(line)
    return keep


def take_rows(batch, rows, trim: bool = True):
    """Rows of a right-padded StudentBatch; `trim` drops columns that are padding in every kept row."""
    from qrdistill.train.students import StudentBatch

    ids = batch.input_ids[rows]
    att = batch.attention_mask[rows]
    t = int(att.sum(dim=1).max().item()) if trim and len(rows) else ids.shape[1]
    return StudentBatch(
        input_ids=ids[:, :t],
        attention_mask=att[:, :t],
        response_mask=batch.response_mask[rows][:, :t],
        loss_weight=batch.loss_weight[rows][:, :t],
        response_offsets=[batch.response_offsets[int(i)] for i in rows],
    )


def scatter_rows(x, rows, size: int, seq_len: int):
    """Place a student's [n, t, ...] outputs at `rows` of a zero [size, seq_len, ...] tensor (differentiable)."""
    import torch.nn.functional as F

    pad = [0, 0] * (x.dim() - 2) + [0, seq_len - x.shape[1]]
    full = x.new_zeros((size, seq_len, *x.shape[2:]))
    return full.index_copy(0, rows.to(x.device), F.pad(x, pad))


@dataclass
class StepStats:
    """What one micro-batch trained (summed over ranks in the log row)."""

    distill: list[float]
    mutual: float = 0.0
    mutual_mse: float = 0.0  # eq. 8 alone; `mutual` adds the competence regressors' term when it is on
    co_routed: float = 0.0
    routing_rate: list[float] = field(default_factory=list)
    paths_per_student: list[float] = field(default_factory=list)


@dataclass
class MicroResult:
    """One micro-batch's forward/backward: its stats and what the router objective needs."""

    stats: StepStats
    alpha_global: Any = None  # [B_global, S] straight-through assignment (graph to the router when learned)
    alpha_local: Any = None  # [B_local, S] this rank's rows of it
    router_losses: Any = None  # [B_local, S] nats per response character (detached; 0 where not observed)
    path_losses: Any = None  # [B_local, S] per-path distill loss ℓ_js (detached)
    observed: Any = None  # [B_local, S] bool: the student ran on the path
    routed: Any = None  # [B_local, S] bool
    qindex: Any = None  # [B_global] question index (entropy_scope: question)
    routing_rows: list[dict[str, Any]] = field(default_factory=list)
    local_rows: list[tuple] = field(default_factory=list)


@dataclass
class StepResult:
    """One optimizer step's accumulated result (before the update is applied)."""

    stats: list[StepStats]
    tau: float
    mutual_warmup: bool = False  # L_mutual trained the mutual head only (students' hidden states detached)
    entropy: float = 0.0
    load: float = 0.0
    fit: float = 0.0
    compared: int = 0
    next_micro: int = 0
    routing_rows: list[dict[str, Any]] = field(default_factory=list)
    local_rows: list[tuple] = field(default_factory=list)


class Trainer:
    """Builds models and optimizer from a RunConfig and runs (or resumes) training."""

    def __init__(self, cfg, run_dir: Path, items: list[TrainItem], max_steps: int | None, fingerprint: str,
                 extra_summary: dict[str, Any] | None = None, reference_paths: int | None = None,
                 train_dir: Path | None = None, resume_from: list[Path] | None = None):
        """`train_dir`: where this training writes (default D/train/; the stage stages a replacement in
        D/train.new/). `resume_from`: checkpoint folders to continue from, searched in order (default its own)."""
        self.cfg = cfg
        self.tc = cfg.train
        self.run_dir = Path(run_dir)
        self.train_dir = Path(train_dir) if train_dir is not None else self.run_dir / "train"
        self.ckpt_dir = self.train_dir / "checkpoints"
        self.resume_from = [Path(p) for p in resume_from] if resume_from is not None else [self.ckpt_dir]
        self.items = items
        self.max_steps = max_steps if max_steps is not None else self.tc.max_steps
        self.fingerprint = fingerprint
        self.extra_summary = extra_summary or {}
        self.names = self.tc.student_names
        # step_budget: matched sizes every method's run by this many kept paths (the qrdistill/sft item count).
        self.reference_paths = reference_paths

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        tc = self.tc
        cuda = torch.cuda.is_available()
        mp = tc.mixed_precision if cuda else "no"
        if tc.mixed_precision != "no" and not cuda:
            log.warning("train.mixed_precision=%s ignored: no GPU (bf16 is slower than fp32 on CPU)",
                        tc.mixed_precision)
        others = [t for t in tc.trackers if t != "tensorboard"]
        # Without a GPU, accelerate only sets up a (gloo) process group when told it runs on CPU.
        cpu_ddp = not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.acc = Accelerator(mixed_precision=mp, log_with=others or None, project_dir=str(self.train_dir),
                               cpu=cpu_ddp)
        self.main = self.acc.is_main_process
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        self.device = self.acc.device
        if not cuda:
            # CPU kernels are deterministic already; this guards against a silent change.
            torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(self.cfg.seed)

        from qrdistill.train.students import load_students

        self.students = load_students(tc.students, device=self.device,
                                      gradient_checkpointing=tc.gradient_checkpointing)
        if tc.frozen_peer is not None:
            self.students[self.names.index(tc.frozen_peer)].set_trainable(False)
        self.S = len(self.students)
        self._fit_lengths()

        self.mode = tc.router.mode
        self.router = None
        self.embeddings = None
        self.signal = None
        if self.mode == "learned":
            from qrdistill.train.router import RelativeSignal, Router

            self.embeddings = self._path_embeddings()
            set_seed(self.cfg.seed + 1)
            self.router = Router(self.embeddings.shape[1], self.S, hidden=tc.router.hidden).to(self.device)
            if tc.router.signal == "relative":
                self.signal = RelativeSignal(self.S)
        self.mutual = None
        if tc.lambda_mutual > 0:
            from qrdistill.train.mutual import MutualHead

            set_seed(self.cfg.seed + 2)
            self.mutual = MutualHead([s.hidden_size for s in self.students], tc.mutual.shared_dim,
                                     init=tc.mutual.init).to(self.device)
        self.question_index = None
        if tc.router.entropy_scope == "question":
            qids = {q: i for i, q in enumerate(dict.fromkeys(it.qid for it in self.items))}
            self.question_index = torch.tensor([qids[it.qid] for it in self.items])

        self.schedule = Schedule(len(self.items), tc.batch_size, self.world, tc.grad_accum, self.cfg.seed)
        self.total_steps = self.max_steps or tc.epochs * self._steps_per_epoch()
        # train.mutual.warmup_ratio: the first steps in which L_mutual trains the mutual head only.
        self.mutual_warmup_steps = 0 if self.mutual is None else round(tc.mutual.warmup_ratio * self.total_steps)
        self._build_optimizer()
        if self.world > 1:
            # Identical seeds give identical inits already; broadcasting makes it a guarantee.
            import torch.distributed as dist

            for p in self.params:
                dist.broadcast(p.data, src=0)
        self.never_grad = set(self.param_names)
        self._first_check_done = False

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: of the method's own items, or (step_budget: matched) of the kept paths."""
        if self.tc.step_budget == "matched" and self.reference_paths:
            micro = -(-self.reference_paths // self.schedule.global_batch)
            return -(-micro // self.tc.grad_accum)
        return self.schedule.steps_per_epoch

    def _fit_lengths(self) -> None:
        """Size sequences per student from the data and drop the pairs that do not fit (never cut them)."""
        from qrdistill.train.data import check_drops, fit_students

        keys = [it.key for it in self.items]
        prompts = [it.prompt for it in self.items]
        responses = [it.response for it in self.items]
        cap = self.tc.max_length_cap
        self.length_fits = fit_students(
            {s.name: s.pair_lengths(prompts, responses) for s in self.students}, keys, self.tc.max_length,
            {s.name: min(cap, s.max_positions or cap) for s in self.students}, [it.task for it in self.items],
        )
        drop = check_drops(len(self.items), self.length_fits)
        self.items_before_fit = len(self.items)
        if drop:
            log.info("train: %d of %d pairs are longer than max_length (%s) and are not trained on",
                     len(drop), len(self.items), ", ".join(f"{n} {f.max_length}" for n, f in self.length_fits.items()))
            self.items = [it for it in self.items if it.key not in drop]
        if not self.items:
            from qrdistill.errors import DataError

            raise DataError("train.max_length: no training pair fits")
        self.max_lengths = [self.length_fits[s.name].max_length for s in self.students]
        if self.reference_paths and self.tc.method in ("qrdistill", "sft"):
            # Their items are the kept paths: the budget counts the ones that train, so a dropped pair
            # cannot add a one-step "epoch".
            self.reference_paths = len(self.items)

    def _path_embeddings(self):
        """Eq. 1's h_j for every item, computed once (rank 0) and cached in train/embeddings.pt by text hash."""
        import torch

        path = self.train_dir / EMBEDDINGS_FILE
        enc_name = self.tc.router.encoder
        hashes = [text_hash(it.response) for it in self.items]
        if self.main:
            cache: dict[str, Any] = {"encoder": enc_name, "hashes": [], "emb": None}
            source = None
            # A training staged beside a finished one starts from that one's cache.
            for src in dict.fromkeys([path, self.run_dir / "train" / EMBEDDINGS_FILE]):
                if not src.exists():
                    continue
                try:
                    loaded = torch.load(src, map_location="cpu", weights_only=True)
                    if loaded.get("encoder") == enc_name:
                        cache, source = loaded, src
                        break
                except (OSError, RuntimeError, EOFError, AttributeError, pickle.UnpicklingError) as e:
                    log.warning("ignoring unreadable %s (%s); recomputing", src, e)
            known = set(cache["hashes"])
            todo = list(dict.fromkeys(h for h in hashes if h not in known))
            if todo or source != path:
                from qrdistill.train.router import PathEncoder

                if todo:
                    text_of = {text_hash(it.response): it.response for it in self.items}
                    t0 = time.perf_counter()
                    encoder = PathEncoder(enc_name, device=str(self.device))
                    new = encoder.encode([text_of[h] for h in todo])
                    del encoder
                    log.info("router encoder %s: embedded %d paths in %.1fs", enc_name, len(todo),
                             time.perf_counter() - t0)
                    emb = new if cache["emb"] is None else torch.cat([cache["emb"], new])
                    cache = {"encoder": enc_name, "hashes": cache["hashes"] + todo, "emb": emb}
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                torch.save(cache, tmp)
                tmp.replace(path)
        self.acc.wait_for_everyone()
        # Every rank (rank 0 included) reads the same file: identical inputs to the router everywhere.
        cache = torch.load(path, map_location="cpu", weights_only=True)
        row = {h: i for i, h in enumerate(cache["hashes"])}
        return cache["emb"][[row[h] for h in hashes]].to(self.device)

    def _build_optimizer(self) -> None:
        from qrdistill.train.optim import build_optimizer, build_param_groups

        tc = self.tc
        groups = build_param_groups(self.students, tc.students, self.router, self.mutual, tc)
        self.param_names: list[str] = []
        for g in groups:
            if g["group"].startswith("student/"):
                name = g["group"].split("/", 1)[1]
                self.param_names += [f"{name}/lora.{i}" for i in range(len(g["params"]))]
            else:
                mod = self.router if g["group"] == "router" else self.mutual
                self.param_names += [f"{g['group']}/{n}" for n, p in mod.named_parameters() if p.requires_grad]
        self.params = [p for g in groups for p in g["params"]]
        # Every trainable tensor must be in the optimizer, exactly once, and nothing frozen may be.
        ids = [id(p) for p in self.params]
        if len(set(ids)) != len(ids):
            raise RuntimeError("a parameter is in two optimizer groups")
        wanted = {id(p) for s in self.students if s.trainable for p in s.trainable_parameters()}
        for mod in (self.router, self.mutual):
            if mod is not None:
                wanted |= {id(p) for p in mod.parameters() if p.requires_grad}
        stray = {id(p) for s in self.students for p in s.model.parameters() if p.requires_grad} - set(ids)
        if wanted != set(ids) or stray:
            raise RuntimeError(f"optimizer/trainable mismatch: {len(wanted ^ set(ids))} missing, {len(stray)} stray")
        self.group_names = [g["group"] for g in groups]
        self.optimizer, self.scheduler = build_optimizer(
            groups, tc.scheduler, round(tc.warmup_ratio * self.total_steps), self.total_steps)
        self.optimizer = self.acc.prepare_optimizer(self.optimizer, device_placement=False)

    # -------------------------------------------------------------- one step
    def _route(self, global_idx: list[int], epoch: int, tau: float):
        """-> (alpha [n, S], P(route) [n, S] or None). alpha is straight-through for a learned router."""
        import torch

        n = len(global_idx)
        if self.mode == "off":
            return torch.ones(n, self.S, device=self.device), None
        from qrdistill.train.router import (
            assignment_probabilities,
            gumbel_multi_hot,
            random_assignment,
            routing_noise,
        )

        noise = routing_noise([self.items[i].key for i in global_idx], epoch, self.cfg.seed, self.S)
        if self.mode == "random":
            return random_assignment(noise).to(self.device), torch.full((n, self.S), 0.5)
        idx = torch.tensor(global_idx, dtype=torch.long)
        logits = self.router(self.embeddings[idx.to(self.device)])
        return gumbel_multi_hot(logits, noise, tau), assignment_probabilities(logits)

    def _micro(self, epoch: int, micro: int, n_micro: int, tau: float, step: int,
               mutual_warmup: bool = False) -> MicroResult:
        """Forward and backward of the students on one micro-batch; the router's part is returned, not applied.

        `mutual_warmup`: the mutual term gets the students' hidden states detached (it trains the head only)."""
        import torch

        from qrdistill.train.losses import path_nll, routed_distill_loss

        tc = self.tc
        per_rank = self.schedule.step_micro(epoch, micro)
        global_idx = [i for r in per_rank for i in r]
        local_idx = per_rank[self.rank]
        off = sum(len(r) for r in per_rank[: self.rank])
        with self.acc.autocast():
            alpha_g, probs_g = self._route(global_idx, epoch, tau)
        alpha = alpha_g[off: off + len(local_idx)]
        hard_g = (alpha_g.detach() > 0.5).int().cpu()
        res = MicroResult(stats=StepStats(distill=[]), alpha_global=alpha_g, alpha_local=alpha)
        if self.main:
            owner = [r for r, ids in enumerate(per_rank) for _ in ids]
            for j, i in enumerate(global_idx):
                it = self.items[i]
                res.routing_rows.append({
                    "epoch": epoch, "step": step, "path_key": it.key, "qid": it.qid, "task": it.task,
                    "style": it.style, "difficulty": it.difficulty, "alpha": hard_g[j].tolist(),
                    "probs": None if probs_g is None else [round(float(x), 5) for x in probs_g[j]],
                    "students": self.names, "rank": owner[j],
                })
        for j, i in enumerate(local_idx):
            res.local_rows.append((epoch, self.items[i].key, tuple(hard_g[off + j].tolist())))
        if self.question_index is not None:
            res.qindex = self.question_index[torch.tensor(global_idx, dtype=torch.long)]

        B = len(local_idx)
        distill = [torch.zeros((), device=self.device) for _ in self.students]
        mutual = mutual_mse = torch.zeros((), device=self.device)
        co_routed = 0
        routed = (alpha.detach() > 0.5).cpu()
        res.routed = routed
        res.router_losses = torch.zeros(B, self.S)
        res.path_losses = torch.zeros(B, self.S)
        res.observed = torch.zeros(B, self.S, dtype=torch.bool)
        if B:
            prompts = [self.items[i].prompt for i in local_idx]
            responses = [self.items[i].response for i in local_idx]
            chars = torch.tensor([max(len(r), 1) for r in responses], dtype=torch.float32)
            all_rows = torch.arange(B)
            run_all = self.mode == "off" or tc.mutual.peer_paths == "all"
            peer_forward = self.mode == "learned" and tc.router.signal == "relative" and tc.router.peer_forward
            fulls, outs, rows_of = [], [], []
            path_losses = torch.zeros(B, self.S, device=self.device)
            for s, student in enumerate(self.students):
                full = student.encode(prompts, responses, self.max_lengths[s], answer_weight=tc.answer_weight)
                rows = all_rows if run_all else routed[:, s].nonzero(as_tuple=True)[0]
                fulls.append(full)
                rows_of.append(rows)
                outs.append(None)
                if len(rows):
                    sub = take_rows(full, rows).to(self.device)
                    grad_ctx = contextlib.nullcontext() if student.trainable else torch.no_grad()
                    with grad_ctx, self.acc.autocast():
                        out = student.forward(sub)
                    outs[s] = out
                    rows_dev = rows.to(self.device)
                    # Routing is a selection here: the router learns from its own objective (step end).
                    distill[s] = routed_distill_loss(out.token_nll, sub.loss_weight, sub.response_mask,
                                                     alpha[rows_dev, s].detach())
                    ell = path_nll(out.token_nll, sub.loss_weight, sub.response_mask).detach()
                    path_losses[rows_dev, s] = ell
                    res.path_losses[rows, s] = ell.float().cpu()
                    res.router_losses[rows, s] = (out.token_nll.detach().float().sum(dim=1).cpu() / chars[rows])
                    res.observed[rows, s] = True
                missing = (~res.observed[:, s]).nonzero(as_tuple=True)[0]
                if peer_forward and len(missing):
                    # The router compares students on the same path; an unrouted student's loss costs a
                    # no-grad forward (train.router.peer_forward).
                    with torch.no_grad(), self.acc.autocast():
                        out = student.forward(take_rows(full, missing).to(self.device))
                    res.router_losses[missing, s] = out.token_nll.float().sum(dim=1).cpu() / chars[missing]
                    res.observed[missing, s] = True
            if self.mutual is not None:
                mutual, mutual_mse, co_routed = self._mutual_term(alpha, fulls, outs, rows_of, path_losses,
                                                                  detach_students=mutual_warmup)
        loss = (torch.stack([d.float() for d in distill]).sum() + tc.lambda_mutual * mutual) / n_micro
        if loss.requires_grad:
            self.acc.backward(loss)
        res.stats = StepStats(
            distill=[d.item() for d in distill], mutual=mutual.item(), mutual_mse=float(mutual_mse),
            co_routed=float(co_routed),
            routing_rate=hard_g.float().mean(dim=0).tolist() if len(global_idx) else [0.0] * self.S,
            paths_per_student=[float(c) for c in routed.sum(dim=0).tolist()],
        )
        return res

    def _router_step(self, micros: list[MicroResult]) -> tuple[float, float, float, int]:
        """The router's objective over the step's micro-batches, backpropagated.

        -> (fit, H, load, compared): `compared` counts the paths that gave the router a comparison
        (relative signal: two or more students observed; own_mean: routed paths). With two students
        the fit's value is ~0 by construction (A_j1 = -A_j0 on a compared path); its gradient is not.
        """
        import torch

        from qrdistill.train.losses import (
            assignment_entropy,
            load_entropy,
            own_mean_advantage,
            routing_fit_term,
        )

        alpha_g = torch.cat([m.alpha_global for m in micros])
        qindex = torch.cat([m.qindex for m in micros]) if self.question_index is not None else None
        entropy = assignment_entropy(alpha_g, qindex)
        load = load_entropy(alpha_g)
        if self.mode != "learned":
            return 0.0, entropy.item(), load.item(), 0
        alpha = torch.cat([m.alpha_local for m in micros])
        if self.tc.router.signal == "relative":
            losses = torch.cat([m.router_losses for m in micros])
            observed = torch.cat([m.observed for m in micros])
            offset = 0
            if self.world > 1:
                # Every rank updates the signal's running statistics from the global batch, so they stay
                # identical across ranks (and the checkpoint, written by rank 0, resumes all of them).
                from accelerate.utils import gather_object

                parts = gather_object([(self.rank, losses, observed)])
                parts.sort(key=lambda x: x[0])
                offset = sum(len(p[1]) for p in parts if p[0] < self.rank)
                losses = torch.cat([p[1] for p in parts])
                observed = torch.cat([p[2] for p in parts])
            adv = self.signal.advantage(losses, observed)[offset: offset + len(alpha)]
            # Each rank's fit is its share of the global mean; _sync_grads averages over ranks.
            adv = adv * self.world
            compared = int((observed.sum(dim=1) >= 2).sum())
        else:
            routed = torch.cat([m.routed for m in micros])
            adv = own_mean_advantage(torch.cat([m.path_losses for m in micros]), routed)
            compared = int(routed.any(dim=1).sum())
        fit = routing_fit_term(alpha, adv.to(alpha.device))
        objective = fit - self.tc.lambda_entropy * entropy - self.tc.lambda_load * load
        self.acc.backward(objective)
        return fit.item(), entropy.item(), load.item(), compared

    def accumulate(self, epoch: int, micro: int, step: int) -> StepResult:
        """Forward and backward of one optimizer step from data position (epoch, micro), after `step` steps.

        Gradients are left in `.grad` (the update is `apply_update`), so tests can inspect them.
        """
        from qrdistill.train.router import anneal_tau

        tc = self.tc
        tau = anneal_tau(step, self.total_steps, tc.router.tau, tc.router.tau_end) if tc.router.anneal \
            else tc.router.tau
        # A function of the step number alone, so a run resumed inside the warm-up continues it exactly.
        warm = step < self.mutual_warmup_steps
        micros = self.schedule.step_micros(micro)
        results = [self._micro(epoch, m, len(micros), tau, step + 1, mutual_warmup=warm) for m in micros]
        fit, entropy, load, compared = self._router_step(results)
        return StepResult(
            stats=[r.stats for r in results], tau=tau, mutual_warmup=warm, entropy=entropy, load=load, fit=fit,
            compared=compared,
            next_micro=micros[-1] + 1,
            routing_rows=[row for r in results for row in r.routing_rows],
            local_rows=[row for r in results for row in r.local_rows],
        )

    def _mutual_term(self, alpha, fulls, outs, rows_of, path_losses, detach_students: bool = False):
        """Eqs. 5-8 on this rank's paths that at least two students ran (their distill forwards reused)
        -> (loss, eq. 8's mean squared distance alone, detached; paths used).

        `detach_students` (the warm-up, `train.mutual.warmup_ratio`): the students' pooled hidden states
        enter detached, so the term trains the projections and regressors only."""
        import torch

        from qrdistill.train.alignment import align_students
        from qrdistill.train.mutual import peer_pair_weight
        from qrdistill.train.students import StudentOutput

        B = alpha.shape[0]
        ran = torch.zeros(B, self.S, dtype=torch.bool)
        for s, rows in enumerate(rows_of):
            ran[rows, s] = True
        pw = peer_pair_weight(alpha, self.tc.mutual.peer_paths) if self.mode != "off" else None
        part = ran if pw is None else (pw.cpu() & ran)
        sel = (part.sum(dim=1) >= 2).nonzero(as_tuple=True)[0]
        if len(sel) == 0:
            return torch.zeros((), device=self.device), 0.0, 0
        m_outs, m_batches = [], []
        for s, (full, out, rows) in enumerate(zip(fulls, outs, rows_of, strict=True)):
            seq_len = full.input_ids.shape[1]
            batch = take_rows(full, sel, trim=False).to(self.device)
            if out is None:  # this student ran none of these paths: pair_weight leaves it out
                hidden = torch.zeros(len(sel), seq_len, self.students[s].hidden_size, device=self.device)
                nll = torch.zeros(len(sel), seq_len, device=self.device)
            else:
                hidden = scatter_rows(out.hidden, rows, B, seq_len)[sel.to(self.device)]
                nll = scatter_rows(out.token_nll, rows, B, seq_len)[sel.to(self.device)]
            m_outs.append(StudentOutput(token_nll=nll, hidden=hidden, response_mask=batch.response_mask))
            m_batches.append(batch)
        pooled, span_mask = align_students(m_outs, m_batches)
        if detach_students:
            pooled = [z.detach() for z in pooled]
        pair = part[sel].to(self.device) if (pw is not None or not bool(part[sel].all())) else None
        with self.acc.autocast():
            res = self.mutual(pooled, span_mask.to(self.device), self.tc.mutual.detach_target, pair_weight=pair,
                              path_losses=path_losses[sel.to(self.device)])
        return res.loss, res.mse.item(), len(sel)

    def _sync_grads(self):
        """Average gradients over ranks (one all-reduce); returns which params got a gradient anywhere."""
        import torch

        present = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32, device=self.device)
        if self.world == 1:
            return present > 0
        flat = torch.cat([present] + [
            (p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)).reshape(-1)
            for p in self.params
        ])
        flat = self.acc.reduce(flat, reduction="sum")
        present, grads = flat[: len(self.params)], flat[len(self.params):] / self.world
        pos = 0
        for p, there in zip(self.params, present.tolist(), strict=True):
            n = p.numel()
            if there > 0:
                p.grad = grads[pos: pos + n].view_as(p).to(p.dtype).clone()
            pos += n
        return present > 0

    # ------------------------------------------------------------ save/load
    def _state(self, step: int, epoch: int, micro: int) -> dict[str, Any]:
        return {
            "step": step, "epoch": epoch, "micro": micro, "fingerprint": self.fingerprint, "world": self.world,
            "students": {s.name: [p.detach().cpu().clone() for p in s.trainable_parameters()] for s in self.students},
            "router": None if self.router is None else self.router.state_dict(),
            "signal": None if self.signal is None else self.signal.state_dict(),
            "group_names": list(self.group_names),
            "mutual": None if self.mutual is None else self.mutual.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "epoch_times": list(self.epoch_times), "epoch_elapsed": self.epoch_elapsed,
            "never_grad": sorted(self.never_grad), "rates_sum": self.rates_sum, "rates_n": self.rates_n,
        }

    def _find_checkpoint(self, resume: bool) -> tuple[Path, dict[str, Any], dict[str, Any] | None] | None:
        """The newest good checkpoint under `resume_from` -> (path, state, RNG state), or None to start at step 0.

        A damaged one is reported and the one before it used; when every one is damaged nothing is deleted:
        the user is told which they are."""
        from qrdistill.errors import DataError
        from qrdistill.train.checkpoint import list_checkpoints, load_checkpoint

        bad: list[Path] = []
        other = False
        for root in self.resume_from:
            for _, path in reversed(list_checkpoints(root)):
                try:
                    state, rng = load_checkpoint(path, self.rank)
                except DataError as e:
                    bad.append(path)
                    if self.main:
                        log.warning("train: skipping a damaged checkpoint: %s", e)
                    continue
                if not resume and state.get("fingerprint") != self.fingerprint:
                    # Running the same training again continues it (stages resume where they stopped);
                    # a checkpoint of a different config or data is not continued, nor are older ones beside it.
                    if self.main:
                        log.info("train: %s is a checkpoint of another config or data; not continuing it", path)
                    other = True
                    break
                self.damaged_newer = [p for p in bad if p.parent == self.ckpt_dir]
                return path, state, rng
        if bad and not other:
            raise DataError(f"train: every checkpoint is damaged ({', '.join(map(str, bad))}; see the warnings "
                            "above); nothing was deleted: delete them to train from step 0")
        if resume:
            log.info("train: --resume but no checkpoint in %s; starting from the beginning",
                     " or ".join(map(str, self.resume_from)))
        return None

    def _restore(self, ckpt: Path, state: dict[str, Any], rng: dict[str, Any] | None):
        import torch

        from qrdistill.errors import ConfigError
        from qrdistill.train.checkpoint import set_rng_state

        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written with a different config or data; resuming anyway", ckpt)
        saved_groups = state.get("group_names")
        if saved_groups is not None and list(saved_groups) != list(self.group_names):
            raise ConfigError(
                f"train: checkpoint {ckpt} has optimizer groups {list(saved_groups)}, this config builds "
                f"{list(self.group_names)}; it cannot be resumed (delete {ckpt.parent} to start over)")
        try:
            with torch.no_grad():
                for s in self.students:
                    for p, v in zip(s.trainable_parameters(), state["students"][s.name], strict=True):
                        p.copy_(v.to(p.device))
            if self.router is not None:
                self.router.load_state_dict(state["router"])
            if self.signal is not None and state.get("signal"):
                self.signal.load_state_dict(state["signal"])
            if self.mutual is not None:
                self.mutual.load_state_dict(state["mutual"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.acc.scaler is not None and state.get("scaler"):
                self.acc.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            # --resume after changing a LoRA rank, target modules or a head size.
            raise ConfigError(f"train: checkpoint {ckpt} does not fit this config's students, router or mutual "
                              f"head ({str(e).splitlines()[0][:120]}); it cannot be resumed") from None
        self.epoch_times = list(state["epoch_times"])
        self.epoch_elapsed = float(state["epoch_elapsed"])
        self.never_grad = set(state["never_grad"])
        self.rates_sum, self.rates_n = list(state["rates_sum"]), int(state["rates_n"])
        if state["world"] != self.world or rng is None:
            log.warning("checkpoint saved by %d processes, resuming with %d: data order is kept, but RNG "
                        "streams (LoRA dropout) differ from an uninterrupted run", state["world"], self.world)
        if rng is not None:
            set_rng_state(rng)
        return int(state["step"]), int(state["epoch"]), int(state["micro"])

    def _checkpoint(self, step: int, epoch: int, micro: int) -> None:
        from qrdistill.train.checkpoint import save_checkpoint

        info = {"step": step, "epoch": epoch, "micro": micro, "total_steps": self.total_steps,
                "world_size": self.world, "time": time.time(), "fingerprint": self.fingerprint}
        state = self._state(step, epoch, micro) if self.main else {}
        save_checkpoint(self.acc, self.ckpt_dir, step, state, self.students, self.tc.keep_checkpoints, info)

    # ------------------------------------------------------------------ run
    def run(self, resume: bool) -> dict[str, Any]:
        from qrdistill.train.artifacts import LOG_FILES, SUMMARY_FILE, clear_training

        tc = self.tc
        self.epoch_times: list[float] = []
        self.epoch_elapsed = 0.0
        self.never_grad = set(self.param_names)
        self.rates_sum, self.rates_n = [0.0] * self.S, 0
        self.damaged_newer: list[Path] = []
        step, epoch, micro = 0, 0, 0
        found = self._find_checkpoint(resume)
        ckpt = None
        if found is not None:
            ckpt, state, rng = found
            step, epoch, micro = self._restore(ckpt, state, rng)
            del state
            log.info("train: resuming from %s (step %d/%d, epoch %d)", ckpt, step, self.total_steps, epoch)
        # Every rank has read its checkpoint before rank 0 removes or rewrites anything.
        self.acc.wait_for_everyone()

        log_f = routing_f = tb = None
        if self.main:
            self.train_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                # Stale checkpoints or logs of another training must not mix in; only files the loop writes go.
                clear_training(self.train_dir)
            else:
                # Past the checkpoint resumed from: they would be counted as the newest by keep_checkpoints.
                for p in self.damaged_newer:
                    shutil.rmtree(p, ignore_errors=True)
                (self.train_dir / SUMMARY_FILE).unlink(missing_ok=True)
            # Continuing a finished training's checkpoint in a staging folder continues its logs too.
            source = self.train_dir if ckpt is None else ckpt.parent.parent
            for name in LOG_FILES:
                kept = _rows_upto(source / name, step)
                (self.train_dir / name).write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            if source != self.train_dir and (source / "tb").is_dir():
                shutil.copytree(source / "tb", self.train_dir / "tb", dirs_exist_ok=True)
            log_f = (self.train_dir / "log.jsonl").open("a", encoding="utf-8")
            routing_f = (self.train_dir / "routing.jsonl").open("a", encoding="utf-8")
            if "tensorboard" in tc.trackers:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(self.train_dir / "tb"), purge_step=step + 1 if step else None)
            if self.acc.log_with:
                self.acc.init_trackers("qrdistill", config=tc.model_dump(mode="json"))
        self.acc.wait_for_everyone()

        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc=f"train {tc.method}", disable=not self.main,
                   dynamic_ncols=True)
        local_rows: list[tuple] = []
        self._first_check_done = step > 0
        t_start = time.perf_counter()
        try:
            while step < self.total_steps:
                if micro >= self.schedule.micro_per_epoch:
                    self.epoch_times.append(self.epoch_elapsed)
                    self.epoch_elapsed, epoch, micro = 0.0, epoch + 1, 0
                result, lrs, dt = self.train_step(epoch, micro, step)
                micro = result.next_micro
                local_rows += result.local_rows
                step += 1
                self.epoch_elapsed += dt
                row = self._log_row(step, epoch, lrs, dt, result)
                if self.main:
                    _append_jsonl(routing_f, result.routing_rows)
                    if step % tc.log_every == 0 or step == self.total_steps:
                        _append_jsonl(log_f, [row])
                        if tb is not None:
                            for k, v in row.items():
                                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                                    tb.add_scalar(k, v, step)
                    if self.acc.log_with:
                        self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
                    bar.set_postfix_str(self._postfix(row), refresh=False)
                    bar.update(1)
                if step % tc.checkpoint_every == 0 or step == self.total_steps:
                    self._checkpoint(step, epoch, micro)
            self.last_epoch_complete = micro >= self.schedule.micro_per_epoch
            if self.last_epoch_complete or self.epoch_elapsed > 0:
                self.epoch_times.append(self.epoch_elapsed)
                self.epoch_elapsed = 0.0
        finally:
            bar.close()
            for f in (log_f, routing_f):
                if f is not None:
                    f.close()
            if tb is not None:
                tb.close()
        total_time = time.perf_counter() - t_start
        check = self._rank_check(local_rows)
        summary = self._finish(step, epoch, total_time, check) if self.main else {}
        self.acc.wait_for_everyone()
        return summary

    def apply_update(self, stats: list[StepStats]) -> list[float]:
        """Average gradients over ranks, clip, step the optimizer and schedule; -> learning rates used."""
        tc = self.tc
        got = self._sync_grads()
        for name, g in zip(self.param_names, got.tolist(), strict=True):
            if g:
                self.never_grad.discard(name)
        if not self._first_check_done:
            self._first_check_done = True
            self._first_step_gradient_check(got.tolist(), stats)
        if tc.max_grad_norm is not None:
            import torch

            # Unscale once (fp16: GradScaler refuses a second unscale of one optimizer), then clip the
            # router on its own: its objective has its own scale and must never shrink the students' step.
            self.acc.unscale_gradients()
            router = [p for g in self.optimizer.param_groups if g["group"] == "router" for p in g["params"]]
            rest = [p for g in self.optimizer.param_groups if g["group"] != "router" for p in g["params"]]
            for params in (router, rest):
                if params:
                    torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lrs

    def train_step(self, epoch: int, micro: int, step: int) -> tuple[StepResult, list[float], float]:
        """One optimizer step from data position (epoch, micro) after `step` steps -> (result, lrs, seconds)."""
        t0 = time.perf_counter()
        result = self.accumulate(epoch, micro, step)
        lrs = self.apply_update(result.stats)
        return result, lrs, time.perf_counter() - t0

    def _first_step_gradient_check(self, got: list[bool], stats: list[StepStats]) -> None:
        """Say which trainable tensors the first step left without gradient, and whether routing explains it.

        A student routed no path, or no path routed to two students (the mutual head),
        is a normal first step; any other gap is a wiring fault and gets a warning.
        """
        missing = [n for n, g in zip(self.param_names, got, strict=True) if not g]
        if not missing:
            log.info("first step: all %d trainable tensors received a gradient", len(self.param_names))
            return
        idle = {name for k, name in enumerate(self.names) if not sum(st.paths_per_student[k] for st in stats)}
        no_pair = not sum(st.co_routed for st in stats)
        explained, unexplained = [], []
        for n in missing:
            ok = any(n.startswith(f"{name}/lora.") for name in idle) or (n.startswith("mutual/") and no_pair)
            (explained if ok else unexplained).append(n)
        if explained:
            why = [f"student {name} was routed no path" for name in self.names if name in idle]
            if no_pair and any(n.startswith("mutual/") for n in explained):
                why.append("no path was routed to two students (mutual head)")
            log.info("first step: %d trainable tensors got no gradient because %s; the end-of-run check "
                     "reports any that never do", len(explained), "; ".join(why))
        if unexplained:
            log.warning("first step: %d of %d trainable tensors got no gradient although routing sent them "
                        "data: %s%s", len(unexplained), len(self.param_names), ", ".join(unexplained[:5]),
                        ", ..." if len(unexplained) > 5 else "")

    def _log_row(self, step, epoch, lrs, dt, result: StepResult) -> dict[str, Any]:
        """Per-step scalars; a student's distill loss is its mean over the paths it trained on (all ranks)."""
        import torch

        from qrdistill.train.losses import total_objective

        stats = result.stats
        S, n = self.S, len(stats)
        vec = torch.tensor(
            [sum(st.distill[k] * st.paths_per_student[k] for st in stats) for k in range(S)]
            + [sum(st.paths_per_student[k] for st in stats) for k in range(S)]
            + [sum(st.mutual * st.co_routed for st in stats), sum(st.co_routed for st in stats),
               sum(st.mutual_mse * st.co_routed for st in stats)],
            dtype=torch.float64, device=self.device)
        if self.world > 1:
            vec = self.acc.reduce(vec, reduction="sum")
        vec = vec.tolist()
        counts = vec[S: 2 * S]
        distill = [vec[k] / counts[k] if counts[k] else None for k in range(S)]
        co = vec[2 * S + 1]
        mutual = vec[2 * S] / co if co else 0.0
        mutual_mse = vec[2 * S + 2] / co if co else 0.0
        rates = [sum(st.routing_rate[k] for st in stats) / n for k in range(S)]
        self.rates_sum = [a + b for a, b in zip(self.rates_sum, rates, strict=True)]
        self.rates_n += 1
        tc = self.tc
        row: dict[str, Any] = {"step": step, "epoch": epoch}
        row["loss"] = float(total_objective(
            [torch.tensor(d or 0.0) for d in distill], torch.tensor(result.entropy), torch.tensor(mutual),
            tc.lambda_entropy, tc.lambda_mutual, load=torch.tensor(result.load), lambda_load=tc.lambda_load))
        for name, d, c in zip(self.names, distill, counts, strict=True):
            row[f"distill/{name}"] = d
            row[f"paths/{name}"] = int(c)
        row["entropy"] = result.entropy
        row["load"] = result.load
        row["router_fit"] = result.fit
        row["router_compared_paths"] = result.compared
        row["mutual"] = mutual
        row["mutual_mse"] = mutual_mse
        row["co_routed_paths"] = int(co)
        row["mutual_warmup"] = result.mutual_warmup
        for name, r in zip(self.names, rates, strict=True):
            row[f"routing_rate/{name}"] = r
        row["tau"] = result.tau
        for g, lr in zip(self.group_names, lrs, strict=True):
            row[f"lr/{g}"] = lr
        row["step_time"] = dt
        return row

    def _postfix(self, row: dict[str, Any]) -> str:
        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        parts = [f"{n}={fmt(row[f'distill/{n}'])}" for n in self.names]
        if self.mode != "off":
            parts.append(f"H={row['entropy']:.3f}")
            parts.append("route=" + "/".join(f"{row[f'routing_rate/{n}']:.2f}" for n in self.names))
        if self.mutual is not None:
            parts.append(f"mut={row['mutual']:.4f}")
        return " ".join(parts)

    def _rank_check(self, local_rows: list[tuple]) -> dict[str, Any] | None:
        """Did every rank take the routing decision rank 0 took for the same path? (DDP only)."""
        if self.world == 1:
            return None
        from accelerate.utils import gather_object

        gathered = gather_object([(self.rank, r) for r in local_rows])
        if not self.main:
            return None
        # Rank 0 recorded the whole global batch too: compare every other rank's own decisions with it.
        routing = {}
        for line in (self.train_dir / "routing.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            routing[(row["epoch"], row["path_key"])] = tuple(row["alpha"])
        checked = mismatches = 0
        for _r, (e, k, a) in gathered:
            ref = routing.get((e, k))
            if ref is None:
                continue
            checked += 1
            mismatches += int(tuple(a) != tuple(ref))
        if mismatches:
            log.warning("routing differs across ranks for %d of %d paths", mismatches, checked)
        return {"ranks": self.world, "checked": checked, "mismatches": mismatches}

    def _finish(self, step: int, epoch: int, total_time: float, rank_check) -> dict[str, Any]:
        import torch

        from qrdistill.io import atomic_write_json, git_sha
        from qrdistill.train.artifacts import adapter_digest

        out = self.train_dir
        for s in self.students:
            s.save_adapter(out / "adapters" / s.name)
        if self.router is not None:
            torch.save({"state_dict": self.router.state_dict(), "in_dim": self.router.in_dim,
                        "num_students": self.S, "hidden": self.tc.router.hidden,
                        "encoder": self.tc.router.encoder, "students": self.names}, out / "router.pt")
        if self.mutual is not None:
            torch.save({"state_dict": self.mutual.state_dict(), "hidden_sizes": self.mutual.hidden_sizes,
                        "shared_dim": self.mutual.shared_dim, "students": self.names}, out / "mutual.pt")
        self._write_final_routing(out / ROUTING_FINAL_FILE)
        never = sorted(self.never_grad)
        if never:
            log.warning("%d trainable tensors never received a gradient: %s", len(never), ", ".join(never[:10]))
        rates = [x / max(self.rates_n, 1) for x in self.rates_sum]
        summary = {
            "method": self.tc.method,
            "students": [{"name": s.name, "model": s.model, "trainable": st.trainable}
                         for s, st in zip(self.tc.students, self.students, strict=True)],
            "router": self.mode != "off", "router_mode": self.mode, "router_signal": self.tc.router.signal,
            "lambda_entropy": self.tc.lambda_entropy, "lambda_load": self.tc.lambda_load,
            "lambda_mutual": self.tc.lambda_mutual, "frozen_peer": self.tc.frozen_peer,
            "epochs": len(self.epoch_times), "steps": step, "steps_per_epoch": self._steps_per_epoch(),
            "step_budget": self.tc.step_budget, "reference_paths": self.reference_paths,
            "time_per_epoch": self.epoch_times, "total_time": total_time,
            # Table 3 compares whole epochs: the last entry of time_per_epoch may be a partial one.
            "time_per_full_epoch": self.epoch_times if getattr(self, "last_epoch_complete", True)
            else self.epoch_times[:-1],
            "paths": len(self.items), "questions": len({it.qid for it in self.items}),
            "sequence_lengths": {name: fit.to_dict() for name, fit in self.length_fits.items()},
            "items_before_length_fit": self.items_before_fit,
            "items_dropped": self.items_before_fit - len(self.items),
            "routing_rate": dict(zip(self.names, rates, strict=True)),
            "params_without_grad": never, "trainable_tensors": len(self.param_names),
            "trainable_parameters": sum(p.numel() for p in self.params),
            "world_size": self.world, "routing_rank_check": rank_check,
            "fingerprint": self.fingerprint, "config": self.tc.model_dump(mode="json"),
            # evaluate checks these: adapters that are not the ones this training wrote are refused.
            "adapters": {s.name: adapter_digest(out / "adapters" / s.name) for s in self.students},
            "seed": self.cfg.seed, "git_sha": git_sha(),
        }
        summary.update(self.extra_summary)
        atomic_write_json(out / "summary.json", summary)
        if math.isfinite(total_time):
            log.info("train: %d steps in %.1fs; adapters in %s", step, total_time, out / "adapters")
        return summary

    def _write_final_routing(self, path: Path) -> None:
        """P(route) of every training path under the final router, noise-free (what Fig. 4/5 plot)."""
        import torch

        if self.mode == "off":
            path.unlink(missing_ok=True)
            return
        if self.mode == "random":
            probs = torch.full((len(self.items), self.S), 0.5)
        else:
            from qrdistill.train.router import assignment_probabilities

            with torch.no_grad():
                probs = assignment_probabilities(self.router(self.embeddings)).cpu()
        rows = [
            {"path_key": it.key, "qid": it.qid, "task": it.task, "style": it.style, "difficulty": it.difficulty,
             "probs": [round(float(x), 5) for x in p], "students": self.names}
            for it, p in zip(self.items, probs, strict=True)
        ]
        from qrdistill.io import atomic_write_text

        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def close(self) -> None:
        acc = getattr(self, "acc", None)
        if acc is not None:
            acc.end_training()
