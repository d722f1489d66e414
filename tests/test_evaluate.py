"""evaluate: batched generation, stops, bootstrap interval, ensemble pick, end to end on tiny students."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from tiny_models import make_tiny_students

from qrdistill.config import load_config
from qrdistill.errors import ConfigError, MissingArtifactError
from qrdistill.evaluation.generation import cut_output, stop_point
from qrdistill.evaluation.metrics import accuracy_summary, bootstrap_ci, ensemble_pick


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    return make_tiny_students(tmp_path_factory.mktemp("tiny"))


def tiny_config(run_dir: Path, tiny: list[str], **evaluate) -> object:
    ev = {"limit": 5, "max_new_tokens": 10, "batch_size": 3, "bootstrap_resamples": 200, **evaluate}
    return load_config(None, {
        "run_dir": str(run_dir),
        "tasks": [{"name": "procedural_date", "limit": 4}, {"name": "procedural_arith", "limit": 4}],
        "train": {"students": [{"name": "llama", "model": tiny[0]}, {"name": "gpt2", "model": tiny[1]}]},
        "evaluate": ev,
    })


def save_trained_adapters(run_dir: Path, tiny: list[str]) -> None:
    """What the train stage leaves: one PEFT adapter per student under train/adapters/<name>."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, path, modules in (("llama", tiny[0], ["q_proj", "v_proj"]), ("gpt2", tiny[1], ["c_attn"])):
        torch.manual_seed(3)
        model = AutoModelForCausalLM.from_pretrained(path)
        # Non-zero B so the adapter changes the model (a fresh LoRA is the identity).
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=modules, init_lora_weights=False,
                                                fan_in_fan_out=name == "gpt2"))
        peft.save_pretrained(str(run_dir / "train" / "adapters" / name))


def test_stop_point_waits_for_a_complete_answer_line():
    assert stop_point("so 12 + 30 = 42. The answer is 4") is None
    assert stop_point("The answer is 2.5.") is None  # the next token may continue the number
    text = "So x = 2.5. The answer is 2.5. Question: next"
    assert text[: stop_point(text)] == "So x = 2.5. The answer is 2.5."
    assert cut_output("The answer is (C) 03/15/2021.\nQuestion: Today is") == "The answer is (C) 03/15/2021."
    assert cut_output("Let me see.\n\nQuestion: What is 2+2?\nAnswer: 4") == "Let me see."
    assert cut_output("The answer is 7\nmore text") == "The answer is 7"
    assert cut_output("no answer yet") == "no answer yet"
    assert cut_output("The answer is 7. More", stop_at_answer=False) == "The answer is 7. More"


def test_bootstrap_interval_contains_estimate_and_narrows():
    import numpy as np

    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        correct = rng.random(n) < 0.3
        s = accuracy_summary(list(correct), n_resamples=1000, seed=1)
        assert s["ci_low"] <= s["accuracy"] <= s["ci_high"]
        assert s["n"] == n and s["correct"] == int(correct.sum())
        widths.append(s["ci_high"] - s["ci_low"])
    assert widths[0] > widths[1] > widths[2] > 0
    # ~ 2 * 1.96 * sqrt(p(1-p)/n) for n = 200
    assert widths[1] == pytest.approx(2 * 1.96 * (0.3 * 0.7 / 200) ** 0.5, rel=0.25)
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    assert bootstrap_ci([1, 0, 1], seed=5) == bootstrap_ci([1, 0, 1], seed=5)  # seeded


