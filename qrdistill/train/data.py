"""Training data: kept paths from D/filtered.jsonl turned into (prompt, target) items per method.

The student prompt is `qrdistill.prompting.student_prompt`, the same one
evaluation uses, so what a student learns is what evaluation asks of it.

Methods (one loop, different items):
- qrdistill / sft: every kept path of every (kept) question is an item; the
  router (qrdistill) or nobody (sft: all paths, no router, no collaboration)
  decides who learns it.
- answer_aug (answer augmentation as in the literature): the k sampled paths
  of ONE style per question (`train.answer_aug_style`, k =
  `generate.samples_per_style`), every one to every student.
- skd: one chain-of-thought path per question (style `cot` if kept, else the
  question's first kept path).
- step_by_step (Distilling Step-by-Step): the skd path, as two supervised
  outputs: "[rationale] <prompt>" -> the path, and "[answer] <prompt>" -> the
  gold final-answer line. Evaluate such students with the rationale prompt
  (RATIONALE_TAG + the student prompt; the evaluate stage does): it is the one
  that produces a reasoning path ending in the answer.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError, QRDistillError
from qrdistill.io import iter_jsonl_lines

RATIONALE_TAG = "[rationale] "
ANSWER_TAG = "[answer] "
_REQUIRED = ("qid", "task", "style", "question", "response")


@dataclass(frozen=True)
class TrainItem:
    """One supervised (prompt, target) pair; `key` identifies it for routing noise and logs."""

    key: str
    qid: str
    task: str
    style: str
    difficulty: int | None
    prompt: str
    response: str


def path_key(row: dict[str, Any], kind: str = "") -> str:
    """Content hash of a path: stable across runs, ranks and batch composition."""
    parts = [str(row["qid"]), str(row["style"]), str(row.get("sample", 0)), row["response"], kind]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:20]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_kept(path: str | Path, need_gold: bool = False) -> list[dict[str, Any]]:
    """Rows of filtered.jsonl with `kept: true`, validated; errors name file:line."""
    from qrdistill.tasks import get_task

    path = Path(path)
    rows = []
    tasks: dict[str, Any] = {}
    n_lines = 0
    for lineno, row in iter_jsonl_lines(path):
        n_lines += 1
        where = f"{path}:{lineno}"
        if "kept" not in row:
            raise DataError(f"{where}: missing field kept (is this a filtered.jsonl written by `qrdistill filter`?)")
        if row["kept"] is not True:
            continue
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        for k in _REQUIRED:
            if not isinstance(row[k], str) or (k != "style" and not row[k].strip()):
                raise DataError(f"{where}: field {k} must be a non-empty string")
        meta = row.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError(f"{where}: field meta must be an object")
        diff = meta.get("difficulty")
        if diff is not None and not isinstance(diff, (int, float, str)):
            raise DataError(f"{where}: meta.difficulty must be a number or a label")
        if need_gold and not str(row.get("gold_text") or "").strip():
            raise DataError(f"{where}: step_by_step needs gold_text (the gold final answer) in every kept row")
        if row["task"] not in tasks:
            try:
                tasks[row["task"]] = get_task(row["task"])
            except QRDistillError as e:
                raise DataError(f"{where}: {e}") from None
        rows.append(row)
    if n_lines == 0:
        raise DataError(f"{path}: file is empty (did `qrdistill filter` finish?)")
    if not rows:
        raise DataError(f"{path}: no row has kept: true, so there is nothing to train on")
    return rows


def subsample_questions(rows: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """Keep a seeded `fraction` of the QUESTIONS (all kept paths of each), at least one."""
    if fraction >= 1.0:
        return rows
    qids = sorted({r["qid"] for r in rows})
    k = max(1, round(len(qids) * fraction))
    keep = set(random.Random(f"data_fraction:{seed}").sample(qids, k))
    return [r for r in rows if r["qid"] in keep]


def _one_path_per_question(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SKD's single path: the question's `cot` path if kept, else its first kept path."""
    chosen: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = chosen.get(r["qid"])
        if cur is None or (cur["style"] != "cot" and r["style"] == "cot"):
            chosen[r["qid"]] = r
    order = {q: i for i, q in enumerate(dict.fromkeys(r["qid"] for r in rows))}
    return sorted(chosen.values(), key=lambda r: order[r["qid"]])


