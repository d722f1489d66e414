"""Cost before and during a paid run: prices, `--dry-run` estimates, `budget_usd` stops, the report's cost.

Prices are arithmetic on hand-computed cases. The dry runs are checked against the runs they predict
(the simulated teacher; the real `openai` backend against a local OpenAI-compatible stub that reports
usage) and must leave the run directory as they found it. The budget stops are checked against that stub
too, counting the requests it received: a stage stops before its spending could pass the budget, keeps
what was answered, and a rerun with a larger budget asks only the rest.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from openai_stub import OpenAIStub

from qrdistill import cost
from qrdistill.config import DEMO_STYLES, ModelPrice, RunConfig, load_config
from qrdistill.errors import ConfigError
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage
from qrdistill.store import Store

#: USD per million tokens: large, so that a handful of stub calls cost cents.
PRICE = {"input": 100.0, "output": 200.0}
TEACHER_REPLY = "Step one. The answer is 42."


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `d` with its size and mtime: what "unchanged" means."""
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in [d, *d.rglob("*")]}


def word_tokenizer(path: Path) -> Path:
    """A local tokenizer with one token per whitespace-separated word: what the stub server counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(path))
    return path


def gsm_file(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"Question {i}: what is {40 + i} minus {i} plus 2?",
                                        "answer": "steps\n#### 42"}) + "\n" for i in range(n)))
    return data


def stub_reply(prompt: str) -> str:
    if "REASONING PATH" in prompt:
        return "VERDICT: VALID\nREASON: every step holds."
    # Styles answer differently, so each path has its own judge prompt (identical ones would be one call).
    return "print(42) " + TEACHER_REPLY if "Use code" in prompt else TEACHER_REPLY


def stub_cost(requests: list[dict]) -> float:
    """What the stub's own usage reports for `requests` cost at PRICE (it counts words, both ways)."""
    total = 0.0
    for r in requests:
        prompt = "\n".join(m["content"] for m in r["body"]["messages"])
        total += cost.call_cost(ModelPrice(**PRICE), len(prompt.split()), len(stub_reply(prompt).split()))
    return total


def stub_config(run: Path, stub: OpenAIStub, data: Path, tok: Path, **sections) -> RunConfig:
    backend = {"kind": "openai", "base_url": stub.base_url, "model": "stub-model", "api_key_env": None,
               "max_retries": 0, "max_tokens": 32, "max_concurrency": 4, "tokenizer": str(tok)}
    gen = {"styles": ["cot", "program"], "teacher": backend, **sections.pop("generate", {})}
    filt = {"judge": {"kind": "llm", "backend": {**backend, "temperature": 0.0, "max_tokens": 16}},
            **sections.pop("filter", {})}
    return load_config(None, {"run_dir": str(run), "tasks": [{"name": "gsm8k", "path": str(data)}],
                              "generate": gen, "filter": filt, "prices": {"stub-model": PRICE}, **sections})


# ---------------------------------------------------------------- prices


def test_call_cost_on_hand_computed_cases():
    p = ModelPrice(input=2.5, output=10.0, cached_input=1.25)
    # 800 uncached at 2.5, 200 cached at 1.25, 500 out at 10, per million
    assert cost.call_cost(p, 1000, 500, 200) == pytest.approx((800 * 2.5 + 200 * 1.25 + 500 * 10) / 1e6)
    assert cost.call_cost(p, 1000, 500, 200) == pytest.approx(0.00725)
    no_cache_price = ModelPrice(input=2.5, output=10.0)
    assert cost.call_cost(no_cache_price, 1000, 500, 200) == pytest.approx(0.0075)  # cached at the input price
    assert cost.call_cost(p, 1_000_000, 0) == pytest.approx(2.5)
    assert cost.call_cost(p, 0, 1_000_000) == pytest.approx(10.0)
    assert cost.call_cost(p, None, None) == 0.0  # a failed call reports no usage
    assert cost.call_cost(p, 100, 0, 500) == pytest.approx(100 * 1.25 / 1e6)  # cached never exceeds the prompt


