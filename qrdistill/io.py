"""Artifact I/O: JSONL with file:line errors, atomic writes, run metadata."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError, MissingArtifactError


def iter_jsonl_lines(path: str | Path, required: Iterable[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for the non-blank lines of a JSONL file; a bad line raises
    DataError naming file:line. The line number lets callers name the line in their own checks."""
    path = Path(path)
    required = tuple(required)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            yield lineno, obj


def iter_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file; a bad line raises DataError naming file:line."""
    for _, obj in iter_jsonl_lines(path, required):
        yield obj


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, required))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename so a killed process never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def require_artifact(path: str | Path, stage: str) -> Path:
    """Return `path` if it exists, else tell the user which stage writes it."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path} not found: run `qrdistill {stage}` first (it writes this file)")
    return path


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_run_meta(run_dir: str | Path, stage: str, config: Any, extra: dict[str, Any] | None = None) -> Path:
    """Save the resolved config, seed and git SHA beside a stage's artifacts.

    `config` is the full RunConfig (pydantic); secrets never live in it (only
    the *names* of environment variables do).
    """
    import datetime
    import platform

    from qrdistill import __version__

    run_dir = Path(run_dir)
    dump = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    meta = {
        "stage": stage,
        "qrdistill_version": __version__,
        "git_sha": git_sha(),
        "seed": dump.get("seed") if isinstance(dump, dict) else None,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "python": platform.python_version(),
        "config": dump,
    }
    if extra:
        meta.update(extra)
    path = run_dir / "meta" / f"{stage}.json"
    atomic_write_json(path, meta)
    return path
