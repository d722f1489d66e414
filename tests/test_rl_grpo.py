"""The rl stage: GRPO (TRL's GRPOTrainer) on two tiny distilled students, end to end, killed and resumed.

A module fixture distils the two tiny students (real generate, filter and train stages); each test copies
that run directory. The kill test runs `qrdistill rl` in a subprocess with the `llm` step extractor on a
local OpenAI-compatible stub (tests/openai_stub.py), SIGKILLs it after a checkpoint and a step past it,
and checks through the store that the resumed run asked no reward-model call a second time.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_models import make_tiny_students
from train_helpers import (
    kill_when,
    make_filtered,
    qrdistill_cmd,
    subprocess_env,
    tiny_config,
    tiny_train_section,
    torchrun_cmd,
)

ROOT = Path(__file__).resolve().parents[1]

#: a short GRPO: 2 completions per question, short completions (the tiny students write noise)
#: LoRA dropout stays on: the tiny students' rewards are all 0, so dropout's KL is what gives them a gradient
TINY_RL = {"num_generations": 2, "questions_per_step": 1, "max_steps": 2, "max_completion_length": 12,
           "checkpoint_every": 1, "lr": 1e-2, "disable_dropout": False}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """(tiny model dirs, a run dir with a finished 2-step training of both students)."""
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("rl")
    models = make_tiny_students(base / "tiny")
    run_dir = base / "run"
    make_filtered(run_dir, limit=3)
    from qrdistill.stages import train as train_stage

    train_stage.run(tiny_config(run_dir, models, max_steps=2), run_dir)
    return models, run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def _config(run_dir: Path, models: list[str], rl: dict, **extra):
    from qrdistill.config import RunConfig

    return RunConfig.model_validate({"run_dir": str(run_dir), "train": tiny_train_section(models, max_steps=2),
                                     "rl": rl, **extra})  # fmt: skip


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------- no TRL needed


def test_rewards_read_the_dataset_columns_trl_passes(distilled):
    """The reward functions as TRL calls them (prompts, completions and each dataset column as a list, one
    value per completion): a question's own reference path scores 1 on every term, noise 0 with a reason."""
    from qrdistill.config.rl import RewardConfig
    from qrdistill.rl.data import choose_reference, training_questions
    from qrdistill.rl.grpo import BatchedExtractor, RewardLedger, TermReward, dataset_rows
    from qrdistill.rl.rewards import RewardContext
    from qrdistill.rl.steps_claims import ClaimsExtractor

    models, run_dir = distilled
    cfg = _config(run_dir, models, TINY_RL)
    questions = training_questions(cfg, run_dir)
    assert len(questions) >= 4 and {q.task for q in questions} == {"procedural_date", "procedural_arith"}
    refs = {q.qid: choose_reference(q, "llama", "any", 0) for q in questions}
    rows = dataset_rows(questions, refs)
    # every prompt is the one training used: the prompt of the question's training items
    assert [r["prompt"] for r in rows] == [q.paths[0].prompt for q in questions]
    # TRL repeats each row once per completion; the first completion is the reference itself
    cols = {k: [r[k] for r in rows for _ in range(2)] for k in rows[0]}
    completions = [x for r in rows for x in (r["reference"], "Mumble, no working here.")]
    prompts = cols.pop("prompt")
    ledger = RewardLedger()
    ctx = RewardContext(extractor=BatchedExtractor(ClaimsExtractor()))
    for term in RewardConfig().weights.model_dump():
        got = TermReward(term, ctx, ledger)(prompts=prompts, completions=completions, **cols, trainer_state=None)
        assert got[0::2] == [1.0] * len(rows), term  # kept paths: correct, an answer line, aligned
        assert got[1::2] == [0.0] * len(rows), term
    assert ledger.seconds > 0 and set(ledger.values) == {"correctness", "format", "structure"}
    assert sum(ledger.reasons["structure"].values()) == len(rows)  # each noise completion's 0 says why


