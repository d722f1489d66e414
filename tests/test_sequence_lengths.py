"""What the student sees: training pairs are sized from the data and never lose a token."""

from __future__ import annotations

import pytest

from qrdistill.errors import DataError
from qrdistill.train.data import check_drops, fit_to_length, quantile_length


def test_quantile_length_is_nearest_rank():
    assert quantile_length([5, 1, 3, 2, 4], 0.99) == 5
    assert quantile_length(list(range(1, 101)), 0.99) == 99
    assert quantile_length([7], 0.5) == 7


def test_auto_length_covers_p99_rounded_and_capped():
    lengths = [(100, 50)] * 99 + [(100, 400)]
    keys = [f"k{i}" for i in range(100)]
    fit = fit_to_length(lengths, keys, "auto", cap=2048)
    assert fit.max_length == 152  # p99 = 150, rounded up to a multiple of 8
    assert fit.dropped == 1 and fit.dropped_keys == ["k99"] and fit.longest == 500
    assert fit.response_tokens_p99 == 50
    capped = fit_to_length(lengths, keys, "auto", cap=120)
    assert capped.max_length == 120 and capped.dropped == 100


def test_response_p99_is_also_recorded_per_task_over_the_kept_pairs():
    """evaluate budgets each task by these: a short-answer task must not inherit the longest task's p99."""
    lengths = [(100, 200)] * 60 + [(50, 40)] * 39 + [(50, 900)]
    tasks = ["date"] * 60 + ["arith"] * 40
    fit = fit_to_length(lengths, [f"k{i}" for i in range(100)], "auto", cap=2048, tasks=tasks)
    assert fit.dropped_keys == ["k99"]  # the 950-token arith pair does not fit the p99 length
    assert fit.response_tokens_p99 == 200
    assert fit.response_tokens_p99_by_task == {"arith": 40, "date": 200}
    assert fit_to_length(lengths, [f"k{i}" for i in range(100)], "auto", cap=2048).response_tokens_p99_by_task == {}
    with pytest.raises(ValueError):
        fit_to_length(lengths, [f"k{i}" for i in range(100)], "auto", cap=2048, tasks=tasks[:-1])
    # A task with fewer than MIN_TASK_PAIRS kept pairs gets no p99 of its own (the max of a handful).
    few = fit_to_length(lengths, [f"k{i}" for i in range(100)], "auto", cap=2048,
                        tasks=["date"] * 60 + ["arith"] * 21 + ["gsm"] * 19)
    assert few.response_tokens_p99_by_task == {"arith": 40, "date": 200}


def test_more_than_one_percent_dropped_is_an_error_naming_the_field():
    keys = [f"k{i}" for i in range(10)]
    fits = {"a": fit_to_length([(10, 10)] * 9 + [(10, 90)], keys, 64, cap=2048)}
    with pytest.raises(DataError, match=r"train\.max_length: 1 of 10 training pairs"):
        check_drops(10, fits)
    ok = {"a": fit_to_length([(10, 10)] * 10, keys, 64, cap=2048)}
    assert check_drops(10, ok) == set()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gemma3-270m", "smollm2-135m"])
def test_default_data_keeps_every_prompt_token_with_the_real_tokenizers(tmp_path, model):
    """The default run's kept paths, tokenized by the real students' tokenizers at the default settings:
    at most 1% dropped, none cut, and every trained item holds its whole prompt and response + EOS."""
    from transformers import AutoTokenizer

    from qrdistill.config import load_config
    from qrdistill.models import resolve_model
    from qrdistill.stages import filter as filter_stage
    from qrdistill.stages import generate
    from qrdistill.train.data import build_items, load_kept
    from qrdistill.train.students import Student

    cfg = load_config(None, {"run_dir": str(tmp_path)})
    generate.run(cfg, tmp_path)
    filter_stage.run(cfg, tmp_path)
    items = build_items(load_kept(tmp_path / "filtered.jsonl"), cfg.train.method)
    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    student = Student.__new__(Student)  # only the tokenizer is needed to see what training feeds the model
    student.name, student.tokenizer = model, tok
    prompts, responses = [it.prompt for it in items], [it.response for it in items]
    fit = fit_to_length(student.pair_lengths(prompts, responses), [it.key for it in items],
                        cfg.train.max_length, cfg.train.max_length_cap)
    assert fit.dropped <= 0.01 * len(items)
    kept = [i for i, it in enumerate(items) if it.key not in set(fit.dropped_keys)]
    batch = student.encode([prompts[i] for i in kept], [responses[i] for i in kept], fit.max_length)
    for row, i in enumerate(kept):
        p_ids = tok(prompts[i])["input_ids"]
        r_ids = tok(responses[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p_ids) + len(r_ids)
        assert batch.input_ids[row, :n].tolist() == p_ids + r_ids
        assert int(batch.response_mask[row].sum()) == len(r_ids)
    # The question sentence itself is in what the student reads.
    assert items[kept[0]].prompt.split("\n")[0] in tok.decode(batch.input_ids[0])


def test_auto_keeps_the_union_of_drops_within_one_percent():
    """Each student's p99 may drop a different 1%; together that would be 1.5% and an error. auto
    raises the quantile until the pairs dropped by any student are at most 1% together."""
    from qrdistill.train.data import fit_students

    keys = [f"k{i}" for i in range(200)]
    a = [(100, 50)] * 198 + [(100, 300)] * 2  # student a: k198, k199 long
    b = [(100, 50)] * 196 + [(100, 300)] * 2 + [(100, 50)] * 2  # student b: k196, k197 long
    with pytest.raises(DataError, match="4 of 200"):
        # Each student alone drops its 2 (1%: its p99 covers 198 of 200); the union is 4 (2%).
        check_drops(200, {"a": fit_to_length(a, keys, "auto", 2048), "b": fit_to_length(b, keys, "auto", 2048)})
    fits = fit_students({"a": a, "b": b}, keys, "auto", {"a": 2048, "b": 2048})
    assert len(check_drops(200, fits)) <= 2
