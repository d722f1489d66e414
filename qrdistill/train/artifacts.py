"""What the train stage writes under a training folder (D/train/, D/train.new/), and how a finished one is told.

A training is finished when its summary.json is there (the loop writes it last) and every adapter it
records has the sha256 the summary records for it. Cleaning a folder removes only what the loop writes,
by name: a user's file that happens to sit in a run directory is never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrdistill.train.checkpoint import STEP_DIR, TMP_DIR, sha256_file

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
LOG_FILES = ("log.jsonl", "routing.jsonl")
#: Results of one training; a new training in the same folder removes them first.
RESULT_FILES = (SUMMARY_FILE, *LOG_FILES, "routing_final.jsonl", "router.pt", "mutual.pt")
#: Kept across trainings of one folder (keyed by text hash and encoder).
CACHE_FILES = ("embeddings.pt", ".embeddings.pt.tmp")
TB_EVENTS = "events.out.tfevents.*"


def adapter_dir(path: Path) -> Path | None:
    """The folder holding adapter_config.json: `path` itself or, as PEFT saves a named
    adapter, `path/<name>`."""
    if (path / "adapter_config.json").exists():
        return path
    if path.is_dir():
        for sub in sorted(path.iterdir()):
            if (sub / "adapter_config.json").exists():
                return sub
    return None


def adapter_digest(path: Path) -> dict[str, str]:
    """sha256 of the files that make an adapter what it is: its weights and its config."""
    if not path.is_dir():
        return {}
    return {
        p.name: sha256_file(p)
        for p in sorted(path.iterdir())
        if p.is_file() and (p.name == "adapter_config.json" or p.name.startswith("adapter_model."))
    }


def check_training(
    train_dir: Path, names: list[str] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """(summary, None) when `train_dir` holds a finished training whose adapters (of `names`; default: every
    student it trained) are the ones its summary records; (None, why) otherwise."""
    path = train_dir / SUMMARY_FILE
    if not path.is_file():
        return None, f"{path} is missing: that training has not finished"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"{path} is unreadable ({e})"
    if (
        not isinstance(summary, dict)
        or not summary.get("fingerprint")
        or not isinstance(summary.get("students"), list)
    ):
        return None, f"{path} is incomplete (no fingerprint or students)"
    trained = [st.get("name") for st in summary["students"] if isinstance(st, dict)]
    wanted = trained if names is None else names
    absent = [n for n in wanted if n not in trained]
    if absent:
        return None, f"{path} trained student(s) {', '.join(trained)}, not {', '.join(absent)}"
    digests = summary.get("adapters")
    for name in wanted:
        folder = train_dir / "adapters" / name
        if digests is None:  # a summary written before adapter checksums existed: presence is all it tells
            if not folder.is_dir():
                return None, f"{folder} is missing"
            continue
        want = digests.get(name) if isinstance(digests, dict) else None
        if not want:
            return None, f"{path} records no adapter for student {name}"
        got = adapter_digest(folder)
        changed = sorted(f for f in set(want) | set(got) if want.get(f) != got.get(f))
        if changed:
            return None, (
                f"{folder}: {', '.join(changed)} differ(s) from what {path} records "
                "(changed or damaged after that training finished)"
            )
    return summary, None


def has_traces(train_dir: Path) -> bool:
    """Did a training start in `train_dir` (a log or a checkpoint)?"""
    ckpts = train_dir / "checkpoints"
    return any((train_dir / n).exists() for n in LOG_FILES) or (
        ckpts.is_dir() and any(STEP_DIR.match(p.name) for p in ckpts.iterdir())
    )


def clear_training(train_dir: Path) -> None:
    """Remove a previous training's results, checkpoints and TensorBoard events from `train_dir`.

    Adapters are replaced when the new training finishes (summary.json, which vouches for them, goes now);
    the embedding cache stays."""
    for name in RESULT_FILES:
        (train_dir / name).unlink(missing_ok=True)
    ckpts = train_dir / "checkpoints"
    if ckpts.is_dir():
        for p in ckpts.iterdir():
            if (STEP_DIR.match(p.name) or TMP_DIR.match(p.name)) and p.is_dir():
                shutil.rmtree(p)
    tb = train_dir / "tb"
    if tb.is_dir():
        for p in tb.glob(TB_EVENTS):
            p.unlink()
    for folder in (ckpts, tb):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: whatever else is there is not ours


def discard_training(folder: Path, into: Path) -> None:
    """Delete a replaced training (D/train.old*/) file by file.

    What the train stage did not write is moved to the same place under `into` (the training that replaced
    it), so a user's file stays where it was put; one that would overwrite a file there stays in `folder`,
    with a warning."""
    names: list[Any] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        names = [
            st["name"] for st in json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))["students"]
        ]
    for name in names:
        if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
            shutil.rmtree(folder / "adapters" / name, ignore_errors=True)
    clear_training(folder)
    for name in CACHE_FILES:
        (folder / name).unlink(missing_ok=True)
    for f in sorted(p for p in folder.rglob("*") if not p.is_dir()):
        dest = into / f.relative_to(folder)
        if not dest.exists() and not dest.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            f.rename(dest)
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
    if folder.exists():
        left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())
        log.warning(
            "train: kept %s: it holds files qrdistill did not write that clash with files in %s (%s%s)",
            folder,
            into,
            ", ".join(left[:5]),
            ", ..." if len(left) > 5 else "",
        )


@contextlib.contextmanager
def permission_errors(run_dir: Path, stage: str) -> Iterator[None]:
    """A run directory (or a model folder) this process may not write (or read) is the user's to fix: one
    line naming the path, no traceback."""
    from qrdistill.errors import QRDistillError

    try:
        yield
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        where = Path(e.filename) if e.filename else run_dir
        inside = where == run_dir or run_dir in where.parents
        hint = (
            f"`qrdistill {stage}` needs a writable run directory ({run_dir})"
            if inside
            else "fix its permissions"
        )
        raise QRDistillError(f"{where}: {e.strerror or e}; {hint}") from None