def build_items(rows: list[dict[str, Any]], method: str, aug_style: str = "cot") -> list[TrainItem]:
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task

    def item(r: dict[str, Any], prompt: str, response: str, kind: str = "") -> TrainItem:
        diff = (r.get("meta") or {}).get("difficulty")
        return TrainItem(
            key=path_key(r, kind), qid=r["qid"], task=r["task"], style=r["style"],
            difficulty=diff, prompt=prompt, response=response,
        )

    if method in ("skd", "step_by_step"):
        rows = _one_path_per_question(rows)
    elif method == "answer_aug":
        styles = sorted({r["style"] for r in rows})
        rows = [r for r in rows if r["style"] == aug_style]
        if not rows:
            raise DataError(
                f"train.answer_aug_style: no kept path has style {aug_style!r} (kept styles: {', '.join(styles)}); "
                f"generate it with generate.styles: [{aug_style}] and generate.samples_per_style: k"
            )
    items = []
    for r in rows:
        prompt = student_prompt(get_task(r["task"]), r["question"])
        if method == "step_by_step":
            items.append(item(r, RATIONALE_TAG + prompt, r["response"], "rationale"))
            answer_line = f"The answer is {str(r['gold_text']).strip()}."
            items.append(item(r, ANSWER_TAG + prompt, answer_line, "answer"))
        else:
            items.append(item(r, prompt, r["response"]))
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        it = items[keys.index(dup)]
        raise DataError(f"filtered.jsonl: path {it.qid}/{it.style} appears twice with the same response")
    return items


#: `max_length: auto` covers this share of the pairs; the rest are dropped (and counted).
LENGTH_QUANTILE = 0.99
#: Dropping more than this share of the training pairs is an error, not a silent loss of data.
MAX_DROP_SHARE = 0.01
#: Sequence lengths are rounded up to a multiple of this (friendlier to kernels, stable across small data edits).
LENGTH_MULTIPLE = 8


def quantile_length(lengths: list[int], q: float = LENGTH_QUANTILE) -> int:
    """Nearest-rank quantile: the smallest L with at least a share q of `lengths` <= L."""
    if not lengths:
        raise ValueError("no lengths")
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


#: fewest kept pairs of a task for its own response p99 (see fit_to_length)
MIN_TASK_PAIRS = 20


@dataclass
class LengthFit:
    """How one student's tokenizer sizes the training pairs (recorded in train/summary.json)."""

    max_length: int
    requested: int | str
    dropped: int  # pairs longer than max_length for this student
    longest: int  # longest pair, prompt + response tokens
    prompt_shortened: int = 0  # always 0: prompts are never cut (encode refuses)
    response_tokens_p99: int = 0  # of the pairs kept: what evaluate's max_new_tokens: auto scales
    response_tokens_max: int = 0
    #: the same p99 per task: evaluate budgets each task by its own responses (a short-answer task would
    #: otherwise inherit the longest task's budget, and a looping answer would run to it)
    response_tokens_p99_by_task: dict[str, int] = field(default_factory=dict)
    dropped_keys: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "dropped_keys"}


