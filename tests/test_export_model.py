"""`qrdistill export --what model`: trained adapters merged into their bases, on a real tiny training run.

The merged model's logits must be those of the base with the adapter applied by PEFT, for both tiny students
(a Llama with byte-level BPE and a GPT-2 whose LoRA sits in a fan-in/fan-out Conv1D), and it must load with
plain `AutoModelForCausalLM`. The adapters are checked to be non-trivial (LoRA B non-zero, logits moved), so a
merge that drops the adapter fails the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import make_filtered, tiny_config

from qrdistill.errors import ConfigError, DataError, MissingArtifactError, QRDistillError
from qrdistill.export.model import export_models
from qrdistill.stages import export as export_stage

PROMPTS = [
    "Question: Today is 03/15/2021. What is the date one week from today?",
    "Jane has 12 apples and buys 30 more.",
    "The answer is",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, models, one_thread) -> Path:
    """A finished training of both tiny students (real generate + filter + train stages)."""
    from qrdistill.stages import train as train_stage

    run_dir = tmp_path_factory.mktemp("run")
    make_filtered(run_dir, limit=3)
    train_stage.run(tiny_config(run_dir, models, epochs=1), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "model"
    return out, export_models(trained, out)


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "train", run_dir / "train", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    return run_dir


def _logits(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0]


def test_merged_logits_equal_base_plus_adapter_and_load_without_peft(trained, exported, models):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = exported
    summary = json.loads((trained / "train" / "summary.json").read_text())
    assert set(result["students"]) == {"llama", "gpt2"}
    for name, base_path in zip(["llama", "gpt2"], models, strict=True):
        adapter = trained / "train" / "adapters" / name
        lora_b = [t for k, t in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
        assert lora_b and all(t.abs().max() > 0 for t in lora_b), f"{name}: training left LoRA B at zero"

        tok = AutoTokenizer.from_pretrained(base_path)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
        before = [_logits(base, tok, p) for p in PROMPTS]
        peft = PeftModel.from_pretrained(base, str(adapter)).eval()
        with_adapter = [_logits(peft, tok, p) for p in PROMPTS]
        moved = max((a - b).abs().max().item() for a, b in zip(with_adapter, before, strict=True))
        assert moved > 1e-3, f"{name}: the adapter does not change the logits ({moved})"

        dest = out / name
        merged = AutoModelForCausalLM.from_pretrained(str(dest)).eval()
        assert not any("lora" in k for k in merged.state_dict()), "merged model still has LoRA layers"
        assert merged.dtype == torch.float32
        merged_tok = AutoTokenizer.from_pretrained(str(dest))
        for p, want in zip(PROMPTS, with_adapter, strict=True):
            assert merged_tok(p)["input_ids"] == tok(p)["input_ids"]
            got = _logits(merged, merged_tok, p)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

        assert (dest / "model.safetensors").is_file() and (dest / "generation_config.json").is_file()
        info = json.loads((dest / "export.json").read_text())
        assert info["what"] == "model" and info["student"] == name and info["base"] == base_path
        assert info["adapter_digest"] == summary["adapters"][name]
        assert info["training_fingerprint"] == summary["fingerprint"] and "git_sha" in info
        assert result["students"][name]["path"] == str(dest)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.suffix != ".lock"], \
        "temporary folders left behind"


def test_stage_exports_named_students_and_replaces_previous_export(trained, tmp_path):
    out = tmp_path / "o"
    first = export_stage.run(trained, "model", out=out, students=["gpt2"])
    assert list(first["students"]) == ["gpt2"] and sorted(p.name for p in out.iterdir()) == [".gpt2.lock", "gpt2"]
    mtime = (out / "gpt2" / "export.json").stat().st_mtime_ns
    export_stage.run(trained, "model", out=out, students=["gpt2", "gpt2"])
    assert sorted(p.name for p in out.iterdir()) == [".gpt2.lock", "gpt2"]
    assert (out / "gpt2" / "export.json").stat().st_mtime_ns != mtime


def test_default_out_is_under_the_run_dir(trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    export_stage.run(run_dir, "model", students=["gpt2"])
    assert (run_dir / "export" / "model" / "gpt2" / "model.safetensors").is_file()


def test_no_finished_training(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(MissingArtifactError, match=r"train/summary\.json not found: run `qrdistill train`"):
        export_models(run_dir, tmp_path / "o")
    (run_dir / "train").mkdir()
    (run_dir / "train" / "log.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="has not finished"):
        export_models(run_dir, tmp_path / "o")


def test_unknown_student(trained, tmp_path):
    with pytest.raises(ConfigError, match=r"--students nope: not a student of .*it trained: llama, gpt2"):
        export_models(trained, tmp_path / "o", students=["llama", "nope"])
    assert not (tmp_path / "o").exists()


def test_changed_adapter_is_refused(trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    weights = run_dir / "train" / "adapters" / "llama" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match=r"adapter_model\.safetensors differ\(s\) from what .*summary\.json records"):
        export_models(run_dir, tmp_path / "o", students=["llama"])
    export_models(run_dir, tmp_path / "o", students=["gpt2"])  # the other student is still fine
    shutil.rmtree(run_dir / "train" / "adapters" / "llama")
    with pytest.raises(DataError, match="differ"):
        export_models(run_dir, tmp_path / "o", students=["llama"])


def test_adapter_of_another_base_is_refused(trained, tmp_path, models):
    run_dir = _copy_run(trained, tmp_path)
    summary_file = run_dir / "train" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["students"][0]["model"] = models[1]  # the llama adapter on the GPT-2 base
    summary_file.write_text(json.dumps(summary))
    with pytest.raises(DataError, match=r"adapters/llama: cannot apply the adapter of student llama to"):
        export_models(run_dir, tmp_path / "o", students=["llama"])


def test_a_user_folder_is_not_replaced(trained, tmp_path):
    out = tmp_path / "o"
    (out / "gpt2").mkdir(parents=True)
    (out / "gpt2" / "notes.txt").write_text("mine")
    with pytest.raises(QRDistillError, match=r"o/gpt2: the directory is not empty and is not a previous model"):
        export_models(trained, out, students=["gpt2"])
    assert (out / "gpt2" / "notes.txt").read_text() == "mine"


def test_a_bf16_base_is_merged_in_float32_and_saved_as_bf16(trained, tmp_path, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base16 = tmp_path / "gpt2-bf16"
    AutoModelForCausalLM.from_pretrained(models[1], dtype=torch.bfloat16).save_pretrained(str(base16))
    AutoTokenizer.from_pretrained(models[1]).save_pretrained(str(base16))
    run_dir = _copy_run(trained, tmp_path)
    summary_file = run_dir / "train" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["students"][1]["model"] = str(base16)
    summary_file.write_text(json.dumps(summary))
    result = export_models(run_dir, tmp_path / "o", students=["gpt2"])
    assert result["students"]["gpt2"]["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "o" / "gpt2"))
    assert merged.dtype == torch.bfloat16