def test_reference_choice_follows_the_routing_log(distilled):
    from collections import Counter

    from qrdistill.rl.data import choose_reference, read_routing, training_questions

    models, run_dir = distilled
    questions = training_questions(_config(run_dir, models, TINY_RL), run_dir)
    routed, probs = read_routing(run_dir / "train")
    sources = Counter()
    for q in questions:
        for name in ("llama", "gpt2"):
            ref = choose_reference(q, name, "routed", 0, routed, probs)
            sources[ref.source] += 1
            sent = [it for it in q.paths if routed[name][it.key] > 0]
            if sent:  # the most-routed of the paths the router sent this student
                assert ref.source == "routed" and ref.path in sent
                assert routed[name][ref.path.key] == max(routed[name][it.key] for it in sent)
            else:
                assert ref.source == "fallback" and ref.path in q.paths
        # `any` ignores routing: the same seeded draw for both students
        assert choose_reference(q, "llama", "any", 0).path == choose_reference(q, "gpt2", "any", 0).path
    assert sources["routed"] > 0  # a 2-step training leaves some questions unrouted: both cases are seen
    # a path the router sent more often wins over one it sent less often
    q = next(q for q in questions if len(q.paths) >= 2)
    a, b = q.paths[0], q.paths[1]
    fake = {"llama": Counter({a.key: 1, b.key: 2})}
    assert choose_reference(q, "llama", "routed", 0, fake, {}).path == b


def test_bad_rl_config_is_one_clear_error(tmp_path, distilled, monkeypatch):
    from qrdistill.cli import main
    from qrdistill.config import load_config
    from qrdistill.errors import ConfigError, MissingArtifactError
    from qrdistill.stages import rl as rl_stage

    models, run_dir = distilled
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  num_generations: 1\n  students: [llama, llama]\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert f"{bad}:2: config field rl.num_generations" in msg and "greater than or equal to 2" in msg
    assert f"{bad}:3: config field rl.students" in msg and "listed twice" in msg
    bad.write_text("rl:\n  rewards:\n    extractor: llm\n")
    with pytest.raises(ConfigError, match=r"rl\.rewards\.backend: .*needs a judge backend"):
        load_config(bad)
    # a student rl.students names must be one of train.students
    with pytest.raises(ConfigError, match=r"rl\.students: 'nope' is not a student of train\.students "
                                          r"\(students: llama, gpt2\)"):
        rl_stage.run(_config(run_dir, models, {**TINY_RL, "students": ["nope"]}), run_dir)
    # fewer training questions than one step takes: an error, not a 0-step run that passes for RL
    copy = _copy(run_dir, tmp_path / "few")
    with pytest.raises(ConfigError, match=r"rl\.questions_per_step: 1000 questions per step need at least 1000 "
                                          r"training questions; .*filtered\.jsonl has \d+ with a kept path"):
        rl_stage.run(_config(copy, models, {**TINY_RL, "questions_per_step": 1000}), copy)
    assert not (copy / "rl").exists()
    # before training: says which stage to run
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(run_dir / "filtered.jsonl", fresh / "filtered.jsonl")
    with pytest.raises(MissingArtifactError, match="run `qrdistill train` first"):
        rl_stage.run(_config(fresh, models, TINY_RL), fresh)
    # without TRL: how to get it
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "trl", None)
        with pytest.raises(ConfigError, match=r"pip install 'qrdistill\[rl\]'"):
            rl_stage.run(_config(run_dir, models, TINY_RL), run_dir)
    # the CLI prints one line, no traceback
    bad.write_text(yaml.safe_dump({"train": tiny_train_section(models), "rl": {"max_steps": 0}}))
    assert main(["rl", "--config", str(bad), "--run-dir", str(fresh)]) == 2


def test_rl_is_not_a_default_stage():
    from qrdistill.config import load_config

    cfg = load_config(None)
    assert "rl" not in cfg.stages and cfg.rl.rewards.reference == "routed"


# ---------------------------------------------------------------- GRPO on TRL