def test_prices_are_empty_by_default_and_validated(tmp_path):
    assert load_config(None).prices == {} and RunConfig().prices == {}
    assert load_config(None).generate.budget_usd is None and load_config(None).filter.budget_usd is None
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  teacher:\n    kind: openai\n    model: gpt-x\n  budget_usd: 2.0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: config field generate\.budget_usd: .*no entry for "
                                          r"'gpt-x' \(generate\.teacher\.model\)"):
        load_config(cfg)
    ok = load_config(cfg, {"prices": {"gpt-x": {"input": 1, "output": 4.5, "cached_input": 0.5}}})
    assert ok.prices["gpt-x"] == ModelPrice(input=1.0, output=4.5, cached_input=0.5)
    for bad, field in [({"input": True, "output": 1}, "prices.gpt-x.input"),
                       ({"input": -1, "output": 1}, "prices.gpt-x.input"),
                       ({"input": 1}, "prices.gpt-x.output"),
                       ({"input": 1, "output": 1, "per": "token"}, "prices.gpt-x.per")]:
        with pytest.raises(ConfigError, match=f"config field {field}"):
            load_config(cfg, {"prices": {"gpt-x": bad}})
    with pytest.raises(ConfigError, match="config field generate.budget_usd"):
        load_config(cfg, {"prices": {"gpt-x": {"input": 1, "output": 1}}, "generate.budget_usd": 0})
    judge = {"kind": "llm", "backend": {"kind": "openai", "model": "judge-x"}}
    with pytest.raises(ConfigError, match=r"config field filter\.budget_usd: .*'judge-x' "
                                          r"\(filter\.judge\.backend\.model\)"):
        load_config(None, {"filter": {"judge": judge, "budget_usd": 1.0}})
    assert load_config(None, {"filter.budget_usd": 1.0}).filter.budget_usd == 1.0  # steps judge: nothing to pay
    with pytest.raises(ConfigError, match="config field generate.budget_usd: a budget needs the price"):
        cost.require_price({}, "gpt-x", "generate.budget_usd", "generate.teacher.model")


def test_stored_usage_is_read_with_cached_tokens_and_priced(tmp_path):
    """The store's calls, their model and cached input tokens (completion meta), priced per model."""
    from qrdistill.backends import Request, get_backend
    from qrdistill.backends.base import Completion
    from qrdistill.config.generate import SimulatedBackendConfig

    backend = get_backend(SimulatedBackendConfig(model="m-a"))
    path = tmp_path / "store.sqlite"
    with Store(path) as st:
        st.put("k1", "teacher", backend, Request([{"role": "user", "content": "a"}]),
               Completion("x", prompt_tokens=1000, completion_tokens=100, meta={"cached_tokens": 600}))
        st.put("k2", "teacher", backend, Request([{"role": "user", "content": "b"}]),
               Completion(None, status="error", error="HTTP 500"))
        st.put("k3", "judge", backend, Request([{"role": "user", "content": "c"}]),
               Completion("y", prompt_tokens=10, completion_tokens=5))
    before = snapshot(tmp_path)
    calls = cost.stored_calls(path)
    assert [(c["key"], c["kind"], c["status"], c["model"], c["prompt_tokens"], c["cached_tokens"]) for c in calls] \
        == [("k1", "teacher", "ok", "m-a", 1000, 600), ("k2", "teacher", "error", "m-a", 0, 0),
            ("k3", "judge", "ok", "m-a", 10, 0)]
    prices = {"m-a": ModelPrice(input=1.0, output=2.0, cached_input=0.1)}
    spent, unpriced = cost.stored_spend(path, "teacher", prices)
    assert spent == pytest.approx((400 * 1.0 + 600 * 0.1 + 100 * 2.0) / 1e6) and unpriced == {}
    assert cost.stored_spend(path, "teacher", {}) == (0.0, {"m-a": 2})
    assert cost.stored_ok_usage(path, ["k1", "k2", "nope"]) == {"k1": {"prompt_tokens": 1000, "completion_tokens": 100}}
    rows = cost.cost_rows(calls, {"k1": ("t", "cot"), "k2": ("t", "cot")}, prices)
    assert [(r["stage"], r["task"], r["style"], r["calls"], r["errors"]) for r in rows] == \
        [("generate", "t", "cot", 2, 1), ("filter", "?", "?", 1, 0)]
    assert rows[1]["cost_usd"] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    assert snapshot(tmp_path) == before  # read without writing: no -wal or -shm left behind


