"""lm-evaluation-harness on the project's local benchmark files.

`write_tasks(data_dir, out_dir)` writes lm_eval task YAMLs that read local
files instead of the Hugging Face hub. Each YAML `include`s lm_eval's own
task file (by absolute path into the installed package) and overrides only
the task name and where the data comes from, so the prompt, few-shot setup,
generation settings, filters and metrics are lm_eval's own, for whichever
lm_eval is installed:

- bbh_date: bbh_cot_zeroshot_date_understanding, on the project's Date test split (BIG-bench
  task.json, divided and option-shuffled by `qrdistill.tasks.bigbench`, written as BBH-style
  `input`/`target` rows); bbh_date_zeroshot: the same questions, bbh_zeroshot_date_understanding.
- gsm8k (5-shot from train.jsonl) and gsm8k_cot_zeroshot: lm_eval's own, on gsm8k/test.jsonl as is.
- bbh_date_student, gsm8k_student: lm_eval's cot-zeroshot scoring, but the prompt the project trains
  and evaluates students on (`qrdistill.prompting.student_prompt`), to tell the prompt's share of a
  gap between the two harnesses from the scoring's.

Every task reads its questions in the order the project's `evaluate` does, so `--limit N` in lm_eval
and `evaluate.limit: N` score the same N questions. `evaluate_model` runs `lm_eval.simple_evaluate` on
an HF model directory (a `qrdistill export --what model` student) and saves the results.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError, QRDistillError

log = logging.getLogger(__name__)

#: prefix of the task names written, so they never shadow lm_eval's own tasks.
PREFIX = "qrdistill_"
DATE_FILE = Path("bigbench_date") / "task.json"
GSM8K_DIR = Path("gsm8k")
DEFAULT_TASKS = ("bbh_date", "gsm8k")


@dataclass(frozen=True)
class LocalTask:
    key: str
    #: lm_eval's own task file, relative to lm_eval/tasks/
    base_yaml: str
    #: the project's task whose questions it reads
    project_task: str
    #: doc_to_text is the project's student prompt (else lm_eval's own)
    student_prompt: bool = False
    #: needs gsm8k/train.jsonl (its few-shot examples)
    needs_train: bool = False
    help: str = ""

    @property
    def name(self) -> str:
        return PREFIX + self.key


LOCAL_TASKS: dict[str, LocalTask] = {
    t.key: t
    for t in (
        LocalTask("bbh_date", "bbh/cot_zeroshot/date_understanding.yaml", "date",
                  help="lm_eval bbh_cot_zeroshot_date_understanding on the project's Date test split"),
        LocalTask("bbh_date_zeroshot", "bbh/zeroshot/date_understanding.yaml", "date",
                  help="lm_eval bbh_zeroshot_date_understanding (answer only, no reasoning)"),
        LocalTask("bbh_date_student", "bbh/cot_zeroshot/date_understanding.yaml", "date", student_prompt=True,
                  help="bbh_date's scoring, the project's student prompt"),
        LocalTask("gsm8k", "gsm8k/gsm8k.yaml", "gsm8k", needs_train=True,
                  help="lm_eval gsm8k (5-shot from gsm8k/train.jsonl)"),
        LocalTask("gsm8k_cot_zeroshot", "gsm8k/gsm8k-cot-zeroshot.yaml", "gsm8k",
                  help="lm_eval gsm8k_cot_zeroshot"),
        LocalTask("gsm8k_student", "gsm8k/gsm8k-cot-zeroshot.yaml", "gsm8k", student_prompt=True,
                  help="gsm8k_cot_zeroshot's scoring, the project's student prompt"),
    )
}


def import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise QRDistillError(
            "lm-evaluation-harness is not installed: pip install 'qrdistill[lmeval]'"
        ) from None
    return lm_eval


def parse_tasks(spec: str | list[str] | None) -> list[LocalTask]:
    """Task keys ("bbh_date,gsm8k", or a list; None = DEFAULT_TASKS) to LocalTasks, in order, once each."""
    if spec is None:
        keys = list(DEFAULT_TASKS)
    elif isinstance(spec, str):
        keys = [k.strip() for k in spec.split(",") if k.strip()]
    else:
        keys = [str(k).strip() for k in spec]
    if not keys:
        raise ConfigError("--tasks: name at least one task")
    out: list[LocalTask] = []
    for key in keys:
        task = LOCAL_TASKS.get(key.removeprefix(PREFIX))
        if task is None:
            raise ConfigError(f"--tasks: unknown task {key!r} (known: {', '.join(LOCAL_TASKS)})")
        if task not in out:
            out.append(task)
    return out


def write_tasks(data_dir: str | Path, out_dir: str | Path, tasks: str | list[str] | None = None) -> dict[str, Path]:
    """Write the task YAMLs (and the Date questions as BBH-style JSONL) for `tasks` into `out_dir`.

    `data_dir` holds `bigbench_date/task.json` and `gsm8k/{train,test}.jsonl` (the layout of
    ../shared/data). Returns {lm_eval task name: its YAML}; pass `out_dir` to lm_eval's
    `--include_path`.
    """
    lm_eval = import_lm_eval()
    selected = parse_tasks(tasks)
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such directory")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    lm_tasks = Path(lm_eval.__file__).parent / "tasks"
    files: dict[str, dict[str, str]] = {}
    written: dict[str, Path] = {}
    for task in selected:
        base = lm_tasks / task.base_yaml
        if not base.is_file():
            raise QRDistillError(
                f"{base}: lm_eval {getattr(lm_eval, '__version__', '?')} has no such task file; "
                "install the version qrdistill[lmeval] pins"
            )
        if task.project_task not in files:
            files[task.project_task] = _data_files(task.project_task, data_dir, out_dir)
        data_files = dict(files[task.project_task])
        if task.needs_train and "train" not in data_files:
            raise DataError(f"{data_dir / GSM8K_DIR / 'train.jsonl'}: file not found ({task.key} takes its "
                            "few-shot examples from it)")
        config: dict[str, Any] = {
            "include": str(base),
            "task": task.name,
            # lm_eval's `tag`s would list these local copies under its own tag names.
            "tag": ["qrdistill"],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files},
        }
        if task.student_prompt:
            config.update(_student_prompt_fields(task))
        path = out_dir / f"{task.name}.yaml"
        _write_yaml(path, config, f"qrdistill {task.key}: {task.help}")
        written[task.name] = path
    return written


def _data_files(project_task: str, data_dir: Path, out_dir: Path) -> dict[str, str]:
    """{split: absolute file} for one project task, checked by the project's own loader."""
    from qrdistill.io import atomic_write_jsonl
    from qrdistill.tasks import get_task

    task = get_task(project_task)
    if project_task == "date":
        source = data_dir / DATE_FILE
        records = task.load("test", str(source))
        rows = [{"input": task.prompt(r), "target": f"({r.answer})", "qid": r.id,
                 "question": r.question} for r in records]
        target = out_dir / "bbh_date_test.jsonl"
        atomic_write_jsonl(target, rows)
        return {"test": str(target)}
    gsm = data_dir / GSM8K_DIR
    test = gsm / "test.jsonl"
    # The project's loader reads the same file in the same order; loading it here turns a bad row
    # into one message naming its line instead of a traceback from inside lm_eval.
    task.load("test", str(test))
    out = {"test": str(test)}
    train = gsm / "train.jsonl"
    if train.is_file():
        task.load("train", str(train))
        out["train"] = str(train)
    return out


