"""`qrdistill table`: every row x seed of a table config through the pipeline, then one report.

Layout under the table's run directory D:

- D/data/<key>/: generate and filter (store.sqlite, paths.jsonl, filtered.jsonl), once per distinct data
  config (tasks, generate, filter, evaluate, prices, seed: everything those two stages read), so rows
  that differ only in training share one teacher bill. The completion store lives in its run
  directory, so rows in directories of their own would each pay the teacher again.
- D/<row>/: the row's filtered paths (copied from its data directory) and D/<row>/seed-<s>/, a
  complete run directory per seed written by `stages.pipeline.run` (train, evaluate), plus
  table_seed.json: the row x seed's config fingerprint, status and the seconds its attempts took;
  D/<row>/table_row.json names the row's data directory.
- D/table/: the report (`analysis.table_report`).

`export_results` copies what the report, the skip check and later seeds read (every finished row x seed, the
rows' filtered paths, the data directories with their completion stores, the report) without adapters,
checkpoints or tracker logs, so that seeds run on different machines or in different sittings can be put
together: `import_results` copies an export into a table directory, where its seeds count as finished and new
seeds reuse the teacher's stored completions.

A row x seed whose table_seed.json says finished with the same fingerprint and whose
eval/summary.json exists is skipped without running a stage. Any other one goes through the
pipeline, whose stages continue where a killed attempt stopped (train from its last checkpoint,
evaluate from its saved predictions); later seeds start from the first seed's base-model
predictions, as `qrdistill run --seeds` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError

log = logging.getLogger(__name__)

SEED_MARKER = "table_seed.json"
#: In a data directory: the seconds generate + filter took there; in a row directory: which data directory it reads.
DATA_MARKER = "table_data.json"
ROW_MARKER = "table_row.json"
#: In an export folder: which table it came from and which seeds it holds.
EXPORT_MARKER = "table_export.json"
DATA_DIR = "data"
DATA_STAGES = ("generate", "filter")
#: What a results export leaves out: adapters, checkpoints and tracker logs (folders), weights, locks.
HEAVY_DIRS = frozenset({"adapters", "checkpoints", "tb", "wandb", "mlruns"})
#: Weights, and the store's write-ahead files (a store is exported through SQLite's backup instead).
HEAVY_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf", ".sqlite-wal", ".sqlite-shm",
                            ".lock"})
SEED_STAGES = ("train", "evaluate")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_key(cfg: Any) -> str:
    """Identifies what generate and filter produce: the sections they read (the filter decontaminates
    against evaluate's test questions, so evaluate is part of it) and the data seed."""
    dump = cfg.model_dump(mode="json")
    return _digest({k: dump.get(k) for k in ("tasks", "generate", "filter", "evaluate", "prices", "seed")})


def seed_fingerprint(cfg: Any, seed: int) -> str:
    """Identifies a row x seed: its whole resolved run config at that seed, except where it lives."""
    dump = cfg.model_dump(mode="json")
    dump.update({"seed": seed, "seeds": None})
    dump.pop("run_dir", None)
    return _digest(dump)


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(seed_dir: Path, fingerprint: str) -> bool:
    marker = read_marker(seed_dir / SEED_MARKER)
    return bool(marker and marker.get("status") == "finished" and marker.get("fingerprint") == fingerprint
                and (seed_dir / "eval" / "summary.json").is_file())


def _last_write(folder: Path) -> float:
    """The newest modification time under a folder: when a killed attempt last wrote anything."""
    newest = 0.0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
            except OSError:
                continue
    return newest


def _begin(seed_dir: Path, row: str, seed: int, fingerprint: str) -> dict[str, Any]:
    """The row x seed's marker for a new attempt; an earlier attempt that died counts up to its last write."""
    from qrdistill.io import atomic_write_json

    marker = read_marker(seed_dir / SEED_MARKER)
    attempts: list[dict[str, Any]] = []
    if marker and marker.get("fingerprint") == fingerprint:
        attempts = [a for a in marker.get("attempts", []) if isinstance(a, dict)]
        if marker.get("status") == "running" and attempts and attempts[-1].get("wall_s") is None:
            started = float(attempts[-1].get("started", 0.0))
            attempts[-1]["wall_s"] = max(0.0, _last_write(seed_dir) - started)
            attempts[-1]["ended"] = "killed (counted up to its last written file)"
    attempts.append({"started": time.time(), "wall_s": None})
    marker = {"row": row, "seed": seed, "fingerprint": fingerprint, "status": "running", "attempts": attempts}
    atomic_write_json(seed_dir / SEED_MARKER, marker)
    return marker


def _finish(seed_dir: Path, marker: dict[str, Any], seconds: float) -> None:
    from qrdistill.io import atomic_write_json

    marker["attempts"][-1].update({"wall_s": seconds, "ended": "finished"})
    marker["status"] = "finished"
    marker["wall_s"] = sum(float(a.get("wall_s") or 0.0) for a in marker["attempts"])
    atomic_write_json(seed_dir / SEED_MARKER, marker)


def _run_data(cfg: Any, stages: list[str], data_dir: Path) -> float:
    from qrdistill.io import atomic_write_json
    from qrdistill.stages import pipeline

    t0 = time.perf_counter()
    pipeline.run(cfg.model_copy(update={"stages": stages, "run_dir": str(data_dir), "seeds": None}), data_dir,
                 seeds=[])
    seconds = time.perf_counter() - t0
    marker = read_marker(data_dir / DATA_MARKER) or {}
    marker["runs"] = [*marker.get("runs", []), seconds]
    marker["wall_s"] = sum(marker["runs"])
    atomic_write_json(data_dir / DATA_MARKER, marker)
    return seconds


def chosen_seeds(table: Any, only_seeds: list[int] | None) -> list[int]:
    """The table's seeds to run now: all, or `only_seeds` (a ConfigError if one is not among them)."""
    if only_seeds is None:
        return list(table.seeds)
    unknown = sorted(set(only_seeds) - set(table.seeds))
    if unknown:
        raise ConfigError(f"--seeds {' '.join(map(str, unknown))}: not among the table's seeds "
                          f"({table.source}: seeds: {list(table.seeds)})")
    return [s for s in table.seeds if s in set(only_seeds)]


def _light_files(folder: Path, skip_dirs: frozenset[str] = frozenset()) -> list[Path]:
    """Regular files under a folder (links are not followed), the heavy ones of `HEAVY_*` and `skip_dirs` left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in HEAVY_DIRS | skip_dirs and not d.startswith(".")
                             and not os.path.islink(os.path.join(dirpath, d)))
        for f in sorted(filenames):
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink() and p.suffix not in HEAVY_SUFFIXES and not f.startswith("."):
                out.append(p)
    return out


def _copy(src: Path, dst: Path) -> None:
    """Copy one file; a SQLite store through SQLite's backup (its write-ahead log may hold what the file lacks)."""
    import shutil
    import sqlite3

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".sqlite":
        with contextlib.closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as a, \
                contextlib.closing(sqlite3.connect(dst)) as b:
            a.backup(b)
        return
    shutil.copyfile(src, dst)


def _copy_folder(files: list[Path], src_root: Path, dst: Path) -> None:
    """Copy `files` (under `src_root`) into a new folder `dst` at once: built beside it, then renamed into place, so
    that a killed copy leaves no folder that looks complete."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in files:
        _copy(f, tmp / f.relative_to(src_root))
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.replace(dst)


def _data_keys(table: Any) -> set[str]:
    """The data directories the table's rows read now."""
    return {data_key(cfg) for cfg in table.rows.values() if any(s in DATA_STAGES for s in cfg.stages)}


def _finished_seeds(table: Any, root: Path, seeds: list[int]) -> dict[str, list[int]]:
    from qrdistill.stages import pipeline

    return {name: [s for s in seeds if is_finished(root / name / pipeline.SEED_DIR.format(s), seed_fingerprint(cfg, s))]
            for name, cfg in table.rows.items()}


def _seed_list(seeds: dict[str, list[int]]) -> str:
    return "; ".join(f"{n} seeds {', '.join(map(str, s)) or 'none'}" for n, s in seeds.items())


def export_results(table: Any, root: Path, out: Path, only_seeds: list[int] | None = None) -> dict[str, Any]:
    """Copy the results of the table's finished row x seeds under `root` (of `only_seeds` if given) into `out`,
    in the same layout: each seed's folder, the rows' own files, the data directories the rows read (their
    completion store included: the teacher's bill) and the report; adapters, checkpoints and tracker logs stay
    behind. `out` is new, or an earlier export that it replaces as a whole, and only if every seed that holds
    is in the new one (import it first otherwise)."""
    import shutil

    from qrdistill.io import atomic_write_json
    from qrdistill.stages import pipeline
    from qrdistill.stages.generate import run_dir_lock

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ConfigError(f"{root}: no table directory to export (run `qrdistill table --config {table.source}`)")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ConfigError(f"--export {out}: must lie outside the table directory {root}")
    earlier = read_marker(out / EXPORT_MARKER) if out.is_dir() else None
    if out.exists() and not (out.is_dir() and (earlier is not None or not any(out.iterdir()))):
        raise ConfigError(f"--export {out}: not empty and not an earlier export ({EXPORT_MARKER}); pick a new folder")
    with run_dir_lock(root, "table"):
        done = _finished_seeds(table, root, chosen_seeds(table, only_seeds))
        dropped = [f"{n} seed {s}" for n, ss in ((earlier or {}).get("seeds") or {}).items() for s in ss
                   if s not in done.get(n, [])]
        if dropped:
            raise ConfigError(f"--export {out}: the earlier export there holds {', '.join(dropped)}, which {root} "
                              f"lacks; import it first (qrdistill table --config {table.source} --import {out})")
        seed_names = frozenset(pipeline.SEED_DIR.format(s) for s in table.seeds)
        files: list[Path] = []
        for name, seeds in done.items():
            row_dir = root / name
            if row_dir.is_dir():
                files += [p for p in _light_files(row_dir, skip_dirs=seed_names) if p.parent == row_dir]
            for s in seeds:
                files += _light_files(row_dir / pipeline.SEED_DIR.format(s))
        for key in sorted(_data_keys(table)):
            if (root / DATA_DIR / key).is_dir():
                files += _light_files(root / DATA_DIR / key)
        if (root / "table").is_dir():
            files += _light_files(root / "table")
        tmp = out.with_name(f".{out.name}.exporting")
        shutil.rmtree(tmp, ignore_errors=True)
        for f in files:
            _copy(f, tmp / f.relative_to(root))
        atomic_write_json(tmp / EXPORT_MARKER, {"table": str(table.source), "from": str(root), "seeds": done})
    if out.exists():
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("table: exported %d files (%.1f MB) to %s: %s", len(files), size / 1e6, out, _seed_list(done))
    return {"out": str(out), "files": len(files), "bytes": size, "seeds": done}


def import_results(table: Any, root: Path, src: Path) -> dict[str, Any]:
    """Copy the finished row x seeds of an export (`export_results`) into the table directory `root`; the caller
    holds the table's lock.

    A seed is imported only if it was run with this table's config for that row and seed (the fingerprint of its
    marker) and `root` has no folder for it (a local one, finished or part-run, is kept as it is); the others are
    named in a warning. A row's own files are copied where `root` lacks them, a data directory the rows read
    where `root` lacks it (whole: its completion store with the paths made from it)."""
    from qrdistill.stages import pipeline

    root, src = Path(root), Path(src)
    marker = read_marker(src / EXPORT_MARKER) if src.is_dir() else None
    if marker is None:
        raise ConfigError(f"--import {src}: not an export of `qrdistill table --export` (no {EXPORT_MARKER})")
    if marker.get("table") != str(table.source):
        log.warning("table: %s was exported from table %s, not %s; its seeds are checked against this table's "
                    "config", src, marker.get("table"), table.source)
    seed_names = frozenset(pipeline.SEED_DIR.format(s) for s in table.seeds)
    imported: dict[str, list[int]] = {}
    skipped: list[str] = []
    for name, cfg in table.rows.items():
        row_src = src / name
        if not row_src.is_dir():
            continue
        imported[name] = []
        for s in table.seeds:
            sub_src, sub = row_src / pipeline.SEED_DIR.format(s), root / name / pipeline.SEED_DIR.format(s)
            if not sub_src.is_dir():
                continue
            if not is_finished(sub_src, seed_fingerprint(cfg, s)):
                skipped.append(f"{name} seed {s} (not finished, or run with another config than "
                               f"{table.source} gives now)")
            elif sub.exists():
                skipped.append(f"{name} seed {s} ({sub} exists; remove it to import this one)")
            else:
                _copy_folder(_light_files(sub_src), sub_src, sub)
                imported[name].append(s)
        for f in _light_files(row_src, skip_dirs=seed_names):
            if f.parent == row_src and not (root / name / f.name).exists():
                _copy(f, root / name / f.name)
    for key in sorted(_data_keys(table)):
        if (src / DATA_DIR / key).is_dir() and not (root / DATA_DIR / key).exists():
            _copy_folder(_light_files(src / DATA_DIR / key), src / DATA_DIR / key, root / DATA_DIR / key)
    if skipped:
        log.warning("table: not imported from %s: %s", src, "; ".join(skipped))
    log.info("table: imported from %s: %s", src, _seed_list(imported) or "nothing")
    return {"imported": imported, "skipped": skipped}


def run(table: Any, root: Path, only_seeds: list[int] | None = None, import_from: Path | None = None) -> dict[str, Any]:
    """Run every unfinished row x seed of a `ResolvedTable` under `root` (of `only_seeds` if given: a
    subset of the table's seeds, for a table too long for one sitting), then write the report over every
    seed finished so far. `import_from`: an export whose finished seeds are copied in first
    (`import_results`)."""
    from qrdistill.analysis.table_report import build_table_report
    from qrdistill.io import atomic_write_json
    from qrdistill.stages import pipeline
    from qrdistill.stages.generate import run_dir_lock

    root = Path(root)
    seeds = chosen_seeds(table, only_seeds)
    status: dict[str, dict[int, str]] = {}
    with run_dir_lock(root, "table"):
        if import_from is not None:
            import_results(table, root, Path(import_from))
        data_done: set[str] = set()
        for name, cfg in table.rows.items():
            row_dir = root / name
            fps = {s: seed_fingerprint(cfg, s) for s in seeds}
            pending = [s for s in seeds if not is_finished(row_dir / pipeline.SEED_DIR.format(s), fps[s])]
            status[name] = {s: ("skipped (finished)" if s not in pending else "ran") for s in seeds}
            if not pending:
                log.info("table: row %s: seeds %s finished earlier, skipped", name, ", ".join(map(str, seeds)))
                continue
            data_stages = [s for s in cfg.stages if s in DATA_STAGES]
            if data_stages:
                key = data_key(cfg)
                data_dir = root / DATA_DIR / key
                if key not in data_done:
                    log.info("table: row %s: %s in %s", name, " + ".join(data_stages), data_dir)
                    _run_data(cfg, data_stages, data_dir)
                    data_done.add(key)
                with run_dir_lock(row_dir, "table"):
                    pipeline.share_data(data_dir, row_dir)
                    atomic_write_json(row_dir / ROW_MARKER, {"data_dir": str(data_dir.relative_to(root))})
            seed_cfg = cfg.model_copy(update={"stages": [s for s in cfg.stages if s in SEED_STAGES],
                                              "run_dir": str(row_dir), "seeds": None})
            first = row_dir / pipeline.SEED_DIR.format(table.seeds[0])
            for s in pending:
                sub = row_dir / pipeline.SEED_DIR.format(s)
                log.info("table: row %s, seed %d (%s)", name, s, sub)
                with run_dir_lock(sub, "table"):
                    marker = _begin(sub, name, s, fps[s])
                    if sub != first:
                        # Greedy base models answer alike in every seed: evaluate reuses the rows whose keys match.
                        pipeline.seed_base_predictions(first, sub)
                t0 = time.perf_counter()
                pipeline.run(seed_cfg, row_dir, seeds=[s])
                with run_dir_lock(sub, "table"):
                    _finish(sub, marker, time.perf_counter() - t0)
        report = build_table_report(table, root)
    log.info("table: %s", report["report"])
    report["status"] = status
    return report