def test_grpo_two_students_end_to_end_adapters_reload_and_evaluate(tmp_path, distilled, caplog):
    pytest.importorskip("trl")
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from qrdistill.stages import evaluate as evaluate_stage
    from qrdistill.stages import rl as rl_stage

    models, src = distilled
    run_dir = _copy(src, tmp_path / "run")
    cfg = _config(run_dir, models, TINY_RL, evaluate={"max_new_tokens": 6, "batch_size": 8})
    summary = rl_stage.run(cfg, run_dir)
    assert list(summary["students"]) == ["llama", "gpt2"] and summary["seed"] == 0
    assert summary["config"]["num_generations"] == 2 and summary["git_sha"]
    for name, model_dir in zip(("llama", "gpt2"), models, strict=True):
        st = summary["students"][name]
        assert st["steps"] == 2 and st["terms"] == ["correctness", "format", "structure"]
        assert set(st["mean_rewards"]) == set(st["terms"]) and st["wall_per_step_s"] > 0
        assert 0 <= st["reward_share"] < 1 and sum(st["references"].values()) == st["questions"]
        rows = _rows(run_dir / "rl" / name / "log.jsonl")
        assert [r["step"] for r in rows] == [1, 2]
        assert all(set(r["rewards"]) == set(st["terms"]) and r["wall_s"] > r["reward_s"] >= 0 for r in rows)
        assert list((run_dir / "rl" / name / "tb").glob("events.out.tfevents.*"))
        # the adapter: PEFT's files, the `default` adapter only (not TRL's frozen `ref` copy), the distilled
        # adapter's tensors (RL continues that adapter), and it reloads onto the base as saved
        out = run_dir / "rl" / "adapters" / name
        saved = load_file(str(out / "adapter_model.safetensors"))
        distilled_weights = load_file(str(run_dir / "train" / "adapters" / name / "adapter_model.safetensors"))
        assert set(saved) == set(distilled_weights) and not any(".ref." in k for k in saved)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out))
        state = model.state_dict()
        loaded = {k: v for k, v in state.items() if "lora_" in k}
        assert len(loaded) == len(saved)
        for k, v in saved.items():
            match = [s for s in loaded if s.replace(".default", "") == k]
            assert len(match) == 1 and torch.equal(loaded[match[0]], v), k
    # the tiny students write noise: every reward is 0, so no group has an advantage, and the student without
    # LoRA dropout (no KL either) ends exactly where distillation left it: RL starts from the distilled adapter
    gpt2 = load_file(str(run_dir / "rl" / "adapters" / "gpt2" / "adapter_model.safetensors"))
    before = load_file(str(run_dir / "train" / "adapters" / "gpt2" / "adapter_model.safetensors"))
    assert all(torch.equal(gpt2[k], before[k]) for k in gpt2)
    assert (run_dir / "meta" / "rl.json").exists() and (run_dir / "rl" / "summary.json").exists()

    # a finished stage is skipped
    caplog.clear()
    with caplog.at_level("INFO"):
        again = rl_stage.run(cfg, run_dir)
    assert caplog.text.count("already trained with this config") == 2
    assert again["students"] == summary["students"]
    assert [r["step"] for r in _rows(run_dir / "rl" / "llama" / "log.jsonl")] == [1, 2]

    # evaluate shows each RL student beside its distilled one (same budget), compared with its base
    ev = evaluate_stage.run(cfg, run_dir, limit=1)
    keys = list(ev["students"])
    assert {"llama", "gpt2", "rl:llama", "rl:gpt2"} <= set(keys)
    assert ev["students"]["rl:llama"]["adapter"] == str(run_dir / "rl" / "adapters" / "llama")
    assert ev["students"]["rl:llama"]["max_new_tokens"] == ev["students"]["llama"]["max_new_tokens"]
    # compared with its base and with the distilled student RL started from
    against = {(c["student"], c["baseline"]) for c in ev["comparisons"]}
    for name in ("llama", "gpt2"):
        assert (f"rl:{name}", name) in against and (name, "rl:" + name) not in against
        assert sorted(b for a, b in against if a == f"rl:{name}") == [f"base:{ev['students'][name]['model']}", name]
    assert "| rl:llama | llama |" in (run_dir / "eval" / "summary.md").read_text()
    assert "rl:llama" not in ev["ensembles"]["ensemble"]["members"]

    # an RL adapter trained from another distilled adapter than train/ holds now is not shown beside it
    from qrdistill.stages.evaluate import select_targets

    assert {"rl:llama", "rl:gpt2"} <= {t.key for t in select_targets(cfg, run_dir)[0]}
    ts = json.loads((run_dir / "train" / "summary.json").read_text())
    ts["adapters"]["llama"] = {"adapter_model.safetensors": "0" * 64}
    (run_dir / "train" / "summary.json").write_text(json.dumps(ts))
    keys = {t.key for t in select_targets(cfg, run_dir)[0]}
    assert "rl:llama" not in keys and {"llama", "rl:gpt2"} <= keys
    # nor one its summary does not describe (an adapter saved by a run killed before its summary)
    config_file = run_dir / "rl" / "adapters" / "gpt2" / "adapter_config.json"
    config_file.write_text(config_file.read_text() + "\n")
    assert "rl:gpt2" not in {t.key for t in select_targets(cfg, run_dir)[0]}


