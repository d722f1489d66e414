"""Model export: each trained student's LoRA adapter merged into its base, as a plain transformers folder.

`export_models(D, O)` reads D/train/summary.json (written last by `qrdistill train`) and, for each student it
records (or those named), loads the base model (`qrdistill.models.resolve_model`: registry names such as
gemma3-270m become local folders), applies the adapter in D/train/adapters/<name> with PEFT and folds it into
the weights (`merge_and_unload`). O/<student>/ then holds

- config.json, generation_config.json and the merged weights as safetensors, in the base's dtype;
- the tokenizer the student was trained with (saved beside its adapter; the base's otherwise), with its chat
  template, and the base's SentencePiece model (tokenizer.model) where it has one: llama.cpp's GGUF
  converter reads that file for SentencePiece vocabularies (Llama 2, Gemma);
- export.json: the base, the adapter's sha256 digest, the training's fingerprint and the git SHAs of the
  training and of this export.

`AutoModelForCausalLM.from_pretrained(O/<student>)` loads it without PEFT, and its logits are those of the
base with the adapter (tests/test_export_model.py). Only adapters that a finished training recorded are
merged: the summary's sha256 of each adapter must match the files (`qrdistill.train.artifacts`), as evaluate
requires. The base is merged in float32 and cast back to its own dtype (a bf16 base is saved as bf16).

Each student is written into a temporary sibling of O/<student> and swapped in by rename, so a killed export
leaves the previous export (or nothing), never half a model. An O/<student> that is not a previous model
export (no export.json saying so) is refused rather than replaced: it may be a user's folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError, MissingArtifactError, QRDistillError
from qrdistill.export import staged_dir

log = logging.getLogger(__name__)

MANIFEST_FILE = "export.json"
MANIFEST_FORMAT = 1
#: Tokenizer files a base may have that `save_pretrained` of a tokenizer loaded from tokenizer.json does not
#: write again; llama.cpp's converter needs tokenizer.model for SentencePiece vocabularies.
BASE_TOKENIZER_FILES = ("tokenizer.model",)


@dataclass
class TrainedStudent:
    name: str
    model: str
    adapter: Path
    digest: dict[str, str] | None


def trained_students(run_dir: Path, names: list[str] | None = None) -> tuple[dict[str, Any], list[TrainedStudent]]:
    """The finished training's summary and its students (all, or `names` in that order), each with the
    adapter the summary vouches for. One clear QRDistillError when there is none to export."""
    from qrdistill.train.artifacts import SUMMARY_FILE, adapter_dir, check_training, has_traces

    train_dir = run_dir / "train"
    summary_file = train_dir / SUMMARY_FILE
    if not summary_file.is_file():
        if has_traces(train_dir):
            raise DataError(f"{train_dir}: the training there has not finished (no {SUMMARY_FILE}); run "
                            "`qrdistill train` to finish it, then export")
        raise MissingArtifactError(f"{summary_file} not found: run `qrdistill train` first (export merges the "
                                   "adapters a finished training recorded)")
    summary, why = check_training(train_dir, [])
    if summary is None:
        raise DataError(f"{why}; run `qrdistill train` to train again")
    entries = {st.get("name"): st for st in summary["students"] if isinstance(st, dict)}
    trained = [n for n in entries if isinstance(n, str)]
    wanted = list(dict.fromkeys(names)) if names else trained
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise ConfigError(f"--students {' '.join(unknown)}: not a student of the training in {train_dir} "
                          f"(it trained: {', '.join(trained) or 'none'})")
    summary, why = check_training(train_dir, wanted)
    if summary is None:
        raise DataError(f"{why}; export merges only the adapters a finished training wrote: run "
                        "`qrdistill train` to train them again")
    digests = summary.get("adapters")
    if digests is None:
        log.warning("%s predates adapter checksums: the adapters cannot be checked against it", summary_file)
    out = []
    for name in wanted:
        model = entries[name].get("model")
        if not isinstance(model, str) or not model:
            raise DataError(f"{summary_file}: student {name} has no base model recorded")
        folder = adapter_dir(train_dir / "adapters" / name)
        if folder is None:
            raise MissingArtifactError(f"{train_dir / 'adapters' / name}: no adapter (adapter_config.json) for "
                                       f"student {name}; run `qrdistill train` to train it again")
        out.append(TrainedStudent(name, model, folder, digests.get(name) if isinstance(digests, dict) else None))
    return summary, out


def export_models(run_dir: Path, out: Path, students: list[str] | None = None) -> dict[str, Any]:
    """Merge each trained student (all, or `students`) into its base under out/<student>/."""
    run_dir, out = Path(run_dir), Path(out)
    summary, todo = trained_students(run_dir, students)
    for st in todo:
        check_dest(out / st.name)
    results = {}
    for st in todo:
        results[st.name] = merge_student(st, summary, out / st.name)
    return {"out": str(out), "students": results}


def check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise QRDistillError(f"{dest}: is a file; remove it or give another --out")
    if dest.is_dir() and any(dest.iterdir()) and not is_model_export(dest):
        raise QRDistillError(f"{dest}: the directory is not empty and is not a previous model export (no "
                             f"{MANIFEST_FILE}); the export replaces it whole, so remove it or give another --out")


def is_model_export(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("what") == "model"


def merge_student(st: TrainedStudent, summary: dict[str, Any], dest: Path) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from qrdistill.models import quiet_peft_wrap, resolve_model

    t0 = time.monotonic()
    try:
        path = resolve_model(st.model)
    except ConfigError as e:
        raise ConfigError(f"student {st.name}: cannot load its base model {st.model!r}: {e}") from None
    try:
        save_dtype = _config_dtype(AutoConfig.from_pretrained(path)) or torch.float32
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"student {st.name}: cannot load its base model {st.model!r} ({_first_line(e)})") from None
    try:
        with quiet_peft_wrap():
            peft_model = PeftModel.from_pretrained(base, str(st.adapter))
    except Exception as e:  # noqa: BLE001 -- whatever PEFT or safetensors raise, the cause is this folder
        raise DataError(f"{st.adapter}: cannot apply the adapter of student {st.name} to {st.model!r} "
                        f"({_first_line(e)})") from None
    peft_model.eval()
    try:
        # safe_merge: an adapter with NaN/inf weights is refused instead of silently poisoning the model.
        merged = peft_model.merge_and_unload(safe_merge=True)
    except ValueError as e:
        raise DataError(f"{st.adapter}: the adapter of student {st.name} cannot be merged ({_first_line(e)})"
                        ) from None
    if save_dtype != torch.float32 and save_dtype.is_floating_point:
        merged = merged.to(save_dtype)
    tokenizer = _tokenizer(st, path)
    info = {
        "format": MANIFEST_FORMAT,
        "what": "model",
        "student": st.name,
        "base": st.model,
        "base_path": str(path),
        "adapter": str(st.adapter),
        "adapter_digest": st.digest,
        "dtype": str(save_dtype).removeprefix("torch."),
        "method": summary.get("method"),
        "training_fingerprint": summary.get("fingerprint"),
        "training_git_sha": summary.get("git_sha"),
    }
    info |= provenance()
    write_model(dest, merged, tokenizer, path, info)
    seconds = round(time.monotonic() - t0, 2)
    log.info("export model: %s merged into %s -> %s (%.1fs)", st.name, st.model, dest, seconds)
    return {"path": str(dest), "base": st.model, "adapter_digest": st.digest, "dtype": info["dtype"],
            "seconds": seconds}


def _tokenizer(st: TrainedStudent, base_path: str) -> Any:
    from transformers import AutoTokenizer

    # Training saves its tokenizer beside the adapter (with the pad token it set); older runs did not.
    source = str(st.adapter) if (st.adapter / "tokenizer_config.json").is_file() else base_path
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"student {st.name}: cannot load its tokenizer from {source} ({_first_line(e)})"
                          ) from None


def _config_dtype(config: Any) -> Any:
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _base_file(base_path: str, name: str) -> Path | None:
    """`name` from the base model: its folder, or the HF cache for a hub id (never a download)."""
    local = Path(base_path) / name
    if local.is_file():
        return local
    if Path(base_path).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(base_path, name)
    except Exception:  # noqa: BLE001 -- not a repo id: there is nothing to copy
        return None
    return Path(found) if isinstance(found, str) else None


def provenance() -> dict[str, Any]:
    import datetime

    from qrdistill import __version__
    from qrdistill.io import git_sha

    return {"git_sha": git_sha(), "qrdistill_version": __version__,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_model(dest: Path, model: Any, tokenizer: Any, base_path: str, info: dict[str, Any]) -> None:
    """Save into a temporary sibling of `dest`, then swap it in by rename."""
    with staged_dir(dest, str(dest), "the merged model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in BASE_TOKENIZER_FILES:
            src = _base_file(base_path, name)
            if src is not None and not (tmp / name).exists():
                shutil.copyfile(src, tmp / name)
        (tmp / MANIFEST_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