def test_estimate_on_hand_computed_cases():
    """Duplicates count once, stored calls cost nothing and calibrate the input count, and output
    comes from stored calls of the same task and style, else style, else max_tokens."""
    words = cost.TokenCounter("words", True, lambda m: sum(len(x["content"].split()) for x in m))

    def call(key, task, style, text):
        return cost.PlannedCall(key, task, style, [{"role": "user", "content": text}], max_tokens=100)

    calls = [call("a", "t1", "cot", "one two"), call("a", "t1", "cot", "one two"),   # the same request twice
             call("b", "t1", "cot", "one two three four"),                           # stored
             call("c", "t1", "cot", "five six seven eight nine ten"),                # -> mean of t1/cot
             call("d", "t2", "cot", "x y"),                                          # -> mean of cot
             call("e", "t2", "prog", "x y z")]                                       # -> max_tokens
    stored = {"b": {"prompt_tokens": 8, "completion_tokens": 30}}  # the server counted 2x our estimate
    price = ModelPrice(input=1.0, output=10.0)
    est = cost.estimate(calls, stored, words, price)
    assert (est["requests"], est["unique_requests"], est["stored"], est["calls"]) == (6, 5, 1, 4)
    rows = {(r["task"], r["style"]): r for r in est["rows"]}
    # inputs x2: "a" 2 + "c" 6 words -> 16; "d" 2 -> 4; "e" 3 -> 6
    assert rows[("t1", "cot")]["input_tokens"] == 16 and rows[("t1", "cot")]["output_tokens"] == 60
    assert rows[("t2", "cot")]["input_tokens"] == 4 and rows[("t2", "cot")]["output_tokens"] == 30
    assert rows[("t2", "prog")]["input_tokens"] == 6 and rows[("t2", "prog")]["output_tokens"] == 100
    assert rows[("t1", "cot")]["output_from"].startswith("stored, same task+style")
    assert rows[("t2", "cot")]["output_from"].startswith("stored, same style")
    assert rows[("t2", "prog")]["output_from"] == "max_tokens (upper bound)"
    assert est["input_tokens"] == 26 and est["output_tokens"] == 190
    assert est["cost_usd"] == pytest.approx((26 * 1.0 + 190 * 10.0) / 1e6)
    assert est["max_cost_usd"] == pytest.approx((26 * 1.0 + 400 * 10.0) / 1e6)
    assert "x 2.000" in est["input_method"]
    assert cost.estimate(calls, stored, words, None)["cost_usd"] is None
    text = cost.format_estimate("generate", "b", "m", cost.estimate(calls, stored, words, None), None)
    assert "no price for model 'm' in `prices`" in text and "calls that would be issued: 4" in text


# ---------------------------------------------------------------- dry runs


def test_dry_run_counts_the_calls_the_run_then_makes_and_writes_nothing(tmp_path, capsys):
    """Simulated teacher: dry run, real run, dry run again (0 calls), each dry run leaving the dir as it was."""
    run = tmp_path / "run"
    cfg = load_config(None, {"run_dir": str(run), "tasks": [{"name": "procedural_date", "limit": 4},
                                                            {"name": "procedural_arith", "limit": 4}]})
    est = generate_stage.run(cfg, run, limit=2, dry_run=True)
    assert not run.exists()  # not even the run dir or its lock
    out = capsys.readouterr().out
    assert "calls that would be issued: 12" in out and "characters / 4" in out
    assert "no price for model 'simulated-teacher' in `prices`" in out and "max_tokens (upper bound)" in out
    summary = generate_stage.run(cfg, run, limit=2)
    assert est["calls"] == summary["calls_issued"] == 12

    before = snapshot(run)
    est = generate_stage.run(cfg, run, dry_run=True)
    assert snapshot(run) == before
    assert est["stored"] == 12 and est["calls"] == 12  # the other half of the questions
    assert all(r["output_from"].startswith("stored, same task+style") for r in est["rows"])
    # The simulated teacher counts words; calibrated on the stored calls, the estimate is close to it.
    summary = generate_stage.run(cfg, run)
    assert summary["calls_issued"] == est["calls"] == 12
    assert est["input_tokens"] == pytest.approx(summary["tokens_this_run"]["prompt"], rel=0.1)
    before = snapshot(run)
    assert generate_stage.run(cfg, run, dry_run=True)["calls"] == 0
    assert filter_stage.run(cfg, run, dry_run=True)["calls"] == 0  # the steps judge calls no model
    assert snapshot(run) == before
    assert "the steps judge calls no model" in capsys.readouterr().out