def test_resumed_grpo_ends_where_an_uninterrupted_one_does(tmp_path, distilled, caplog):
    """A run cut after its step-2 checkpoint resumes there (TRL's RNG state restored), redoes steps 3-4 and
    saves the same adapter, bit for bit, as a run that was never cut."""
    pytest.importorskip("trl")
    import torch
    from safetensors.torch import load_file

    from qrdistill.stages import rl as rl_stage

    models, src = distilled
    rl = {**TINY_RL, "students": ["llama"], "max_steps": 4, "checkpoint_every": 2}
    straight, cut = _copy(src, tmp_path / "straight"), _copy(src, tmp_path / "cut")
    rl_stage.run(_config(straight, models, rl), straight)
    rl_stage.run(_config(cut, models, rl), cut)
    # what a kill between the step-2 checkpoint and the end leaves
    work = cut / "rl" / "llama"
    shutil.rmtree(work / "checkpoints" / "checkpoint-4")
    (work / "summary.json").unlink()
    shutil.rmtree(cut / "rl" / "adapters")
    with caplog.at_level("INFO"):
        s = rl_stage.run(_config(cut, models, rl), cut)
    assert f"resuming from {work / 'checkpoints' / 'checkpoint-2'}" in caplog.text
    assert s["students"]["llama"]["resumed_from"].endswith("checkpoint-2")
    a = load_file(str(straight / "rl" / "adapters" / "llama" / "adapter_model.safetensors"))
    b = load_file(str(cut / "rl" / "adapters" / "llama" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = load_file(str(src / "train" / "adapters" / "llama" / "adapter_model.safetensors"))
    assert any(not torch.equal(a[k], before[k]) for k in a)  # it did train (LoRA dropout: a KL to pull on)
    la, lb = _rows(straight / "rl" / "llama" / "log.jsonl"), _rows(work / "log.jsonl")
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    # a changed config is another RL: it starts over instead of resuming
    caplog.clear()
    with caplog.at_level("INFO"):
        rl_stage.run(_config(cut, models, {**rl, "lr": 2e-2}), cut)
    assert "starting over" in caplog.text and "resuming" not in caplog.text


def _judge_reply(prompt: str) -> str:
    """The `llm` extractor's judge: the claims of the path as JSON steps; a match when both sides are equal."""
    from qrdistill.rl.steps_claims import claim_steps

    if "REASONING:\n" in prompt:
        path = prompt.split("REASONING:\n", 1)[1]
        return json.dumps({"steps": [{"sub_think": s.operation, "query": s.quantity, "answer": s.result}
                                     for s in claim_steps(path)]})  # fmt: skip
    first, second = re.findall(r"^(?:Step|Question|Answer) [12]: (.*)$", prompt, re.MULTILINE)
    return "Yes." if first == second else "No."


def _stored_ok_prompts(store: Path) -> set[str]:
    db = sqlite3.connect(str(store))
    try:
        rows = db.execute("SELECT request FROM completions WHERE kind = 'judge' AND status = 'ok'").fetchall()
    finally:
        db.close()
    return {json.loads(r[0])["messages"][0]["content"] for r in rows}


@pytest.mark.slow  # two `qrdistill rl` processes: about 40 s on 2 busy cores
def test_killed_rl_run_resumes_and_asks_no_reward_model_call_twice(tmp_path, distilled):
    pytest.importorskip("trl")
    from openai_stub import OpenAIStub

    from qrdistill.store import Store

    models, src = distilled
    run_dir = _copy(src, tmp_path / "run")
    steps, every = 4, 2
    with OpenAIStub(reply=_judge_reply) as stub:
        backend = {"kind": "openai", "base_url": stub.base_url, "model": "stub-judge", "api_key_env": None,
                   "max_retries": 0, "temperature": 0.0}
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"run_dir": str(run_dir), "train": tiny_train_section(models, max_steps=2),
                                          "rl": {**TINY_RL, "students": ["llama"], "max_steps": steps, "checkpoint_every": every,
                                                 "rewards": {"extractor": "llm", "backend": backend}}}))
        cmd = qrdistill_cmd("rl", "--config", str(config))
        env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only contend
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        work = run_dir / "rl" / "llama"
        # kill once the step-2 checkpoint is complete and step 3 is done: step 3 is redone on resume
        kill_when(proc, lambda: ((work / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
                                 and (work / "log.jsonl").exists()
                                 and any(r["step"] >= every + 1 for r in _rows(work / "log.jsonl"))), "rl")
        assert not (run_dir / "rl" / "summary.json").exists(), "the kill came too late to test anything"
        stored_at_kill = _stored_ok_prompts(run_dir / "store.sqlite")
        asked_before = len(stub.requests)
        assert stored_at_kill and asked_before >= len(stored_at_kill)

        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "resuming from" in res.stderr
        asked_after = [r["body"]["messages"][0]["content"] for r in stub.requests[asked_before:]]

    # nothing stored before the kill was asked again; the store saw no key asked twice
    assert not stored_at_kill & set(asked_after)
    with Store(run_dir / "store.sqlite") as store:
        assert store.reissued_keys() == []
    summary = json.loads((run_dir / "rl" / "summary.json").read_text())
    calls = summary["reward_calls"]
    # the steps redone after the checkpoint sampled the same completions: their extractions came from the store
    assert calls["cached"] > 0 and calls["issued"] == len(asked_after)
    assert [r["step"] for r in _rows(work / "log.jsonl")] == list(range(1, steps + 1))
    assert summary["students"]["llama"]["resumed_from"].endswith(f"checkpoint-{every}")
    assert (run_dir / "rl" / "adapters" / "llama" / "adapter_model.safetensors").exists()


@pytest.mark.slow  # two torchrun processes: about a minute on 2 cores
def test_torchrun_two_cpu_processes_share_one_grpo_run_and_one_store(tmp_path, distilled):
    """Under torchrun each process scores its own completions (the `llm` extractor, both on D's store); rank 0
    alone writes the log, the adapter and the summaries; every process exits cleanly."""
    pytest.importorskip("trl")
    from openai_stub import OpenAIStub
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qrdistill.rl.grpo import CHECKPOINT_FILES
    from qrdistill.store import Store

    models, src = distilled
    run_dir = _copy(src, tmp_path / "run")
    # what a run of another config left: its fingerprint and a complete-looking checkpoint, which every process
    # must see as stale (none may resume from it while rank 0 deletes it)
    stale = run_dir / "rl" / "llama" / "checkpoints" / "checkpoint-9"
    stale.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (stale / name).write_text("{}")
    (run_dir / "rl" / "llama" / "fingerprint").write_text("another-config\n")
    with OpenAIStub(reply=_judge_reply) as stub:
        backend = {"kind": "openai", "base_url": stub.base_url, "model": "stub-judge", "api_key_env": None,
                   "max_retries": 0, "temperature": 0.0}
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"run_dir": str(run_dir), "train": tiny_train_section(models, max_steps=2),
                                          "rl": {**TINY_RL, "students": ["llama"],
                                                 "rewards": {"extractor": "llm", "backend": backend}}}))
        env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
        res = subprocess.run(torchrun_cmd(2, "rl", "--config", str(config)), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=400)
        asked = len(stub.requests)
    assert res.returncode == 0, res.stderr[-3000:]
    for bad in ("Traceback", "destroy_process_group() was not called", "abort"):
        assert bad.lower() not in res.stderr.lower(), bad
    assert "on each of 2 processes" in res.stderr and "resuming from" not in res.stderr
    assert not stale.exists()
    summary = json.loads((run_dir / "rl" / "summary.json").read_text())
    st = summary["students"]["llama"]
    assert st["processes"] == 2 and st["steps"] == TINY_RL["max_steps"]
    assert [r["step"] for r in _rows(run_dir / "rl" / "llama" / "log.jsonl")] == [1, 2]  # one row per step
    assert (run_dir / "meta" / "rl.json").exists()
    # both processes scored their completions through the one store, each call asked once
    with Store(run_dir / "store.sqlite") as store:
        assert store.reissued_keys() == []
    db = sqlite3.connect(str(run_dir / "store.sqlite"))
    try:
        (pids,), = db.execute("SELECT COUNT(DISTINCT pid) FROM batches WHERE kind = 'judge'").fetchall()
    finally:
        db.close()
    assert pids == 2
    assert asked == len(_stored_ok_prompts(run_dir / "store.sqlite"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models[0]),
                                      str(run_dir / "rl" / "adapters" / "llama"))
    assert any("lora_" in k for k in model.state_dict())


