"""lm-eval stage: lm-evaluation-harness's number for an exported student, on the project's local files.

`qrdistill lm-eval --model D/export/model/gemma --data-dir ../shared/data --out O [--tasks bbh_date,gsm8k]
[--limit N]` writes lm_eval task YAMLs reading the local files (lm_eval's own BBH Date / GSM8K
definitions, `qrdistill.lmeval.bridge`) to O/tasks/, runs `lm_eval.simple_evaluate` on the model and
writes O/results.json and O/samples_<task>.jsonl. `--write-tasks DIR` only writes the YAMLs and prints
the equivalent `lm_eval` command. Needs the `lmeval` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError

log = logging.getLogger(__name__)


def run(
    data_dir: str | Path,
    model: str | None = None,
    out: str | Path | None = None,
    tasks: str | list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
    write_tasks_to: str | Path | None = None,
) -> dict[str, Any]:
    from qrdistill.lmeval.bridge import evaluate_model, lm_eval_command, parse_tasks, write_tasks

    parse_tasks(tasks)  # an unknown task name is reported before anything else
    if write_tasks_to is not None:
        written = write_tasks(data_dir, write_tasks_to, tasks)
        command = lm_eval_command(model or "<model dir>", Path(write_tasks_to).resolve(), list(written),
                                  limit=limit, device="cpu", dtype="float32", batch_size=batch_size)
        log.info("wrote %s to %s; run them with:\n  %s", ", ".join(written), write_tasks_to, command)
        return {"tasks": written, "command": command}
    if model is None:
        raise ConfigError("--model: give the model directory to evaluate (or --write-tasks DIR to only "
                          "write the task files)")
    if out is None:
        raise ConfigError("--out: give a directory for the results")
    return evaluate_model(_model_dir(model), data_dir, out, tasks=tasks, limit=limit, batch_size=batch_size,
                          device=device, dtype=dtype, max_gen_toks=max_gen_toks,
                          apply_chat_template=apply_chat_template)


def _model_dir(model: str) -> Path:
    """A directory as given, else a model name qrdistill resolves offline (gemma3-270m, smollm2-135m)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from qrdistill.models import resolve_model

    resolved = Path(resolve_model(model))
    if not resolved.is_dir():
        raise ConfigError(f"--model {model}: no such directory, nor a model name qrdistill knows "
                          "(lm-eval runs offline: give an exported model directory)")
    return resolved