def _student_prompt_fields(task: LocalTask) -> dict[str, Any]:
    from qrdistill.prompting import STUDENT_TEMPLATE
    from qrdistill.tasks import get_task

    instruction = get_task(task.project_task).answer_instruction
    # `input` is already task.prompt(record); GSM8K's raw `question` is stripped as the project does.
    field = "input" if task.project_task == "date" else "question"
    text = STUDENT_TEMPLATE.format(question="{{" + field + " | trim}}", instruction=instruction)
    return {"description": "", "doc_to_text": text}


def _write_yaml(path: Path, config: dict[str, Any], comment: str) -> None:
    import yaml

    from qrdistill.io import atomic_write_text

    header = (f"# {comment}\n# Written by qrdistill.lmeval.write_tasks with absolute paths: write it again "
              "(`qrdistill lm-eval --write-tasks DIR`) after moving the data or reinstalling lm_eval.\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------- running lm_eval


def lm_eval_command(model_dir: str | Path, tasks_dir: str | Path, task_names: list[str], *, limit: int | None,
                    device: str, dtype: str, batch_size: int, out: str | Path | None = None,
                    max_gen_toks: int | None = None, apply_chat_template: bool = False) -> str:
    """The plain `lm_eval` command line equivalent to `evaluate_model`."""
    parts = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype={dtype}",
             "--device", device, "--batch_size", str(batch_size), "--include_path", str(tasks_dir),
             "--tasks", ",".join(task_names)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if max_gen_toks is not None:
        parts += ["--gen_kwargs", f"max_gen_toks={max_gen_toks}"]
    if apply_chat_template:
        parts.append("--apply_chat_template")
    if out is not None:
        parts += ["--output_path", str(out), "--log_samples"]
    return " ".join(shlex.quote(p) for p in parts)


def evaluate_model(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    tasks: str | list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
) -> dict[str, Any]:
    """lm_eval on the HF model in `model_dir` over the local `tasks`; writes to `out`:

    - tasks/: the task YAMLs (rerun them with the `lm_eval` command in results.json),
    - results.json: lm_eval's results (metrics per filter, n-samples, configs, versions) and a
      `qrdistill` block (command, data, limit, seconds),
    - samples_<task>.jsonl: every question's doc, prompt (`arguments`), response and filtered answer.

    Returns {"results": path, "summary": {task: {"n": N, "<metric>,<filter>": value}}, ...}.
    """
    lm_eval = import_lm_eval()
    from lm_eval.tasks import TaskManager

    from qrdistill.evaluation.generation import resolve_device

    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model {model_dir}: not a Hugging Face model directory (no config.json); "
                          "export a student with `qrdistill export --what model`")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: expected a number of at least 1, got {limit}")
    out = Path(out).expanduser().resolve()
    written = write_tasks(data_dir, out / "tasks", tasks)
    names = list(written)
    device = resolve_device(device)
    if dtype == "auto":
        # As evaluate: bf16 is slower than fp32 on CPU.
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    command = lm_eval_command(model_dir.resolve(), out / "tasks", names, limit=limit, device=device, dtype=dtype,
                              batch_size=batch_size, out=out / "lm_eval_cli", max_gen_toks=max_gen_toks,
                              apply_chat_template=apply_chat_template)
    log.info("lm_eval %s on %s (limit %s); the same from the shell:\n  %s", ",".join(names), model_dir,
             limit, command)
    started = time.monotonic()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir.resolve()), "dtype": dtype},
        tasks=names,
        limit=limit,
        batch_size=batch_size,
        device=device,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks is not None else None,
        task_manager=TaskManager(include_path=str(out / "tasks"), include_defaults=False),
    )
    seconds = time.monotonic() - started
    return save_results(results, out, command=command, data_dir=data_dir, limit=limit, seconds=seconds)