# ---------------------------------------------------------------- the real student (slow; not run by default here)


@pytest.mark.slow
def test_gemma_grpo_after_a_short_distillation_saves_an_adapter_that_reloads(tmp_path, gemma_path):
    pytest.importorskip("trl")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qrdistill.config import RunConfig
    from qrdistill.stages import rl as rl_stage
    from qrdistill.stages import train as train_stage

    run_dir = tmp_path / "run"
    make_filtered(run_dir, limit=3)
    cfg = RunConfig.model_validate({"run_dir": str(run_dir), "train": {
        "students": [{"name": "gemma", "model": "gemma3-270m", "lr": 1.0e-3}],
        "method": "sft", "single_student": True, "batch_size": 4, "max_steps": 4, "warmup_ratio": 0.0,
    }, "rl": {"num_generations": 2, "questions_per_step": 2, "max_steps": 3, "max_completion_length": 48,
              "checkpoint_every": 2}})  # fmt: skip
    train_stage.run(cfg, run_dir)
    summary = rl_stage.run(cfg, run_dir)
    st = summary["students"]["gemma"]
    assert st["steps"] == 3 and set(st["mean_rewards"]) == {"correctness", "format", "structure"}
    out = run_dir / "rl" / "adapters" / "gemma"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gemma_path), str(out))
    assert sum("lora_" in k for k in model.state_dict()) > 0