def test_ensemble_pick_follows_higher_mean_logprob():
    def row(qid, pred, correct, mean):
        return {"qid": qid, "pred": pred, "correct": correct, "logprob": {"mean": mean, "sum": None if mean is None else mean * 10}}

    a = [row("q1", "A", True, -0.2), row("q2", "B", False, -0.9), row("q3", "C", True, -1.0)]
    b = [row("q1", "D", False, -0.5), row("q2", "E", True, -0.1), row("q3", "F", False, None)]
    picks = {p["qid"]: p for p in ensemble_pick({"a": a, "b": b})}
    assert [picks[q]["student"] for q in ("q1", "q2", "q3")] == ["a", "b", "a"]
    assert [picks[q]["pred"] for q in ("q1", "q2", "q3")] == ["A", "E", "C"]
    assert all(p["correct"] for p in picks.values())  # here the confident student is always right
    # Per character, not the sum: b's long answer has the lower sum but the higher log-prob per character.
    long_b = [{"qid": "q1", "pred": "X", "correct": True, "output": "x" * 100, "logprob": {"mean": -0.1, "sum": -5.0}}]
    short_a = [{"qid": "q1", "pred": "Y", "correct": False, "output": "y" * 6, "logprob": {"mean": -0.3, "sum": -0.6}}]
    assert ensemble_pick({"a": short_a, "b": long_b})[0]["student"] == "b"
    # Per character, not per token: one text, split by a fine tokenizer (a: 40 tokens) and a coarse one (b: 10
    # tokens), with b the more confident per character; a's per-token mean is higher only because it has more tokens.
    text = "The answer is (C) 03/15/2021. So it is C."
    fine = [{"qid": "q1", "pred": "C", "correct": False, "output": text, "logprob": {"mean": -2.0 / 40, "sum": -2.0}}]
    coarse = [{"qid": "q1", "pred": "D", "correct": True, "output": text, "logprob": {"mean": -1.5 / 10, "sum": -1.5}}]
    assert ensemble_pick({"a": fine, "b": coarse})[0]["student"] == "b"
    with pytest.raises(ValueError):
        ensemble_pick({"a": a})


def test_evaluate_base_students_end_to_end(tmp_path, tiny, monkeypatch, caplog):
    from qrdistill.stages import evaluate

    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, tiny)
    with caplog.at_level("INFO"):
        summary = evaluate.run(cfg, run_dir)
    assert "train stage has not run" in caplog.text
    keys = [f"base:{tiny[0]}", f"base:{tiny[1]}"]
    assert list(summary["students"]) == keys
    for key in keys:
        for task in ("procedural_date", "procedural_arith"):
            path = evaluate.predictions_path(run_dir, key, task)
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(rows) == 5  # evaluate.limit; the limit of `tasks` caps training questions only
            for r in rows:
                assert set(r) >= {"qid", "prompt", "output", "pred", "correct", "gold", "logprob", "n_tokens"}
                assert r["prompt"].startswith("Question: ") and r["prompt"].endswith("Let's think step by step.\n")
                assert 0 < r["n_tokens"] <= 10
                assert r["logprob"]["sum"] < 0 and r["logprob"]["mean"] == pytest.approx(
                    r["logprob"]["sum"] / r["n_tokens"])
            acc = summary["students"][key]["tasks"][task]
            assert acc["n"] == 5 and acc["accuracy"] == sum(r["correct"] for r in rows) / 5
            assert acc["ci_low"] <= acc["accuracy"] <= acc["ci_high"]
    # The ensemble of the two base models follows each question's higher log-probability per character.
    ens = summary["ensembles"]["ensemble:base"]
    for task in ("procedural_date", "procedural_arith"):
        by = {k: {json.loads(x)["qid"]: json.loads(x) for x in
                  evaluate.predictions_path(run_dir, k, task).read_text().splitlines()} for k in keys}
        def per_char(r):  # an empty output (EOS first) falls back to the per-token mean
            return r["logprob"]["sum"] / len(r["output"]) if r["output"] else r["logprob"]["mean"]

        expect = [max(keys, key=lambda k, q=q: per_char(by[k][q])) for q in by[keys[0]]]
        assert ens["picked"][task] == {k: expect.count(k) for k in keys}
    assert "nearest_date" in summary["shortcut_baselines"]["procedural_date"]
    for st in summary["students"].values():
        for cell in st["tasks"].values():
            # Random tiny models never finish an answer line within 10 tokens: all cut, none strict.
            assert cell["stops"].get("budget", 0) + cell["stops"].get("eos", 0) == cell["n"]
            assert cell["cut_by_budget"] == cell["stops"].get("budget", 0) / cell["n"]
            assert cell["no_strict_answer"] == 1.0 and cell["strict"]["accuracy"] == 0.0
    assert json.loads((run_dir / "eval" / "summary.json").read_text())["students"].keys() == set(keys)
    md = (run_dir / "eval" / "summary.md").read_text()
    assert "ensemble:base" in md and "procedural_arith" in md
    assert json.loads((run_dir / "meta" / "evaluate.json").read_text())["stage"] == "evaluate"

    # Resume: a full rerun generates nothing (a generation call would fail) and gives the same summary.
    import qrdistill.evaluation.generation as gen

    def no_generation(*a, **k):
        raise AssertionError("regenerated a saved prediction")

    monkeypatch.setattr(gen, "_decode_round", no_generation)
    assert evaluate.run(cfg, run_dir)["students"] == summary["students"]
    monkeypatch.undo()
    # A killed run leaves a torn last line and fewer rows: only the missing question is answered.
    path = evaluate.predictions_path(run_dir, keys[0], "procedural_arith")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    calls = []
    real = gen._decode_round
    monkeypatch.setattr(gen, "_decode_round", lambda m, t, rows, *a: calls.append(len(rows))
                        or real(m, t, rows, *a))
    again = evaluate.run(cfg, run_dir)
    assert calls == [2]  # the torn 4th row and the missing 5th
    assert again["students"][keys[0]] == summary["students"][keys[0]]  # greedy: the same answer again
    assert len(path.read_text().splitlines()) == 5


