"""Exports of a finished run for other tools: the reasoning data as a dataset, merged students, GGUF files."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from qrdistill.errors import QRDistillError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def export_lock(folder: Path, name: str, what: str) -> Iterator[None]:
    """One export into `folder` under `name` at a time (an OS file lock, released by a kill too): the
    next export clears what a killed one left, which must never be a running export's work."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / f".{name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise QRDistillError(f"{folder / name}: another export of {what} there is running; wait for it to finish "
                             "(or stop it)") from None
    try:
        yield
    finally:
        lock.release()


def recover_staged(dest: Path) -> None:
    """Undo what a killed export left beside `dest`: a previous export moved aside (`.<name>.tmp-*.old`)
    comes back if `dest` is missing, and half-written folders are removed. Call it under `export_lock`."""
    name = glob.escape(dest.name)
    olds = sorted(dest.parent.glob(f".{name}.tmp-*.old"), key=lambda p: p.stat().st_mtime)
    if olds and not dest.exists():
        os.replace(olds.pop(), dest)
        log.warning("%s: restored the previous export, which an interrupted export had moved aside", dest)
    for leftover in [*olds, *dest.parent.glob(f".{name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(dest: Path, name: str, what: str) -> Iterator[Path]:
    """Yield a temporary sibling folder of `dest` to fill; on success it replaces `dest` by rename.

    A failure (or a kill) while filling it leaves a previous `dest` whole; what a kill left behind is
    cleaned up (or restored) by the next export to `dest`. `name` is how errors name the destination
    (`--out X` or the path), `what` what is being written.
    """
    with contextlib.ExitStack() as stack:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(export_lock(dest.parent, dest.name, what))
            recover_staged(dest)
            # Not mkdtemp: its 0700 would become the export's mode; mkdir honours the umask like any other output.
            tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
            tmp.mkdir()
        except OSError as e:
            raise QRDistillError(f"{name}: cannot write ({e.strerror or e})") from None
        yield from _fill_and_swap(dest, tmp, name, what)


def _fill_and_swap(dest: Path, tmp: Path, name: str, what: str) -> Iterator[Path]:
    old: Path | None = None
    try:
        yield tmp
        if dest.exists():
            old = Path(f"{tmp}.old")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException as e:
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)  # the previous export comes back whole
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise QRDistillError(f"{name}: cannot write {what} ({e.strerror or e}); "
                                 f"{'the previous export is unchanged' if dest.exists() else 'nothing was written'}"
                                 ) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
