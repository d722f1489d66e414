"""Export stage: hand a finished run to other tools.

`qrdistill export --run-dir D --what dataset|model|gguf [--out O]`:

- `dataset`: the kept (or, with `all_paths`, every filtered) reasoning path as an HF `datasets` folder and
  JSONL with a dataset card (`qrdistill.export.dataset`), optionally pushed to the Hub;
- `model`: each trained student's adapter merged into its base, saved as safetensors with its tokenizer
  (`qrdistill.export.model`);
- `gguf`: each merged student converted to a GGUF file by llama.cpp's own converter
  (`qrdistill.export.gguf`).

The run directory is only read; everything is written under O (default D/export/<what>).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qrdistill.errors import QRDistillError

log = logging.getLogger(__name__)


def run(
    run_dir: str | Path,
    what: str,
    out: str | Path | None = None,
    all_paths: bool = False,
    push_to_hub: str | None = None,
    students: list[str] | None = None,
    quant: str = "f16",
) -> dict[str, Any]:
    # A flag for another kind of export would be silently ignored: refuse it instead.
    misplaced = [flag for flag, given, kinds in [
        ("--all-paths", all_paths, ("dataset",)),
        ("--push-to-hub", push_to_hub is not None, ("dataset",)),
        ("--students", students is not None, ("model", "gguf")),
        ("--quant", quant != "f16", ("gguf",)),
    ] if given and what not in kinds]
    if misplaced:
        raise QRDistillError(f"{', '.join(misplaced)}: not an option of --what {what}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise QRDistillError(f"--run-dir {run_dir}: no such run directory")
    out = Path(out) if out is not None else run_dir / "export" / what
    if what == "dataset":
        from qrdistill.export.dataset import export_dataset

        result = export_dataset(run_dir, out, all_paths=all_paths, push_to_hub=push_to_hub)
    elif what == "model":
        from qrdistill.export.model import export_models

        result = export_models(run_dir, out, students=students)
    elif what == "gguf":
        from qrdistill.export.gguf import export_gguf

        result = export_gguf(run_dir, out, students=students, outtype=quant)
    else:
        raise QRDistillError(f"--what {what!r}: expected dataset, model or gguf")
    log.info("export %s: %s", what, out)
    return result
