"""Loading benchmark rows from a local file/directory or the HF hub.

Every row keeps *where* it came from ("data.jsonl:17", "task.json:1203",
"openai/gsm8k[test] row 5"), so a missing field is reported at its line.
Local formats:
- JSONL (one object per line; read with `qrdistill.io.iter_jsonl`),
- JSON (a list of objects, or an object holding the list under `examples`
  (BIG-bench task.json) or `data`/`rows`/`questions`),
- Parquet (through `datasets`, the same reader the hub uses),
- a directory holding one file per split (`test.jsonl`, `test-00000-of-00001.parquet`, ...).

Sources without splits (BIG-bench tasks, StrategyQA dev) are divided by a
seeded hash of each question's content (`hash_split`), so `train` and `test`
never overlap and do not depend on file order or on where the rows came from.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qrdistill.errors import DataError
from qrdistill.tasks.base import Record, Task

#: salt of the train/test hash split; changing it changes every split, so it is versioned.
SPLIT_SALT = "qrdistill-split-v1"
#: share of a split-less source that goes to `test`.
TEST_FRACTION = 0.2
#: salt of the per-question option shuffle.
SHUFFLE_SALT = "qrdistill-options-v1"

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_MISSING = object()


@dataclass
class Row:
    """One raw example and its location, for error messages."""

    data: dict[str, Any]
    where: str

    def get(self, *names: str, default: Any = _MISSING) -> Any:
        """The first of `names` present (nested keys as "a.b"); a DataError naming
        file:line and the field if none is and no default is given."""
        for name in names:
            value: Any = self.data
            for part in name.split("."):
                if isinstance(value, dict) and part in value:
                    value = value[part]
                else:
                    value = _MISSING
                    break
            if value is not _MISSING and value is not None:
                return value
        if default is not _MISSING:
            return default
        fields = " or ".join(repr(n) for n in names)
        raise DataError(f"{self.where}: missing field {fields}")

    def error(self, msg: str) -> DataError:
        return DataError(f"{self.where}: {msg}")


# ---------------------------------------------------------------- local files


def read_rows(path: str | Path) -> list[Row]:
    """All rows of one local JSONL / JSON / Parquet file."""
    from qrdistill.io import iter_jsonl

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        # iter_jsonl skips blank lines, so count lines ourselves to keep the numbers right.
        rows = []
        lines = _nonblank_line_numbers(path)
        for lineno, obj in zip(lines, iter_jsonl(path), strict=False):
            rows.append(Row(obj, f"{path}:{lineno}"))
        return rows
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'} (use .jsonl, .json or .parquet)")


def _nonblank_line_numbers(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as f:
        return [i for i, line in enumerate(f, start=1) if line.strip()]


_LIST_KEYS = ("examples", "data", "rows", "questions")


def _json_rows(path: Path) -> list[Row]:
    """Rows of a JSON list (or of the list under `examples`/`data`/...), each with the
    line its object starts on."""
    from qrdistill.io import _parse_json_text, not_utf8_error

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    # Malformed, nested too deeply (RecursionError) or an integer too long to convert (ValueError):
    # each a DataError naming the file.
    top = _parse_json_text(path, None, text)
    if isinstance(top, list):
        items, start = top, _skip_ws(text, 0)
    elif isinstance(top, dict):
        key = next((k for k in _LIST_KEYS if isinstance(top.get(k), list)), None)
        if key is None:
            raise DataError(
                f"{path}:1: expected a JSON list of questions or an object with a list under "
                f"{' / '.join(_LIST_KEYS)}"
            )
        items, start = top[key], _find_list_start(text, key)
    else:
        raise DataError(f"{path}:1: expected a JSON list or object, got {type(top).__name__}")
    lines = _element_lines(text, start, len(items))
    rows = []
    for obj, lineno in zip(items, lines, strict=True):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(Row(obj, f"{path}:{lineno}"))
    return rows


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _find_list_start(text: str, key: str) -> int | None:
    """Offset of the `[` of the top-level object's `key` (walking the object so a nested
    "examples" is never mistaken for it)."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0) + 1
    while i < len(text):
        i = _skip_ws(text, i)
        if text[i] == "}":
            return None
        k, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i) + 1  # the colon
        i = _skip_ws(text, i)
        if k == key:
            return i
        _, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == ",":
            i += 1
    return None


def _element_lines(text: str, start: int | None, n: int) -> list[int]:
    """1-based line on which each of the `n` elements of the array at `start` begins."""
    if start is None or start >= len(text) or text[start] != "[":
        return [1] * n
    dec = json.JSONDecoder()
    out, i, line, pos = [], start + 1, 1 + text.count("\n", 0, start + 1), start + 1
    for _ in range(n):
        i = _skip_ws(text, i)
        line += text.count("\n", pos, i)
        pos = i
        out.append(line)
        _, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
    return out


def _parquet_rows(path: Path) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as e:  # pyarrow/datasets raise many types for a bad file
        raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from None
    return [Row(dict(r), f"{path}:row {i + 1}") for i, r in enumerate(ds)]


def split_files(directory: Path) -> dict[str, list[Path]]:
    """Files of a directory grouped by the split their name states: `test.jsonl`,
    `test-00000-of-00001.parquet`, `bigbench-validation.parquet` -> test / test / validation."""
    out: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        if not p.is_file() or p.suffix.lower() not in LOCAL_SUFFIXES:
            continue
        out.setdefault(_split_of_name(p), []).append(p)
    return out


