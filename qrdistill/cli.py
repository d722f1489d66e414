"""Command line: `qrdistill <stage> [--config C.yaml] [--run-dir D] ...`.

Each stage is a pure function `qrdistill.stages.<stage>.run(cfg, ...)`; this
module only parses arguments, loads the config and reports errors cleanly.
"""

from __future__ import annotations

import argparse
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
    return key.strip(), yaml.safe_load(value)


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

    for name, help_ in [
        ("generate", "Ask the teacher for reasoning paths in every style"),
        ("filter", "Keep paths with a correct answer that the judge marks valid"),
        ("train", "Train the students jointly with routing and mutual distillation"),
        ("evaluate", "Zero-shot CoT evaluation of base and trained students"),
        ("run", "Run every stage in order (each resumes where it stopped)"),
    ]:
        sp = sub.add_parser(name, help=help_)
        common(sp)
        if name in ("generate", "filter", "evaluate", "run"):
            sp.add_argument("--limit", type=int, help="Cap the number of questions per task")
        if name in ("train", "run"):
            sp.add_argument("--max-steps", type=int, help="Cap the number of optimizer steps")
            sp.add_argument("--resume", action="store_true", help="Continue from the last checkpoint")
        if name == "run":
            sp.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                            help="Train and evaluate once per seed, in <run_dir>/seed-<s>/ (overrides `seeds`)")
    sp = sub.add_parser("analyze", help="Tables, routing plots and a report from saved logs")
    sp.add_argument("--run-dir", "-d", action="append", dest="run_dirs", help="Run directory (repeatable)")
    sp.add_argument("--config", "-c", help="YAML run config (its run_dir is analyzed)")
    sp.add_argument("--out", "-o", help="Report directory (default: <first run dir>/report)")
    sp.add_argument("--verbose", "-v", action="store_true")
    return p


def _stage(name: str):
    return importlib.import_module(f"qrdistill.stages.{name}")


def dispatch(args: argparse.Namespace) -> Any:
    from qrdistill.config import load_config

    if args.command == "analyze":
        run_dirs = list(args.run_dirs or [])
        if args.config or not run_dirs:
            run_dirs.append(load_config(args.config).run_dir)
        return _stage("analyze").run([Path(d) for d in run_dirs], out=Path(args.out) if args.out else None)

    overrides = dict(args.overrides)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = load_config(args.config, overrides)
    run_dir = Path(cfg.run_dir)
    opts: dict[str, Any] = {}
    if getattr(args, "limit", None) is not None:
        opts["limit"] = args.limit
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


def main(argv: list[str] | None = None) -> int:
    from qrdistill.errors import QRDistillError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party chatter (HTTP request lines, HF warnings) is noise at INFO.
    for noisy in ("httpx", "openai", "urllib3", "filelock", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        dispatch(args)
    except QRDistillError as e:
        print(f"qrdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qrdistill: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