def fit_to_length(
    lengths: list[tuple[int, int]], keys: list[str], requested: int | str, cap: int, quantile: float = LENGTH_QUANTILE,
    tasks: list[str] | None = None,
) -> LengthFit:
    """Resolve one student's `max_length` from its (prompt, response) token counts and find what does not fit.

    `auto`: the `quantile` (p99) of prompt + response, rounded up to a multiple of 8, at most `cap`.
    A number is used as given. Pairs above it are dropped by the caller, never cut. `tasks` (one per
    pair) adds the kept responses' p99 per task, for tasks with at least MIN_TASK_PAIRS kept pairs
    (below that the p99 is the maximum of a handful; evaluate then uses the p99 over all tasks).
    """
    totals = [p + r for p, r in lengths]
    if requested == "auto":
        q = quantile_length(totals, quantile)
        max_length = min(cap, -(-q // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)
    else:
        max_length = int(requested)
    dropped = [k for k, t in zip(keys, totals, strict=True) if t > max_length]
    kept = [r for (p, r) in lengths if p + r <= max_length]
    by_task: dict[str, list[int]] = {}
    for task, (p, r) in zip(tasks, lengths, strict=True) if tasks is not None else ():
        if p + r <= max_length:
            by_task.setdefault(task, []).append(r)
    return LengthFit(
        max_length=max_length, requested=requested, dropped=len(dropped), longest=max(totals),
        response_tokens_p99=quantile_length(kept) if kept else 0, response_tokens_max=max(kept, default=0),
        response_tokens_p99_by_task={t: quantile_length(rs) for t, rs in sorted(by_task.items())
                                     if len(rs) >= MIN_TASK_PAIRS},
        dropped_keys=dropped,
    )


#: quantiles `auto` tries in turn until the pairs dropped by any student are at most 1% together
AUTO_QUANTILES = (LENGTH_QUANTILE, 0.995, 0.999, 1.0)


def fit_students(
    lengths: dict[str, list[tuple[int, int]]], keys: list[str], requested: int | str, caps: dict[str, int],
    tasks: list[str] | None = None,
) -> dict[str, LengthFit]:
    """`fit_to_length` for every student. With `auto`, each student's p99 can drop a different 1%, so
    the union could exceed it: the quantile is raised until the union of drops is at most 1%."""
    quantiles = AUTO_QUANTILES if requested == "auto" else (LENGTH_QUANTILE,)
    for q in quantiles:
        fits = {name: fit_to_length(ls, keys, requested, caps[name], q, tasks) for name, ls in lengths.items()}
        union = set().union(*(f.dropped_keys for f in fits.values())) if fits else set()
        if len(union) <= MAX_DROP_SHARE * len(keys):
            break
    return fits


def check_drops(n_items: int, fits: dict[str, LengthFit], field_name: str = "train.max_length") -> set[str]:
    """Keys of the pairs to drop (too long for any student); more than 1% of the data is a DataError."""
    drop = set().union(*(f.dropped_keys for f in fits.values())) if fits else set()
    if n_items and len(drop) / n_items > MAX_DROP_SHARE:
        worst = max(fits.items(), key=lambda kv: kv[1].dropped)
        name, fit = worst
        hint = (f"raise {field_name}" if fit.requested != "auto"
                else "raise train.max_length_cap (auto is capped by it and by the model's positions)")
        raise DataError(
            f"{field_name}: {len(drop)} of {n_items} training pairs ({100 * len(drop) / n_items:.1f}%) do not fit "
            f"in {fit.max_length} tokens for student {name} (longest pair: {fit.longest} tokens); pairs are never "
            f"cut, so {hint}"
        )
    return drop


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of item indices for one epoch (the same on every rank)."""
    order = list(range(n))
    random.Random(f"epoch:{seed}:{epoch}").shuffle(order)
    return order


class Schedule:
    """Where each optimizer step's micro-batches come from, for every rank.

    Epoch e visits `epoch_order(n, seed, e)` in global micro-batches of
    `batch_size * world` items; rank r takes its `batch_size` slice of each.
    An optimizer step is `grad_accum` consecutive micro-batches of one epoch (the
    last step of an epoch may have fewer). Position = (epoch, micro index), so a
    resumed run continues with exactly the items an uninterrupted one would see.
    """

    def __init__(self, n: int, batch_size: int, world: int, grad_accum: int, seed: int):
        self.n, self.batch_size, self.world, self.grad_accum, self.seed = n, batch_size, world, grad_accum, seed
        self.global_batch = batch_size * world
        self.micro_per_epoch = -(-n // self.global_batch)
        self.steps_per_epoch = -(-self.micro_per_epoch // grad_accum)
        self._order: tuple[int, list[int]] = (-1, [])

    def step_micro(self, epoch: int, micro: int) -> list[list[int]]:
        """Global item indices of one micro-batch, one list per rank (possibly empty for the last)."""
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.n, self.seed, epoch))
        order = self._order[1]
        chunk = order[micro * self.global_batch:(micro + 1) * self.global_batch]
        return [chunk[r * self.batch_size:(r + 1) * self.batch_size] for r in range(self.world)]

    def step_micros(self, micro: int) -> range:
        """Micro-batch indices of the optimizer step starting at `micro`."""
        return range(micro, min(micro + self.grad_accum, self.micro_per_epoch))
