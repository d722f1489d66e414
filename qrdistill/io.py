"""Artifact I/O: JSONL with file:line errors, atomic writes, run metadata, run-dir checks and
redaction of credentials in URLs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError, MissingArtifactError, QRDistillError, RunDirError

#: Created in every run dir a stage works in (it is also the file the stages lock), so a run dir is
#: recognisable even when its first stage was killed before writing any artifact.
LOCK_FILE = ".qrdistill.lock"
#: Paths (relative to a run dir) that only qrdistill writes; any one of them marks a run dir.
RUN_DIR_MARKERS = (
    LOCK_FILE,
    "store.sqlite",
    "paths.jsonl",
    "filtered.jsonl",
    "filter_report.json",
    "meta/generate.json",
    "meta/filter.json",
    "meta/train.json",
    "meta/evaluate.json",
    "train/summary.json",
    "eval/summary.json",
)
_SEED_DIR = re.compile(r"seed-\d+")


def decode_utf8(path: Path, raw: bytes, error: type[QRDistillError] = DataError, what: str = "file") -> str:
    """`raw` as text; bytes that are not UTF-8 raise `error` naming the line of the first one."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the {what} as UTF-8") from None


def not_utf8_error(path: str | Path) -> DataError:
    """A DataError naming the line of the first byte of `path` that is not UTF-8."""
    path = Path(path)
    try:
        decode_utf8(path, path.read_bytes())
    except DataError as e:
        return e
    except OSError:
        pass
    return DataError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _parse_json_text(path: Path, lineno: int | None, text: str) -> Any:
    """`text` parsed; `lineno` is the line a JSONL line came from, None for a whole JSON file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno or e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}:{lineno or 1}: JSON nested too deeply") from None
    except ValueError as e:
        # e.g. an integer longer than Python converts (sys.int_info.default_max_str_digits)
        raise DataError(f"{path}:{lineno or 1}: unreadable JSON value ({e})") from None


def iter_jsonl_lines(path: str | Path, required: Iterable[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for the non-blank lines of a JSONL file; a bad line raises
    DataError naming file:line. The line number lets callers name the line in their own checks."""
    path = Path(path)
    required = tuple(required)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                obj = _parse_json_text(path, lineno, line)
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                missing = [k for k in required if k not in obj]
                if missing:
                    raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
                yield lineno, obj
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return _parse_json_text(path, None, text)


def count_nonblank_lines(path: str | Path) -> int:
    """Rows of a JSONL file without parsing them (0 when it is absent; unreadable is an error, so a check
    that guards stored work cannot pass by failing to read it)."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename so a killed process never leaves half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise QRDistillError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            # Disk full or a read-only file system: the old file is still whole (the rename never ran).
            raise QRDistillError(
                f"{path}: cannot write ({e.strerror or e}); the previous version, if any, is unchanged"
            ) from None
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
    the *names* of environment variables do), except credentials a user put in
    a URL (`base_url: http://user:KEY@host`), which are redacted here.
    """
    import datetime
    import platform

    from qrdistill import __version__

    run_dir = Path(run_dir)
    dump = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    dump = redact_obj(dump)
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
        meta.update(redact_obj(extra))
    path = run_dir / "meta" / f"{stage}.json"
    atomic_write_json(path, meta)
    return path


# -- credentials in URLs -----------------------------------------------------------------------------------

#: `scheme://userinfo@`: the userinfo of a URL (`user:password`, or a bare token).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
#: Query parameters that carry credentials (`?key=...`, `&api_key=...`, `?access_token=...`).
_URL_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>[?&;](?:[a-z0-9_.-]*[_.-])?(?:key|apikey|token|secret|password|passwd|pwd|auth|signature|sig)=)"
    r"(?P<value>[^&#\s\"'<>]+)"
)
REDACTED = "[REDACTED]"


def redact_credentials(text: str) -> str:
    """`text` with the userinfo and credential query values of every URL in it replaced."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _URL_SECRET_PARAM.sub(lambda m: f"{m['name']}{REDACTED}", text)


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value with `redact_credentials` applied to every string in it."""
    if isinstance(obj, str):
        return redact_credentials(obj)
    if isinstance(obj, dict):
        return {redact_obj(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def url_secrets(url: str | None) -> list[str]:
    """The credential values inside a URL, so they can be scrubbed where they appear on their own too.

    A user name beside a password is not secret (and is often a short common word that scrubbing
    would remove from real text); a user name alone (`http://TOKEN@host`) is the credential.
    """
    if not url:
        return []
    out = []
    for m in _URL_USERINFO.finditer(url):
        user, sep, password = m["userinfo"].partition(":")
        out.append(password if sep else user)
    out += [m["value"] for m in _URL_SECRET_PARAM.finditer(url)]
    # Short values are too likely to occur in ordinary text to be scrubbed from it.
    return [s for s in out if len(s) >= 8]


class RedactingFilter(logging.Filter):
    """Log-handler filter: a record's final message goes out with URL credentials redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string is logging's to report, not ours)
            return True
        redacted = redact_credentials(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# -- run directories ---------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds something only qrdistill writes (or is a multi-seed run's root)."""
    if any((path / m).exists() for m in RUN_DIR_MARKERS):
        return True
    try:
        return any(
            _SEED_DIR.fullmatch(p.name) and any((p / m).exists() for m in RUN_DIR_MARKERS)
            for p in path.iterdir()
            if p.is_dir()
        )
    except OSError:
        return False


def check_run_dir(path: str | Path, force: bool = False) -> Path:
    """Refuse a run dir a stage must not write into; mark an accepted one as a run dir.

    A run dir is a new or empty directory, or one holding qrdistill's own files
    (`RUN_DIR_MARKERS`). Any other non-empty directory (`--run-dir /`, a home or
    project directory) is refused unless `force`: stages write and replace
    files by fixed names there. A path that is a file, or a directory this
    process cannot write, is refused even with `force`. An accepted directory
    gets the lock file, so it is recognised later even if its first stage dies
    before writing anything.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"{path}: the run directory is a file, not a directory; give --run-dir (or run_dir) "
            f"a directory path"
        )
    if path.is_dir() and not is_run_dir(path):
        try:
            empty = next(path.iterdir(), None) is None
        except OSError as e:
            raise RunDirError(f"{path}: cannot read the run directory ({e.strerror or e})") from None
        if not empty and not force:
            raise RunDirError(
                f"{path}: not a qrdistill run directory (it is not empty and holds none of qrdistill's files, "
                f"e.g. {LOCK_FILE}, store.sqlite, meta/); stages write files by fixed names there, so pick a new "
                f"or empty --run-dir, or pass --force to use this one anyway"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Probe by writing: permission bits say nothing for root or on a read-only mount.
        fd, probe = tempfile.mkstemp(dir=path, prefix=".qrdistill-probe.")
        os.close(fd)
        os.unlink(probe)
        (path / LOCK_FILE).touch(exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"{path}: the run directory is not writable ({e.strerror or e}); fix its "
            f"permissions or pick another --run-dir"
        ) from None
    return path