_SPLIT_NAMES = ("train", "test", "validation", "dev", "val")


def _split_of_name(p: Path) -> str:
    stem = p.name[: -len(p.suffix)].lower()
    for part in stem.replace("_", "-").split("-"):
        if part in _SPLIT_NAMES:
            return part
    return stem


# ---------------------------------------------------------------- hub


def hub_rows(hub_id: str, config: str | None, split: str) -> list[Row]:
    """Rows of one split of a hub dataset; a DataError (not a traceback) when offline."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown id, auth: all mean "cannot get it from the hub"
        name = f"{hub_id} ({config})" if config else hub_id
        raise DataError(
            f"cannot load {name} split {split!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "offline, point the task's `path` at a local JSON/JSONL/Parquet file"
        ) from None
    label = f"{hub_id}:{config}" if config else hub_id
    return [Row(dict(r), f"{label}[{split}] row {i}") for i, r in enumerate(ds)]


# ---------------------------------------------------------------- splitting and shuffling


def hash_split(key: str) -> str:
    """ "train" or "test" for a question, from a salted hash of its content (about
    TEST_FRACTION of questions go to test)."""
    h = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}\0{key}".encode()).digest()[:8], "big")
    return "test" if h / 2**64 < TEST_FRACTION else "train"


def content_id(prefix: str, key: str, seen: dict[str, int]) -> str:
    """A stable id from a question's content; repeats of the same content get -2, -3, ..."""
    base = f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


def shuffle_options(qid: str, options: list[str], gold: int) -> tuple[list[str], str]:
    """Options in a seeded order fixed by the question id, and the gold's new letter.

    Sources often list the right option first (BIG-bench Date: 364 of 369), which
    would make every letter-level number measure position bias.
    """
    seed = int.from_bytes(hashlib.sha256(f"{SHUFFLE_SALT}\0{qid}".encode()).digest()[:8], "big")
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, chr(65 + order.index(gold))


# ---------------------------------------------------------------- the loading task


class DatasetTask(Task):
    """A task read from the hub or local files; subclasses map raw rows to Records.

    `native_splits` maps each split this task offers to the source splits that
    make it up (e.g. ANLI test = test_r1 + test_r2 + test_r3); leave it empty for
    a split-less source, which `hash_split` divides into train/test. `splits`
    follows from it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.splits = tuple(cls.native_splits) if cls.native_splits else ("train", "test")

    hub_id: ClassVar[str] = ""
    hub_configs: ClassVar[tuple[str | None, ...]] = (None,)
    native_splits: ClassVar[dict[str, tuple[str, ...]]] = {}

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        """Map raw rows (all from `split`, or all rows of a split-less source) to Records."""
        raise NotImplementedError

    def split_key(self, record: Record) -> str:
        """What the train/test hash of a split-less source is taken of (identical
        questions must land in the same split)."""
        return record.id

    @property
    def split_names(self) -> tuple[str, ...]:
        """Same as `splits` (kept for callers that ask a loading task by this name)."""
        return self.splits

    def load(self, split: str = "train", path: str | None = None, limit: int | None = None) -> list[Record]:
        if split not in self.splits:
            raise DataError(f"task {self.name!r} has no split {split!r} (splits: {', '.join(self.splits)})")
        if path is None:
            source = self.hub_id
            rows = self._hub(split)
        else:
            source = str(path)
            rows = self._local(Path(path), split)
        if self.native_splits:
            records = self.records_from_rows(rows, split)
        else:
            records = [
                r for r in self.records_from_rows(rows, split) if hash_split(self.split_key(r)) == split
            ]
        if not records:
            raise DataError(f"{source}: no questions in split {split!r} of task {self.name!r}")
        _check_unique(records, source)
        return records[:limit] if limit else records

    def _hub(self, split: str) -> list[Row]:
        rows: list[Row] = []
        hub_splits = self.native_splits.get(split) if self.native_splits else self.hub_all_splits
        for config in self.hub_configs:
            for s in hub_splits:
                rows += hub_rows(self.hub_id, config, s)
        return rows

    #: for split-less tasks: every hub split, pooled before our own hash split.
    hub_all_splits: ClassVar[tuple[str, ...]] = ("train",)

    def _local(self, path: Path, split: str) -> list[Row]:
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if path.is_file():
            named = _split_of_name(path)
            if self.native_splits and named in _SPLIT_NAMES and not self._same_split(named, split):
                raise DataError(
                    f"{path}: this file holds split {named!r}, not {split!r}; point `path` at the {split} "
                    "file or at the directory holding both"
                )
            return read_rows(path)
        files = split_files(path)
        if not files:
            raise DataError(f"{path}: no .jsonl/.json/.parquet files in this directory")
        if not self.native_splits:
            return [row for group in files.values() for p in group for row in read_rows(p)]
        wanted = [s for s in files if self._same_split(s, split)]
        if not wanted:
            raise DataError(f"{path}: no file for split {split!r} (found splits: {', '.join(sorted(files))})")
        return [row for s in wanted for p in files[s] for row in read_rows(p)]

    def _same_split(self, file_split: str, split: str) -> bool:
        aliases = {"val": "validation", "dev": "validation"}
        return aliases.get(file_split, file_split) == split or file_split in self.native_splits.get(split, ())


def _check_unique(records: Iterable[Record], source: str) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{source}: question id {r.id!r} appears twice")
        seen.add(r.id)