def test_auto_completion_length_covers_the_longest_task_and_students_or_judge_address_do_not_change_the_fingerprint():
    """auto gives RL completions what evaluate gives each task's answers (1.25 x its p99), for the task with the
    longest responses, since one GRPO run mixes every task's questions; the overall p99 would cut that task."""
    from qrdistill.config import RunConfig
    from qrdistill.stages.rl import completion_length, fingerprint

    cfg = RunConfig.model_validate({"train": tiny_train_section(["m1", "m2"])})
    lengths = {"llama": {"response_tokens_p99": 100,
                         "response_tokens_p99_by_task": {"procedural_date": 120, "procedural_arith": 40}}}
    assert completion_length(cfg, {"sequence_lengths": lengths}, "llama") == 150
    assert completion_length(cfg, {"sequence_lengths": {"llama": {"response_tokens_p99": 100}}}, "llama") == 125
    summary = {"fingerprint": "t", "adapters": {"llama": "a"}}
    one = RunConfig.model_validate({**cfg.model_dump(mode="json"), "rl": {"students": ["llama"]}})
    assert fingerprint(one, 0, summary, "llama", 150) == fingerprint(cfg, 0, summary, "llama", 150)
    steps = RunConfig.model_validate({**cfg.model_dump(mode="json"), "rl": {"max_steps": 7}})
    assert fingerprint(steps, 0, summary, "llama", 150) != fingerprint(cfg, 0, summary, "llama", 150)

    # the judge server reached at another address or with other limits: the same training; another judge: not
    def judged(**backend):
        backend = {"kind": "openai", "model": "judge-7b", "base_url": "http://127.0.0.1:8001/v1", **backend}
        rl = {"rewards": {"extractor": "llm", "backend": backend}}
        return fingerprint(RunConfig.model_validate({**cfg.model_dump(mode="json"), "rl": rl}), 0, summary, "llama", 150)

    assert judged() == judged(base_url="http://10.0.0.5:9000/v1", max_concurrency=2, timeout=5.0, max_retries=0)
    assert judged() != judged(model="judge-70b") and judged() != judged(temperature=0.3)


def test_rewards_read_the_completion_as_evaluate_cuts_it():
    """A completion is rewarded on its first finished answer line, the one evaluate scores: a second answer
    line after it earns nothing (evaluate.stop_at_answer), and without the cut the last one would count."""
    import json

    from qrdistill.rl.grpo import RewardLedger, TermReward
    from qrdistill.tasks import get_task

    r = get_task("procedural_arith").load("train", limit=1)[0]
    wrong = int(r.answer) + 1
    text = f"Some working. The answer is {wrong}.\nWait, no. The answer is {r.answer}."
    cols = {"task": ["procedural_arith"], "record": [json.dumps(r.to_dict())], "reference": [""]}
    cut = TermReward("correctness", None, RewardLedger(), stop_at_answer=True)
    whole = TermReward("correctness", None, RewardLedger(), stop_at_answer=False)
    assert cut(["q"], [text], **cols) == [0.0]
    assert whole(["q"], [text], **cols) == [1.0]
