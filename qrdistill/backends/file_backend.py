"""`file` teacher: reasoning paths imported from a file or dataset instead of asked of a model.

`generate.teacher: {kind: file, path: ..., format: ...}` reads every row once, before anything is
answered or written, and answers the generate stage's planned requests (question x style x sample)
from it. So imported paths take the stage's usual way: stored in `store.sqlite`, written to
`paths.jsonl` with the same fields as generated ones (the task's own answer check included), then
filtered like any other. Each path's `meta.imported` says where it came from: format, file, row and
the model that wrote it.

Sources: a `.jsonl`, `.json` or `.parquet` file; a run dir (its `paths.jsonl`); a folder written by
`datasets`' `save_to_disk` (`split` picks one of a DatasetDict), or one holding a file per split; or
a hub dataset id. `path` may list several, read in order as one pool. Formats (what a row holds):

- `paths`: qrdistill's own paths.jsonl rows (`qid`, `style`, `sample`, `response`; `question`,
  `teacher` and `meta.planted` are kept when present);
- `generic`: any column names (`columns`: id and/or question, response, optional style, sample,
  task, model);
- `distilabel`: `instruction`, `generation`, `model_name`;
- `openr1`: `problem` and a `generations` list, each element one sample;
- `messages`: one user turn (the question) and one assistant turn (the path) under `messages`
  (role/content) or `conversations` (ShareGPT from/value); system turns are ignored;
- `strategyqa_human`: human StrategyQA reasoning: a StrategyQA row (`question`, `answer`, `facts`,
  `decomposition`) gives a `fact` and a `cot` path, a BIG-bench strategyqa row (`input`,
  `target_scores`, `target`) a `vanilla` one;
- `gsm8k_human`: a GSM8K row's human solution (`question`, `answer`), its calculator annotations made
  readable, as one path of `style`.

The human formats' texts (`qrdistill.backends.human_pools`) end in the task's answer line and match
their question by its text; meta.imported names the field a path was made from.

A row finds its question by id, or by its text after `normalize_question` (the record's question,
its prompt with options, or the very prompt qrdistill would send for a style all match); with
`match: auto` a row with both is checked to agree. Rows without a style label get `style`; rows without a sample index are
numbered 0, 1, ... per question and style in file order (and the same text twice among them is a
duplicate row).

Bad rows (no id or text, a question not among those loaded, an unknown style, two rows for one
path or one text twice, an empty response) raise one DataError naming file:line (`row N` for
Parquet and datasets) before the store or paths.jsonl is touched, so nothing stored is lost.
`unmatched: skip` skips rows that answer nothing this run asks for; `missing: error` makes a
planned path without a row an error (by default it is skipped and counted as `missing_paths`).

Cost: a completion reports 0 prompt and 0 completion tokens, so it costs $0 at any price and a
budget is never spent on it. Keys: each request's key includes a digest of the row that answers it,
so editing a row re-imports that path alone, and the previous text stays stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.backends.base import BACKENDS, Backend, Completion, Request, request_key
from qrdistill.errors import ConfigError, DataError
from qrdistill.tasks.base import Record
from qrdistill.tasks.loading import Row

log = logging.getLogger(__name__)

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "model", "bot")
SYSTEM_ROLES = ("system",)
#: How many examples a skipped-rows or missing-paths message lists.
EXAMPLES = 3

#: (task, record id, style, sample): one planned path.
Slot = tuple[str, str, str, int]


def normalize_question(text: str) -> str:
    """Question text as rows and tasks are compared: NFKC, case-folded, whitespace runs as one space.

    Punctuation is kept: in arithmetic questions a changed sign is a different question.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class Imported:
    """One path as a row states it, before it is matched to a planned request."""

    where: str
    response: Any
    qid: str | None = None
    question: str | None = None
    task: str | None = None
    style: str | None = None  # None: the config's style
    sample: int | None = None  # None: numbered in file order
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # meta carried into paths.jsonl (planted)
    origin: dict[str, Any] = field(default_factory=dict)  # more provenance for meta.imported (source field)
    file: str | None = None  # the source in `path` it was read from (set by FileBackend.prepare)

    def error(self, msg: str) -> DataError:
        return DataError(f"{self.where}: {msg}")


# ---------------------------------------------------------------- reading a source