def test_cli_dry_run_prints_the_table(tmp_path, capsys):
    from qrdistill.cli import main

    run = tmp_path / "run"
    rc = main(["generate", "--dry-run", "--run-dir", str(run), "--limit", "1",
               "--set", "prices={simulated-teacher: {input: 1.0, output: 2.0}}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "generate --dry-run: simulated:simulated-teacher" in out
    assert "procedural_date" in out and "prices.simulated-teacher: $1 input, $2 output per 1M tokens" in out
    assert not (run / "store.sqlite").exists() and not (run / "meta").exists()


def test_dry_run_of_a_paid_teacher_needs_no_key(tmp_path, capsys, monkeypatch):
    """The estimate comes before the key: a hosted teacher's dry run works without it and calls nobody."""
    monkeypatch.delenv("QRD_TEST_UNSET_KEY", raising=False)
    run = tmp_path / "run"
    cfg = load_config(None, {
        "run_dir": str(run), "tasks": [{"name": "procedural_arith", "limit": 2}],
        "generate": {"styles": ["cot"], "teacher": {"kind": "openai", "base_url": "https://api.example.invalid/v1",
                                                      "model": "paid-model", "api_key_env": "QRD_TEST_UNSET_KEY"}},
        "prices": {"paid-model": {"input": 3.0, "output": 15.0}},
    })
    est = generate_stage.run(cfg, run, dry_run=True)
    assert est["calls"] == 2 and est["model"] == "paid-model" and not run.exists()
    assert est["output_tokens"] == 2 * 512  # max_tokens: nothing stored yet
    assert est["cost_usd"] == pytest.approx((est["input_tokens"] * 3.0 + 1024 * 15.0) / 1e6)
    assert "prices.paid-model: $3 input, $15 output per 1M tokens" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="QRD_TEST_UNSET_KEY is not set"):
        generate_stage.run(cfg, run)  # a real run still needs it


def test_dry_runs_and_budgets_against_an_openai_server(tmp_path, capsys):
    """The real openai backend against a stub that reports usage (one token per word, as the configured
    tokenizer counts): dry runs predict the calls and their input tokens exactly; a budget stops generate
    and filter before their spending could pass it, keeps every answer, and a rerun with a larger budget
    asks the server only for the rest."""
    tok = word_tokenizer(tmp_path / "tok")
    data = gsm_file(tmp_path, 8)
    run = tmp_path / "run"
    with OpenAIStub(reply=stub_reply) as stub:
        cfg = stub_config(run, stub, data, tok, generate={"budget_usd": 0.05})
        est = generate_stage.run(cfg, run, dry_run=True)
        assert not run.exists() and stub.requests == []
        assert est["calls"] == 16 and est["input_exact"] and est["input_method"].startswith(f"tokenizer {tok}")
        assert est["max_cost_usd"] > 0.05  # the dry run says the budget will not do
        assert "may stop the stage" in capsys.readouterr().out

        with pytest.raises(cost.BudgetExhausted, match=r"generate\.budget_usd: generate stopped before a call "
                                                        r"could take its spending past the budget") as e:
            generate_stage.run(cfg, run)
        made = len(stub.requests)
        assert 0 < made < 16 and f"{made} calls made this run, {16 - made} not issued" in str(e.value)
        with Store(run / "store.sqlite") as st:
            assert st.usage("teacher")["stored_ok"] == made
        spent = cost.stored_spend(run / "store.sqlite", "teacher", cfg.prices)[0]
        assert spent == pytest.approx(stub_cost(stub.requests)) and spent <= 0.05
        meta = json.loads((run / "meta" / "generate.json").read_text())["summary"]
        assert meta["budget"]["stopped"] and meta["failed_calls"] == 0 and meta["paths"] == made
        # It stopped only when the next call's worst case (its prompt + max_tokens) no longer fit.
        assert spent + meta["budget"]["next_call_max_usd"] > 0.05
        assert len((run / "paths.jsonl").read_text().splitlines()) == made

        before = snapshot(run)
        est = generate_stage.run(cfg, run, dry_run=True)
        assert snapshot(run) == before and est["calls"] == 16 - made and est["stored"] == made

        cfg = stub_config(run, stub, data, tok, generate={"budget_usd": 1.0})
        summary = generate_stage.run(cfg, run)
        rest = stub.requests[made:]
        assert len(rest) == summary["calls_issued"] == est["calls"] and len(stub.requests) == 16
        assert est["input_tokens"] == summary["tokens_this_run"]["prompt"]  # an exact tokenizer: exact
        assert summary["cost_usd"]["stored_total"] == pytest.approx(stub_cost(stub.requests))
        assert generate_stage.run(cfg, run)["calls_issued"] == 0 and len(stub.requests) == 16

        # The judge: the same, through filter.
        est = filter_stage.run(cfg, run, dry_run=True)
        assert est["calls"] == 16 and len(stub.requests) == 16
        cfg = stub_config(run, stub, data, tok, filter={"budget_usd": 0.04})
        with pytest.raises(cost.BudgetExhausted, match=r"filter\.budget_usd: filter stopped") as e:
            filter_stage.run(cfg, run)
        judged = len(stub.requests) - 16
        assert 0 < judged < 16 and f"{16 - judged} paths not judged are marked not kept" in str(e.value)
        reasons = [(json.loads(line).get("judge") or {}).get("reason", "")
                   for line in (run / "filtered.jsonl").read_text().splitlines()]
        assert sum(r.startswith("not judged: the call was not issued") for r in reasons) == 16 - judged
        assert not any("failed" in r for r in reasons)
        assert cost.stored_spend(run / "store.sqlite", "judge", cfg.prices)[0] <= 0.04
        cfg = stub_config(run, stub, data, tok, filter={"budget_usd": 1.0})
        report = filter_stage.run(cfg, run)
        assert len(stub.requests) == 32 and report["judge_calls"]["issued"] == 16 - judged
        assert report["overall"]["kept"] == 16
    with Store(run / "store.sqlite") as st:
        assert st.reissued_keys() == []

    # The report's cost table from the stored usage: generate and filter per task x style, priced.
    from qrdistill.analysis.report import build_report

    res = build_report([run], tmp_path / "report")
    assert res["sections"]["cost"]
    rows = list(csv.DictReader((tmp_path / "report" / "cost_run.csv").open()))
    assert [(r["stage"], r["task"], r["style"], r["calls"]) for r in rows] == [
        ("generate", "gsm8k", "cot", "8"), ("generate", "gsm8k", "program", "8"),
        ("filter", "gsm8k", "cot", "8"), ("filter", "gsm8k", "program", "8")]
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(stub_cost(stub.requests))
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Teacher and judge cost per stage, task and style" in md and "cost_run.csv" in md


def test_calls_without_reported_usage_keep_their_worst_case_charge_on_the_next_run(tmp_path):
    """A server that reports no usage: the budget charges each call its worst case, and that charge is stored,
    so a rerun starts from the same spending instead of from $0 (which would let it spend the budget again)."""
    tok = word_tokenizer(tmp_path / "tok")
    data = gsm_file(tmp_path, 8)
    run = tmp_path / "run"
    with OpenAIStub(reply=stub_reply, usage=False) as stub:
        cfg = stub_config(run, stub, data, tok, generate={"budget_usd": 0.05})
        with pytest.raises(cost.BudgetExhausted):
            generate_stage.run(cfg, run)
        made = len(stub.requests)
        assert 0 < made < 16
        spent = json.loads((run / "meta" / "generate.json").read_text())["summary"]["budget"]["spent_usd"]
        assert spent > stub_cost(stub.requests)  # worst cases, not what the calls really cost
        assert cost.stored_spend(run / "store.sqlite", "teacher", cfg.prices)[0] == pytest.approx(spent, abs=1e-6)
        rows = cost.cost_rows(cost.stored_calls(run / "store.sqlite", "teacher"), {}, cfg.prices)
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(spent, abs=1e-6)  # the report says the same
        assert sum(r["unmetered"] for r in rows) == made
        with pytest.raises(cost.BudgetExhausted):
            generate_stage.run(cfg, run)
        assert len(stub.requests) == made  # nothing left of the budget: no call


def test_report_without_prices_shows_tokens_only(tmp_path):
    from qrdistill.analysis.report import build_report

    run = tmp_path / "run"
    cfg = load_config(None, {"run_dir": str(run), "tasks": [{"name": "procedural_arith", "limit": 2}]})
    summary = generate_stage.run(cfg, run)
    filter_stage.run(cfg, run)
    before = snapshot(run)
    build_report([run], tmp_path / "report")
    assert snapshot(run) == before  # the store is read, never written
    rows = list(csv.DictReader((tmp_path / "report" / "cost_run.csv").open()))
    assert "cost_usd" not in rows[0]
    assert [(r["stage"], r["style"]) for r in rows] == [("generate", s) for s in DEMO_STYLES]
    assert sum(int(r["prompt_tokens"]) for r in rows) == summary["tokens_this_run"]["prompt"]
    assert sum(int(r["completion_tokens"]) for r in rows) == summary["tokens_this_run"]["completion"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Tokens only for no price for model 'simulated-teacher' in `prices`" in md