def save_results(results: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    from lm_eval.utils import handle_non_serializable

    from qrdistill.io import atomic_write_text

    samples = results.pop("samples", {}) or {}
    summary = summarize(results)
    results["qrdistill"] = {**{k: str(v) if isinstance(v, Path) else v for k, v in extra.items()},
                            "summary": summary}
    path = out / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    sample_files = {}
    for name, rows in samples.items():
        target = out / f"samples_{name}.jsonl"
        atomic_write_text(target, "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n"
                                          for r in rows))
        sample_files[name] = target
    for name, cells in summary.items():
        log.info("%s (n=%d): %s", name, cells["n"],
                 ", ".join(f"{k} {v:.3f}" for k, v in cells.items() if k != "n" and isinstance(v, float)))
    return {"results": path, "samples": sample_files, "summary": summary}


def summarize(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {"n": questions scored, "exact_match,flexible-extract": 0.4, ...}} without stderr cells."""
    out: dict[str, dict[str, Any]] = {}
    n_samples = results.get("n-samples", {})
    for name, cells in results.get("results", {}).items():
        row: dict[str, Any] = {"n": int((n_samples.get(name) or {}).get("effective", 0))}
        for key, value in cells.items():
            if key in ("alias", "sample_len") or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            row[key] = float(value)
        out[name] = row
    return out