def _dataset_rows(ds: Any, label: str) -> list[Row]:
    # Index i as `datasets` numbers rows (ds[i]), so the message points at what the user can look up.
    return [Row(dict(r), f"{label} row {i}") for i, r in enumerate(ds)]


def _folder_rows(path: Path, split: str) -> list[Row]:
    from qrdistill.tasks.loading import read_rows, split_files

    if (path / "paths.jsonl").is_file():
        return read_rows(path / "paths.jsonl")
    if any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001  (datasets raises many types for a bad folder)
            raise DataError(f"{path}: cannot read the dataset folder ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: the dataset has no split {split!r} (splits: {', '.join(ds)}); set "
                                f"generate.teacher.split")
            ds = ds[split]
        return _dataset_rows(ds, f"{path}[{split}]")
    files = split_files(path).get(split)
    if not files:
        raise DataError(f"{path}: neither a run dir (paths.jsonl), a `datasets` save_to_disk folder, nor a "
                        f"folder with a {split} file (.jsonl/.json/.parquet)")
    return [row for f in files for row in read_rows(f)]


def read_source(path: str, split: str) -> list[Row]:
    """Every row of `path` with its location (file:line, file:row N, folder[split] row i)."""
    from qrdistill.tasks.loading import LOCAL_SUFFIXES, read_rows

    p = Path(path).expanduser()
    if p.is_dir():
        return _folder_rows(p, split)
    if p.exists():
        return read_rows(p)
    looks_local = p.is_absolute() or p.suffix.lower() in LOCAL_SUFFIXES or path.startswith(".") or path.count("/") != 1
    if looks_local:
        raise DataError(f"{p}: file not found (config field generate.teacher.path)")
    import datasets

    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001  (offline, unknown id, auth: all mean "cannot get it")
        raise DataError(f"{path}: not a local file or folder, and cannot load it from the Hugging Face hub as a "
                        f"dataset id ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, "
                        f"point generate.teacher.path at a local file") from None
    return _dataset_rows(ds, f"{path}[{split}]")


# ---------------------------------------------------------------- formats: row -> Imported


def _text_or_none(row: Row, name: str | None) -> Any:
    return row.get(name, default=None) if name else None


