"""Training checkpoints: everything needed to continue a run exactly.

Layout of D/train/checkpoints/step-N/:
  state.pt        trainable tensors of every student, router, mutual head, optimizer,
                  scheduler, grad scaler, data position (epoch, micro-batch), counters
  rng-<rank>.pt   python / numpy / torch (CPU and CUDA) RNG states of each rank
  adapters/<student>/  PEFT save_pretrained of each adapter (for users; resume reads state.pt)
  checkpoint.json step, epoch, position, world size, time (human-readable)
  manifest.json   sha256 of every other file, written last

A checkpoint is written into `.step-N.tmp/` and renamed when complete, so a
process killed while saving never leaves a checkpoint that looks finished; the
manifest catches what the rename cannot (a file damaged or edited later, a disk
that lost unsynced data). `load_checkpoint` refuses a checkpoint that does not
match its manifest; the loop then falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_DIR = re.compile(r"^\.step-(\d+)\.tmp$")
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    """Flush every file, then the folders, so that the rename publishing a checkpoint publishes its data too."""
    for p in [*sorted(root.rglob("*"), reverse=True), root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain Python values, so that `torch.load(weights_only=True)` reads it
    back: a checkpoint in someone else's run directory is data, never code to unpickle."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Every `step-N` folder under `root`, oldest first, damaged ones included (`load_checkpoint` judges them)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    accelerator, root: Path, step: int, state: dict[str, Any], students: list, keep: int, info: dict[str, Any]
) -> Path:
    """Collective: every rank calls it (each saves its RNG state); rank 0 writes the rest."""
    import torch

    root = Path(root)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if main:
        torch.save(state, tmp / "state.pt")
        for student in students:
            student.save_adapter(tmp / "adapters" / student.name)
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise DataError unless every file the manifest lists is there with its checksum.

    A checkpoint without a manifest was written before checksums existed; loading its state.pt is then the only
    check (a damaged one fails there)."""
    from qrdistill.errors import DataError

    manifest = path / MANIFEST
    if not manifest.exists():
        if not (path / "state.pt").is_file():
            raise DataError(f"{path}: damaged checkpoint (no state.pt)")
        return
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict) or "state.pt" not in files:
            raise ValueError("no state.pt listed")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: damaged checkpoint ({MANIFEST} unreadable: {e})") from None
    for rel, digest in files.items():
        f = path / rel
        if not f.is_file():
            raise DataError(f"{path}: damaged checkpoint ({rel} is missing)")
        if sha256_file(f) != digest:
            raise DataError(f"{path}: damaged checkpoint ({rel} does not match its checksum in {MANIFEST})")


def load_checkpoint(path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state, this rank's RNG state or None when the checkpoint was saved by fewer ranks).

    DataError when the checkpoint is damaged or holds more than tensors and plain values."""
    import pickle

    import torch

    from qrdistill.errors import DataError

    verify_checkpoint(path)
    rng_file = path / f"rng-{rank}.pt"
    try:
        # weights_only: tensors, containers and numbers only; a file that needs more is refused, not executed.
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.exists() else None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: checkpoint holds something other than tensors and plain values, or is "
                        f"damaged; it is not loaded ({str(e).splitlines()[0]}). Delete it to train from the "
                        "previous checkpoint or from the start.") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DataError(f"{path}: state.pt is not a qrdistill training state; it is not loaded")
    return state, rng
