"""Command line: `qrdistill <stage> [--config C.yaml] [--run-dir D] ...`.

Each stage is a pure function `qrdistill.stages.<stage>.run(cfg, ...)`; this
module only parses arguments, loads the config and reports errors cleanly.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from pathlib import Path
from typing import Any


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"--set {key.strip()}: not a YAML value ({str(e).splitlines()[0]})") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qrdistill", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", help="YAML run config (default: the built-in offline demo)")
        sp.add_argument("--run-dir", "-d", help="Run directory (default: run_dir from the config)")
        sp.add_argument(
            "--set", dest="overrides", action="append", type=_parse_override, default=[],
            metavar="KEY=VALUE", help="Override a config field, e.g. --set train.max_steps=10 (repeatable)",
        )
        sp.add_argument("--verbose", "-v", action="store_true", help="Debug logging")
        sp.add_argument("--force", action="store_true",
                        help="Use a run directory that is not empty and holds no qrdistill files (e.g. --run-dir .)")

    for name, help_ in [
        ("generate", "Ask the teacher for reasoning paths in every style"),
        ("filter", "Keep paths with a correct answer that the judge marks valid"),
        ("train", "Train the students jointly with routing and mutual distillation (a changed config beside a "
                  "finished training trains in <run_dir>/train.new/, which replaces train/ only once finished)"),
        ("evaluate", "Zero-shot CoT evaluation of base and trained students (adapters only as "
                     "train/summary.json records them)"),
        ("rl", "GRPO (TRL) on each distilled student from <run_dir>/train/adapters, rewards per rl.rewards; "
               "adapters in <run_dir>/rl/adapters, which evaluate scores as rl:<name> (needs the rl extra)"),
        ("run", "Run every stage in order (each resumes where it stopped)"),
    ]:
        sp = sub.add_parser(name, help=help_, description=help_)
        common(sp)
        if name in ("generate", "filter", "evaluate", "run"):
            sp.add_argument("--limit", type=_positive_int, help="Cap the number of questions per task")
        if name in ("generate", "filter"):
            sp.add_argument("--dry-run", action="store_true",
                            help="Print the calls that would be issued (stored ones excluded), the estimated "
                                 "input and output tokens and the projected cost; issue none")
        if name == "generate":
            sp.add_argument("--rebuild-store", action="store_true",
                            help="Ask the teacher again for every path when store.sqlite is empty but "
                                 "paths.jsonl is not (the store was lost; with a paid teacher this costs money)")
        if name in ("train", "run"):
            sp.add_argument("--max-steps", type=int, help="Cap the number of optimizer steps")
            sp.add_argument("--resume", action="store_true",
                            help="Continue from the last good checkpoint even if the config changed")
        if name == "run":
            sp.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                            help="Train and evaluate once per seed, in <run_dir>/seed-<s>/ (overrides `seeds`)")
    sp = sub.add_parser("export", help="Export a finished run: its reasoning data as a dataset, each student "
                                       "merged into its base, or each merged student as a GGUF file",
                        description="Export a finished run for other tools")
    sp.add_argument("--run-dir", "-d", required=True, help="Run directory to export from")
    sp.add_argument("--what", required=True, choices=["dataset", "model", "gguf"], help="What to export")
    sp.add_argument("--out", "-o", help="Output directory (default: <run dir>/export/<what>)")
    sp.add_argument("--all-paths", action="store_true",
                    help="dataset: every filtered path, kept or not (default: the kept paths)")
    sp.add_argument("--push-to-hub", metavar="REPO",
                    help="dataset: also push to this Hugging Face Hub repo (token from HF_TOKEN in the environment)")
    sp.add_argument("--students", nargs="+", metavar="NAME", help="model/gguf: only these students")
    sp.add_argument("--quant", default="f16",
                    help="gguf: output type (f32, f16, bf16, q8_0, or a llama.cpp quantisation type)")
    sp.add_argument("--verbose", "-v", action="store_true")
    sp = sub.add_parser(
        "table", help="Run every row x seed of a table config (resumable; finished rows are skipped), then write "
                      "one results table with paired tests against the reference and zero-shot rows",
        description="Every row x seed of a table config through the pipeline, into <run_dir>/<row>/seed-<s>/, "
                    "then <run_dir>/table/table.md (+ .csv, .json): mean and spread over seeds, paired interval "
                    "and McNemar p against the reference and zero-shot rows, wall time, routing figures",
    )
    sp.add_argument("--config", "-c", required=True, help="YAML table config (configs/tables/*.yaml)")
    sp.add_argument("--run-dir", "-d", help="Table directory (default: run_dir from the table config)")
    sp.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="Run only these of the table's seeds now (e.g. one seed per sitting); the report covers "
                         "every seed finished so far")
    move = sp.add_mutually_exclusive_group()
    move.add_argument("--export", metavar="DIR",
                      help="Run nothing: copy every finished row x seed's results (of --seeds if given; no "
                           "adapters, checkpoints or tracker logs) into DIR, a new folder or an earlier export it "
                           "replaces, to combine with seeds run elsewhere")
    move.add_argument("--import", dest="import_dir", metavar="DIR",
                      help="First copy the finished row x seeds of an --export folder that the table directory "
                           "lacks (run with this table config), then run the rest and write the report")
    sp.add_argument("--verbose", "-v", action="store_true", help="Debug logging")
    sp.add_argument("--force", action="store_true",
                    help="Use a table directory that is not empty and holds no qrdistill files")
    sp = sub.add_parser("analyze", help="Tables, routing plots and a report from saved logs")
    sp.add_argument("--run-dir", "-d", action="append", dest="run_dirs", help="Run directory (repeatable)")
    sp.add_argument("--config", "-c", help="YAML run config (its run_dir is analyzed)")
    sp.add_argument("--out", "-o", help="Report directory (default: <first run dir>/report)")
    sp.add_argument("--verbose", "-v", action="store_true")
    sp = sub.add_parser(
        "lm-eval",
        help="Score an exported student with lm-evaluation-harness on the local BBH Date / GSM8K files "
             "(needs the lmeval extra)",
        description="lm_eval's own BBH date_understanding and GSM8K tasks, reading local files: the questions "
                    "`qrdistill evaluate` scores, in its order (the same --limit gives the same questions)",
    )
    sp.add_argument("--model", "-m",
                    help="HF model directory (`qrdistill export --what model` output) or a model name qrdistill "
                         "resolves offline (gemma3-270m, smollm2-135m)")
    sp.add_argument("--data-dir", required=True,
                    help="Folder holding bigbench_date/task.json and gsm8k/{train,test}.jsonl (e.g. ../shared/data)")
    sp.add_argument("--tasks", default="bbh_date,gsm8k",
                    help="Comma-separated: bbh_date, bbh_date_zeroshot, bbh_date_student, gsm8k, "
                         "gsm8k_cot_zeroshot, gsm8k_student (default: bbh_date,gsm8k)")
    sp.add_argument("--limit", type=_positive_int, help="Score the first N questions of each task")
    sp.add_argument("--out", "-o", help="Results directory (results.json, samples_<task>.jsonl, tasks/)")
    sp.add_argument("--batch-size", type=_positive_int, default=8, help="lm_eval batch size (default 8)")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto = float32 on CPU, bfloat16 on CUDA")
    sp.add_argument("--max-gen-toks", type=_positive_int,
                    help="Generation limit per answer (default: lm_eval's, 256)")
    sp.add_argument("--apply-chat-template", action="store_true", help="Wrap prompts in the model's chat template")
    sp.add_argument("--write-tasks", metavar="DIR",
                    help="Only write the task YAMLs to DIR and print the `lm_eval` command that runs them")
    sp.add_argument("--verbose", "-v", action="store_true")
    return p


def _stage(name: str):
    return importlib.import_module(f"qrdistill.stages.{name}")


def dispatch(args: argparse.Namespace) -> Any:
    from qrdistill.config import load_config
    from qrdistill.io import check_run_dir

    if args.command == "export":
        return _stage("export").run(
            Path(args.run_dir), what=args.what, out=Path(args.out) if args.out else None,
            all_paths=args.all_paths, push_to_hub=args.push_to_hub, students=args.students, quant=args.quant,
        )
    if args.command == "lm-eval":
        return _stage("lmeval").run(
            Path(args.data_dir), model=args.model, out=Path(args.out) if args.out else None, tasks=args.tasks,
            limit=args.limit, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            max_gen_toks=args.max_gen_toks, apply_chat_template=args.apply_chat_template,
            write_tasks_to=Path(args.write_tasks) if args.write_tasks else None,
        )
    if args.command == "table":
        from qrdistill.config.table import load_table_config

        table = load_table_config(args.config, run_dir=args.run_dir)
        stage = _stage("table")
        stage.chosen_seeds(table, args.seeds)  # a bad --seeds is refused before the table directory exists
        if args.export:
            stage.export_results(table, Path(table.run_dir), Path(args.export), only_seeds=args.seeds)
            return 0
        return stage.run(table, check_run_dir(table.run_dir, force=args.force), only_seeds=args.seeds,
                         import_from=Path(args.import_dir) if args.import_dir else None)
    if args.command == "analyze":
        run_dirs = list(args.run_dirs or [])
        if args.config or not run_dirs:
            run_dirs.append(load_config(args.config).run_dir)
        return _stage("analyze").run([Path(d) for d in run_dirs], out=Path(args.out) if args.out else None)

    overrides = dict(args.overrides)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = load_config(args.config, overrides)
    # A dry run reads what is stored and writes nothing, not even the run directory or its lock.
    dry_run = getattr(args, "dry_run", False)
    run_dir = Path(cfg.run_dir) if dry_run else check_run_dir(Path(cfg.run_dir), force=args.force)
    opts: dict[str, Any] = {}
    if getattr(args, "limit", None) is not None:
        opts["limit"] = args.limit
    if dry_run:
        opts["dry_run"] = True
    if getattr(args, "rebuild_store", False):
        opts["rebuild_store"] = True
    train_opts = {}
    if getattr(args, "max_steps", None) is not None:
        train_opts["max_steps"] = args.max_steps
    if getattr(args, "resume", False):
        train_opts["resume"] = True

    if args.command == "run":
        return _stage("pipeline").run(cfg, run_dir, seeds=args.seeds, **opts, **train_opts)
    if args.command == "train":
        return _stage("train").run(cfg, run_dir, **train_opts)
    return _stage(args.command).run(cfg, run_dir, **opts)


#: OS errors a user's environment causes (a full disk, a read-only or foreign directory): one line, no
#: traceback, wherever they surface. Others (EBADF, EINVAL, ...) are bugs and keep their tracebacks.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                errno.ENAMETOOLONG}


def main(argv: list[str] | None = None) -> int:
    from qrdistill.errors import QRDistillError
    from qrdistill.io import RedactingFilter, redact_credentials

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # Third-party chatter (HTTP request lines, HF warnings) is noise at INFO.
    for noisy in ("httpx", "openai", "urllib3", "filelock", "transformers", "datasets", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        dispatch(args)
    except QRDistillError as e:
        print(f"qrdistill: error: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        # Readers name the file and line themselves; this is the net for one that does not.
        print(f"qrdistill: error: an input file is not UTF-8 text ({e.reason} at byte {e.start}); save it "
              f"as UTF-8", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"qrdistill: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qrdistill: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