def _sample_index(row: Row, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise row.error(f"sample index must be a whole number >= 0 (got {value!r})")
    return value


def _paths_row(row: Row, cfg: Any) -> list[Imported]:
    meta = row.get("meta", default={})
    meta = meta if isinstance(meta, dict) else {}
    extra = {"planted": meta["planted"]} if "planted" in meta else {}
    # A pool imported before names its original model in meta.imported; keep that, not "file:...".
    model = (meta.get("imported") or {}).get("model") if isinstance(meta.get("imported"), dict) else None
    qid = row.get("qid", default=None)
    if qid is None or not str(qid).strip():
        raise row.error("missing question id (field 'qid')")
    return [Imported(
        where=row.where,
        response=row.get("response", default=None),
        qid=str(qid),
        question=row.get("question", default=None),
        task=row.get("task", default=None),
        style=row.get("style"),
        sample=_sample_index(row, row.get("sample", default=0)),
        model=model or row.get("teacher", default=None),
        extra=extra,
    )]


def _generic_row(row: Row, cfg: Any) -> list[Imported]:
    c = cfg.columns
    qid = _text_or_none(row, c.id)
    question = _text_or_none(row, c.question)
    if qid is None and question is None:
        names = " or ".join(repr(n) for n in (c.id, c.question) if n)
        raise row.error(f"missing field {names} (generate.teacher.columns.id / .question): no id or question "
                        f"text to match the row to a question")
    return [Imported(
        where=row.where,
        response=row.get(c.response, default=None),
        qid=None if qid is None else str(qid),
        question=question,
        task=_text_or_none(row, c.task),
        style=row.get(c.style) if c.style else None,
        sample=_sample_index(row, _text_or_none(row, c.sample)),
        model=_text_or_none(row, c.model),
    )]


def _distilabel_row(row: Row, cfg: Any) -> list[Imported]:
    return [Imported(where=row.where, response=row.get("generation", default=None),
                     question=row.get("instruction"), model=row.get("model_name", default=None))]


def _openr1_row(row: Row, cfg: Any) -> list[Imported]:
    gens = row.get("generations")
    if not isinstance(gens, list) or not gens:
        raise row.error(f"generations must be a non-empty list of texts (got {type(gens).__name__})")
    problem = row.get("problem")
    model = row.get("model_name", "model", default=None)
    return [Imported(where=f"{row.where} generations[{i}]" if len(gens) > 1 else row.where, response=g,
                     question=problem, sample=i, model=model)
            for i, g in enumerate(gens)]


def _messages_row(row: Row, cfg: Any) -> list[Imported]:
    turns = row.get("messages", "conversations")
    if not isinstance(turns, list):
        raise row.error(f"messages must be a list of turns (got {type(turns).__name__})")
    users, assistants = [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise row.error(f"turn {i} is {type(turn).__name__}, not an object with role and content")
        role = str(turn.get("role", turn.get("from", ""))).lower()
        text = turn.get("content", turn.get("value"))
        if role in USER_ROLES:
            users.append(text)
        elif role in ASSISTANT_ROLES:
            if not users:
                raise row.error(f"turn {i}: an assistant turn before any user turn")
            assistants.append(text)
        elif role not in SYSTEM_ROLES:
            raise row.error(f"turn {i}: unknown role {role!r} (user/human, assistant/gpt or system)")
    if len(users) != 1 or len(assistants) != 1:
        raise row.error(f"expected one user turn (the question) and one assistant turn (the path), got "
                        f"{len(users)} and {len(assistants)}")
    if not isinstance(users[0], str):
        raise row.error("the user turn has no text")
    return [Imported(where=row.where, response=assistants[0], question=users[0],
                     model=row.get("model", "model_name", default=None))]


#: What the human formats record as the writer of their paths.
HUMAN = "human"


def _human(row: Row, paths: list[Any]) -> list[Imported]:
    out = []
    for p in paths:
        origin = {"field": p.field, **({"id": p.source_id} if p.source_id is not None else {})}
        out.append(Imported(where=row.where, response=p.response, question=p.question, style=p.style,
                            model=HUMAN, origin=origin))
    return out


def _strategyqa_human_row(row: Row, cfg: Any) -> list[Imported]:
    from qrdistill.backends.human_pools import strategyqa_paths

    return _human(row, strategyqa_paths(row))


def _gsm8k_human_row(row: Row, cfg: Any) -> list[Imported]:
    from qrdistill.backends.human_pools import gsm8k_paths

    return _human(row, gsm8k_paths(row))


FORMAT_READERS: dict[str, Callable[[Row, Any], list[Imported]]] = {
    "paths": _paths_row,
    "generic": _generic_row,
    "distilabel": _distilabel_row,
    "openr1": _openr1_row,
    "messages": _messages_row,
    "strategyqa_human": _strategyqa_human_row,
    "gsm8k_human": _gsm8k_human_row,
}


def parse_rows(rows: Sequence[Row], cfg: Any) -> list[Imported]:
    """The paths the rows of `cfg.format` state, each with its location; a bad row raises naming it."""
    reader = FORMAT_READERS[cfg.format]
    out: list[Imported] = []
    for row in rows:
        for item in reader(row, cfg):
            if item.response is None:
                raise item.error("empty response (the row has no response text)")
            if not isinstance(item.response, str):
                raise item.error(f"response is {type(item.response).__name__}, not the text of a reasoning path")
            if not item.response.strip():
                raise item.error("empty response")
            if item.question is not None and not isinstance(item.question, str):
                raise item.error(f"question is {type(item.question).__name__}, not text")
            if item.style is not None and not isinstance(item.style, str):
                raise item.error(f"style label is {type(item.style).__name__}, not text")
            if item.model is not None:
                item.model = str(item.model)
            out.append(item)
    return out


# ---------------------------------------------------------------- matching to the plan


class PlanIndex:
    """What the generate stage plans to ask: its questions (by id and by normalised text), styles, samples."""

    def __init__(self, requests: Sequence[Request]) -> None:
        from qrdistill.tasks import get_task

        self.requests: dict[Slot, Request] = {}
        self.records: dict[str, dict[str, Record]] = defaultdict(dict)
        self.by_text: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.styles: list[str] = []
        self.samples = 0
        prompts: dict[str, Any] = {}
        for req in requests:
            slot = slot_of(req)
            task, rid, style, k = slot
            self.requests[slot] = req
            record = _record(req)
            if rid not in self.records[task]:
                self.records[task][rid] = record
                if task not in prompts:
                    prompts[task] = get_task(task).prompt
                for text in (record.question, prompts[task](record)):
                    self.by_text[normalize_question(text)].add((task, rid))
            user = next((m.get("content") for m in reversed(req.messages) if m.get("role") == "user"), None)
            if isinstance(user, str):
                self.by_text[normalize_question(user)].add((task, rid))
            if style not in self.styles:
                self.styles.append(style)
            self.samples = max(self.samples, k + 1)

    def describe(self, task: str | None = None) -> str:
        tasks = [task] if task else list(self.records)
        return " + ".join(f"{len(self.records[t])} questions of task {t}" for t in tasks)


def _record(req: Request) -> Record:
    record = (req.context or {}).get("record")
    if isinstance(record, dict):
        record = Record.from_dict(record)
    if not isinstance(record, Record):
        raise ConfigError("generate.teacher: the file backend answers the generate stage's requests only (they "
                          "carry the question); use a model backend for filter.judge.backend")
    return record


def slot_of(req: Request) -> Slot:
    ctx = req.context or {}
    return (str(ctx.get("task")), _record(req).id, str(ctx.get("style")), int(req.sample))


class _Skip(Exception):
    """A row that answers nothing this run asks for (`unmatched: skip` skips it, else it is the error)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _style_table(index: PlanIndex) -> dict[str, str]:
    """Accepted label (case-folded) -> style name: style names, planned custom styles, and their titles."""
    from qrdistill.styles import STYLE_TITLES, STYLES

    table = {}
    for name in [*STYLES, *index.styles]:
        table[name.casefold()] = name
    for name, title in STYLE_TITLES.items():
        table[title.casefold()] = name
    return table


def _find_by_id(item: Imported, index: PlanIndex, task: str | None) -> tuple[str, str]:
    from qrdistill.tasks import TASKS

    qid = str(item.qid).strip()
    head, sep, tail = qid.partition("/")
    if sep and head in index.records and task not in (None, head):
        raise item.error(f"question id {qid!r} names task {head!r}, but the row's task is {task!r}")
    if sep and head in index.records:
        if tail in index.records[head]:
            return head, tail
        raise _Skip("question not loaded", f"question id {qid!r} is not among the {index.describe(head)} this "
                    f"run loads (tasks.*.split / limit / difficulty choose them)")
    tasks = [task] if task else list(index.records)
    hits = [(t, qid) for t in tasks if qid in index.records.get(t, {})]
    if len(hits) > 1:
        raise item.error(f"question id {qid!r} is in several tasks ({', '.join(t for t, _ in hits)}); give each "
                         f"row its task (generate.teacher.task, or a task column)")
    if hits:
        return hits[0]
    if sep and head in TASKS and head not in index.records:
        raise _Skip("task not in config", f"question id {qid!r} is of task {head!r}, which is not among this "
                    f"config's tasks ({', '.join(index.records)})")
    raise _Skip("question not loaded", f"question id {qid!r} is not among the {index.describe(task)} this run "
                f"loads (tasks.*.split / limit / difficulty choose them)")


def _copies(hits: set[tuple[str, str]], index: PlanIndex) -> list[tuple[str, str]] | None:
    """The hits in the task's order when they are one question the task lists more than once, else None."""
    tasks = {t for t, _ in hits}
    if len(tasks) != 1:
        return None
    (task,) = tasks
    records = [index.records[task][rid] for _, rid in hits]
    if len({(normalize_question(r.question), tuple(r.choices)) for r in records}) != 1:
        return None
    order = {rid: i for i, rid in enumerate(index.records[task])}
    return sorted(hits, key=lambda h: order[h[1]])


def _find_by_text(item: Imported, index: PlanIndex, task: str | None,
                  taken: Callable[[tuple[str, str]], bool] | None = None) -> tuple[str, str]:
    hits = {h for h in index.by_text.get(normalize_question(item.question), ()) if task in (None, h[0])}  # type: ignore[arg-type]
    copies = _copies(hits, index) if len(hits) > 1 else None
    if copies is not None:
        # The task lists this question more than once (BIG-bench strategyqa does, as two records): its rows
        # answer the copies in turn, and a row past the last copy is that copy's next sample.
        return next((h for h in copies if taken is None or not taken(h)), copies[-1])
    if len(hits) > 1:
        names = ", ".join(f"{t}/{i}" for t, i in sorted(hits))
        raise item.error(f"the question text matches several questions ({names}); give the rows ids")
    if not hits:
        start = " ".join(item.question.split())[:60]  # type: ignore[union-attr]
        raise _Skip("question not loaded", f"the question {start!r}... matches none of the {index.describe(task)} "
                    f"this run loads (compared after normalising case and whitespace)")
    return next(iter(hits))


def _locate(item: Imported, index: PlanIndex, cfg: Any,
            taken: Callable[[tuple[str, str]], bool] | None = None) -> tuple[str, str]:
    """(task, record id) of the question a row answers; `taken`: whether a question already has this row's path."""
    task = item.task or cfg.task
    if task is not None and task not in index.records:
        raise _Skip("task not in config", f"task {task!r} is not among this config's tasks "
                    f"({', '.join(index.records)})")
    if task is None and len(index.records) == 1:
        task = next(iter(index.records))
    by_id = cfg.match == "id" or (cfg.match == "auto" and item.qid is not None)
    if by_id:
        if item.qid is None or not str(item.qid).strip():
            raise item.error("missing question id (generate.teacher.match is id, so every row needs one)")
        found = _find_by_id(item, index, task)
        if item.question is not None and cfg.match == "auto":
            record = index.records[found[0]][found[1]]
            if found not in index.by_text.get(normalize_question(item.question), set()):
                raise item.error(f"the row's id {item.qid!r} names question {record.id!r} of task {found[0]}, "
                                 f"but its question text differs from that question's (a different generator or "
                                 f"dataset version?); fix the row, or set generate.teacher.match: id to trust "
                                 f"the ids (question: to match by text)")
        return found
    if item.question is None:
        raise item.error("missing question text (generate.teacher.match is question)")
    return _find_by_text(item, index, task, taken)


def match_paths(items: Sequence[Imported], index: PlanIndex, cfg: Any) -> tuple[dict[Slot, Imported], Counter]:
    """Planned slot -> the row answering it, and the count of rows skipped per reason (`unmatched: skip`).

    Raises a DataError at the first row that is bad whatever the policy (unknown style, duplicate path)
    or, with `unmatched: error`, at the first row that answers nothing this run asks for.
    """
    styles = _style_table(index)
    default_style = styles.get(cfg.style.casefold())
    if default_style is None:
        raise ConfigError(f"config field generate.teacher.style: unknown style {cfg.style!r} (known: "
                          f"{', '.join(sorted(set(styles.values())))})")
    answers: dict[Slot, Imported] = {}
    texts: dict[tuple[str, str, str, str], str] = {}
    numbered: Counter = Counter()
    skipped: Counter = Counter()
    skipped_examples: list[str] = []

    def has_path(question: tuple[str, str], style: str) -> bool:
        return numbered[(*question, style)] > 0 or any((*question, style, k) in answers for k in range(index.samples))

    for item in items:
        label = item.style
        style = default_style if label is None else styles.get(label.strip().casefold())
        if style is None:
            raise item.error(f"unknown style {label!r} (known: {', '.join(sorted(set(styles.values())))}; "
                             f"custom styles must be listed in generate.styles)")
        try:
            task, rid = _locate(item, index, cfg, lambda q, s=style: has_path(q, s))
            if style not in index.styles:
                raise _Skip("style not in generate.styles", f"style {style!r} is not in generate.styles "
                            f"({', '.join(index.styles)})")
            k = item.sample
            if k is None:
                # Without sample indices the same text twice is the same row listed twice. With them it may be
                # real: a deterministic teacher writes one path for every sample, and generate keeps each.
                same = texts.get((task, rid, style, item.response.strip()))
                if same is not None:
                    raise item.error(f"duplicate path: the same response for question {task}/{rid}, style {style} "
                                     f"as at {same}")
                k = numbered[(task, rid, style)]
                numbered[(task, rid, style)] += 1
            slot = (task, rid, style, k)
            first = answers.get(slot)
            if first is not None:
                raise item.error(f"duplicate path: question {task}/{rid}, style {style}, sample {k} is already "
                                 f"given at {first.where}")
            if slot not in index.requests:
                raise _Skip("sample beyond generate.samples_per_style",
                            f"this is sample {k} of question {task}/{rid}, style {style}, and "
                            f"generate.samples_per_style is {index.samples}")
        except _Skip as skip:
            if cfg.unmatched == "error":
                raise item.error(f"{skip}; set generate.teacher.unmatched: skip to import only the rows that "
                                 f"match this run's questions, styles and samples") from None
            skipped[skip.reason] += 1
            # One example per row: a row of a human format gives several paths, skipped for the same reason.
            if len(skipped_examples) < EXAMPLES and not any(e.startswith(f"{item.where}: ") for e in skipped_examples):
                skipped_examples.append(f"{item.where}: {skip}")
            continue
        answers[slot] = item
        texts[(task, rid, style, item.response.strip())] = item.where
    if skipped:
        log.warning("generate.teacher (file): skipped %d rows that answer nothing this run asks for (%s), e.g. %s",
                    sum(skipped.values()), ", ".join(f"{n} {r}" for r, n in skipped.items()),
                    "; ".join(skipped_examples))
    return answers, skipped


# ---------------------------------------------------------------- backend


@BACKENDS.register("file")
class FileBackend(Backend):
    """Answers each planned request with the imported row for its question, style and sample."""

    name = "file"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._answers: dict[Slot, Imported] | None = None
        self.skipped: Counter = Counter()
        self.missing: list[Slot] = []

    @property
    def sources(self) -> list[str]:
        path = self.config.path
        return [path] if isinstance(path, str) else list(path)

    @property
    def label(self) -> str:
        return "file:" + "+".join(Path(p).name or p for p in self.sources)

    def prepare(self, requests: Sequence[Request]) -> list[Request]:
        """Read and check the whole source against the stage's whole plan; the requests it can answer.

        Called before the store or paths.jsonl is opened, so a bad row changes nothing on disk.
        """
        index = PlanIndex(requests)
        items = []
        for source in self.sources:
            read = parse_rows(read_source(source, self.config.split), self.config)
            for item in read:
                item.file = source
            items += read
        self._answers, self.skipped = match_paths(items, index, self.config)
        self.missing = [slot for slot in index.requests if slot not in self._answers]
        where = " + ".join(self.sources)
        if not self._answers:
            raise DataError(f"{where}: no row answers any path this run plans ({index.describe()}, styles "
                            f"{', '.join(index.styles)}, {index.samples} samples each; {len(items)} paths read)")
        if self.missing:
            by_style = Counter(s for _, _, s, _ in self.missing)
            examples = ", ".join(f"{t}/{i} {s} sample {k}" for t, i, s, k in self.missing[:EXAMPLES])
            counts = ", ".join(f"{n} {s}" for s, n in by_style.items())
            if self.config.missing == "error":
                raise DataError(f"{where}: {len(self.missing)} of {len(index.requests)} planned paths have no row "
                                f"({counts}; e.g. {examples}); add them, or set generate.teacher.missing: skip")
            log.warning("generate.teacher (file): %d of %d planned paths have no row in %s and are skipped (%s; "
                        "e.g. %s)", len(self.missing), len(index.requests), where, counts, examples)
        return [req for slot, req in index.requests.items() if slot in self._answers]

    def _row(self, req: Request) -> Imported | None:
        if self._answers is None:
            return None
        return self._answers.get(slot_of(req))

    def key(self, req: Request) -> str:
        item = self._row(req)
        params = {**self.sampling_params(), **req.params}
        if item is not None:
            # `origin` only where a format sets it, so the keys of paths imported before it existed stay the same.
            stated = [item.response, item.where, item.model, item.extra] + ([item.origin] if item.origin else [])
            digest = hashlib.sha256(json.dumps(stated, sort_keys=True, ensure_ascii=False,
                                               default=str).encode()).hexdigest()
            params["imported"] = digest
        return request_key(self.name, self.model, req.messages, params, req.sample)

    def complete(self, req: Request) -> Completion:
        item = self._row(req)
        if item is None:
            return Completion(text=None, status="error",
                              error=f"no row of {' + '.join(self.sources)} answers this path")
        source = {"format": self.config.format, "file": str(item.file or self.sources[0]), "row": item.where,
                  "model": item.model, **item.origin}
        return Completion(text=item.response, prompt_tokens=0, completion_tokens=0, latency=0.0,
                          meta={"imported": source, **item.extra})

    def generate(
        self,
        requests: Sequence[Request],
        on_result: Callable[[Request, Completion], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if self._answers is None:
            raise ConfigError("generate.teacher: the file backend answers only the generate stage, which reads "
                              "its file first; use a model backend for filter.judge.backend")
        for req in requests:
            on_result(req, self.complete(req))
            if progress is not None:
                progress(1)