def test_trained_adapters_are_evaluated_beside_base(tmp_path, tiny):
    from qrdistill.stages import evaluate

    run_dir = tmp_path / "run"
    with pytest.raises(MissingArtifactError, match="run `qrdistill train` first"):
        evaluate.run(tiny_config(run_dir, tiny, students="trained"), run_dir)
    save_trained_adapters(run_dir, tiny)
    summary = evaluate.run(tiny_config(run_dir, tiny, students="all", limit=3), run_dir)
    assert set(summary["students"]) == {"llama", "gpt2", f"base:{tiny[0]}", f"base:{tiny[1]}"}
    assert summary["students"]["llama"]["kind"] == "trained"
    assert set(summary["ensembles"]) == {"ensemble", "ensemble:base"}
    assert summary["ensembles"]["ensemble"]["members"] == ["llama", "gpt2"]
    trained = evaluate.predictions_path(run_dir, "llama", "procedural_date").read_text()
    base = evaluate.predictions_path(run_dir, f"base:{tiny[0]}", "procedural_date").read_text()
    out_t = [json.loads(x)["output"] for x in trained.splitlines()]
    out_b = [json.loads(x)["output"] for x in base.splitlines()]
    assert out_t != out_b  # the adapter is active for the trained student, and off for the base one


def test_shared_base_is_loaded_once(tmp_path, tiny, monkeypatch):
    import qrdistill.evaluation.generation as gen
    from qrdistill.stages import evaluate

    run_dir = tmp_path / "run"
    cfg = load_config(None, {
        "run_dir": str(run_dir), "tasks": [{"name": "procedural_arith", "limit": 2}],
        "train": {"students": [{"name": "a", "model": tiny[0]}, {"name": "b", "model": tiny[0]}]},
        "evaluate": {"max_new_tokens": 4, "students": "all", "limit": 2},
    })
    for name in ("a", "b"):
        save_trained_adapters(tmp_path / name, tiny)
        (run_dir / "train" / "adapters").mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "train" / "adapters" / "llama").rename(run_dir / "train" / "adapters" / name)
    loads = []
    real = gen.load_causal_lm
    monkeypatch.setattr(gen, "load_causal_lm", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    summary = evaluate.run(cfg, run_dir)
    assert loads == [tiny[0]]
    assert list(summary["students"]) == [f"base:{tiny[0]}", "a", "b"]
    assert summary["students"][f"base:{tiny[0]}"]["members"] == ["a", "b"]


def test_task_without_test_split_says_so(tmp_path, tiny):
    from qrdistill.stages import evaluate
    from qrdistill.tasks import TASKS, Task

    class TrainOnly(Task):
        name = "train_only_for_test"
        splits: ClassVar[tuple[str, ...]] = ("train",)

    if "train_only_for_test" not in TASKS:
        TASKS.add("train_only_for_test", TrainOnly)
    cfg = tiny_config(tmp_path, tiny)
    cfg.tasks[0].name = "train_only_for_test"
    with pytest.raises(ConfigError, match="train_only_for_test.*has no 'test' split"):
        evaluate.run(cfg, tmp_path)


def test_cli_evaluate_missing_adapters(tmp_path, tiny, capsys):
    import yaml

    from qrdistill.cli import main

    cfg = tiny_config(tmp_path / "run", tiny, students="trained")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["evaluate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qrdistill: error:") and "run `qrdistill train` first" in err


def test_left_padded_batches_match_one_by_one(tiny):
    """Batching (left padding, length-sorted) changes neither the greedy outputs nor their log-probabilities."""
    from qrdistill.evaluation.generation import generate_greedy, load_causal_lm, load_tokenizer
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task

    task = get_task("procedural_arith")
    prompts = [student_prompt(task, task.prompt(r)) for r in task.load("test", None, 5)]
    lengths = set()
    for path in tiny:
        tokenizer, model = load_tokenizer(path), load_causal_lm(path)
        lengths |= {len(tokenizer(p)["input_ids"]) for p in prompts}
        batched = generate_greedy(model, tokenizer, prompts, 5, 12, False, progress=False)
        single = generate_greedy(model, tokenizer, prompts, 1, 12, False, progress=False)
        assert [g.output for g in batched] == [g.output for g in single]
        assert [g.logprob_sum for g in batched] == pytest.approx([g.logprob_sum for g in single], abs=1e-3)
    assert len(lengths) > 1  # the prompts really were padded


def test_a_deferred_tail_continues_the_same_text(tiny, monkeypatch):
    """Rows still writing when most of their batch is done continue later from their own token ids:
    the outputs equal one uninterrupted batch's, and each row records how it ended."""
    import qrdistill.evaluation.generation as gen
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task

    task = get_task("procedural_arith")
    prompts = [student_prompt(task, task.prompt(r)) for r in task.load("test", None, 8)]
    tokenizer, model = gen.load_tokenizer(tiny[0]), gen.load_causal_lm(tiny[0])
    monkeypatch.setattr(gen, "DEFER_SHARE", 0.0)
    whole = gen.generate_greedy(model, tokenizer, prompts, 8, 16, False, progress=False)
    rounds = []
    real = gen._decode_round
    monkeypatch.setattr(gen, "_decode_round", lambda m, t, rows, *a: rounds.append(len(rows)) or real(m, t, rows, *a))
    monkeypatch.setattr(gen, "DEFER_SHARE", 1.0)  # defer every row after its first token
    split = gen.generate_greedy(model, tokenizer, prompts, 8, 16, False, progress=False)
    assert len(rounds) > 1
    assert [g.output for g in split] == [g.output for g in whole]
    assert [g.n_tokens for g in split] == [g.n_tokens for g in whole]
    assert [g.logprob_sum for g in split] == pytest.approx([g.logprob_sum for g in whole], abs=1e-3)
    assert {g.stop for g in whole} <= set(gen.STOP_REASONS)
    assert all(g.stop == "budget" for g in whole if g.n_tokens == 16)


def test_auto_budget_is_per_task_from_the_students_own_training_responses(tmp_path):
    from qrdistill.stages.evaluate import EvalTarget, EvalTask, _resolve_budgets, max_new_tokens
    from qrdistill.tasks import get_task

    (tmp_path / "train").mkdir()
    fit = {"response_tokens_p99": 200, "response_tokens_p99_by_task": {"procedural_date": 200, "procedural_arith": 80}}
    (tmp_path / "train" / "summary.json").write_text(json.dumps({"sequence_lengths": {"a": fit}}))
    cfg = load_config(None)
    trained, base = EvalTarget(key="a", model="m", adapter=tmp_path, student="a"), EvalTarget(key="base:m", model="m")
    _resolve_budgets(cfg, tmp_path, [trained, base])
    date, arith, gsm = (EvalTask(n, get_task(n), []) for n in ("procedural_date", "procedural_arith", "gsm8k"))
    assert max_new_tokens(trained, date, cfg.evaluate) == 250
    assert max_new_tokens(trained, arith, cfg.evaluate) == 100
    assert max_new_tokens(trained, gsm, cfg.evaluate) == 250  # not trained on: 1.25 x its p99 over all tasks
    assert max_new_tokens(base, arith, cfg.evaluate) == cfg.evaluate.base_max_new_tokens
    # A summary from before the per-task p99: one budget for every task.
    (tmp_path / "train" / "summary.json").write_text(json.dumps({"sequence_lengths": {"a": {"response_tokens_p99": 200}}}))
    old = EvalTarget(key="a", model="m", adapter=tmp_path, student="a")
    _resolve_budgets(cfg, tmp_path, [old])
    assert max_new_tokens(old, arith, cfg.evaluate) == 250


def test_a_prediction_cut_by_the_budget_is_recorded_as_such(tiny):
    from qrdistill.evaluation.generation import generate_greedy, load_causal_lm, load_tokenizer

    tokenizer, model = load_tokenizer(tiny[0]), load_causal_lm(tiny[0])
    # A random tiny model never writes an answer line: every row ends at its budget.
    gens = generate_greedy(model, tokenizer, ["Question: 2 + 3?\nAnswer:"] * 3, 2, 5, True, progress=False)
    assert [g.stop for g in gens] == ["budget"] * 3
    assert all(g.n_tokens <= 5 for g in gens)
