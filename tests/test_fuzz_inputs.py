"""Fuzz tests (issue 10): whatever a config or data file holds, the readers answer with the project's own
error (QRDistillError, which the CLI prints as one line) or a value, and never take long.

Inputs: random text and bytes, random YAML documents built from JSON-like values, mutations of a valid
config, random `--set` overrides, and random JSONL lines for the artifact readers. A hypothesis deadline
bounds the time of every single example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrdistill.config import RunConfig, load_config
from qrdistill.errors import QRDistillError
from qrdistill.io import iter_jsonl_lines, read_json, read_jsonl

FUZZ = settings(
    max_examples=150,
    deadline=5000,  # ms per example; generous because the test machines share their cores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Field names the config knows, so random documents reach past "unknown field" into real validation.
KEYS = [
    "run_dir",
    "seed",
    "seeds",
    "tasks",
    "name",
    "split",
    "path",
    "limit",
    "difficulty",
    "generate",
    "teacher",
    "kind",
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "base_url",
    "api_key_env",
    "mode",
    "styles",
    "custom_styles",
    "samples_per_style",
    "system_prompt",
    "filter",
    "judge",
    "prompt",
    "enabled",
    "train",
    "evaluate",
    "stages",
    "students",
    "batch_size",
    "openai",
    "simulated",
    "llm",
    "steps",
    "none",
    "cot",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["openai", "simulated", "llm", "steps", "none", "cot", "{question}", "{oops}", "sk-abc"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def valid_config() -> dict[str, Any]:
    return {
        "run_dir": "runs/x",
        "seed": 3,
        "tasks": [{"name": "procedural_arith", "limit": 2, "difficulty": [1]}],
        "generate": {
            "styles": ["cot", "mine"],
            "custom_styles": {"mine": "Q: {question}"},
            "samples_per_style": 2,
            "teacher": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"},
        },
        "filter": {"judge": {"kind": "llm", "prompt": "{question} / {path}"}},
        "evaluate": {"limit": 3},
    }


def paths_in(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_in(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_in(v, prefix + (i,))
    return out


def replaced(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: replaced(obj[head], rest, value)}
    out = list(obj)
    out[head] = replaced(obj[head], rest, value)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_text(scratch: Path, data: str | bytes) -> None:
    p = scratch / "c.yaml"
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_config(p), RunConfig)
    except QRDistillError:
        pass


YAML_TRICKS = [
    "a: &x [*x]\n",
    "&a [*a]\n",
    "!!python/object:os.system {}\n",
    "? [a]\n: 1\n",
    "seed: !!binary '!!!'\n",
    "seed: 2024-13-45\n",
    "seed: !!int " + "9" * 6000 + "\n",
    "[" * 5000 + "\n",
    "{a: " * 3000 + "\n",
    "seed: 1\nseed: 2\n",
    "%YAML 9.9\n---\n",
    "--- a\n--- b\n",
    "seed: !!timestamp 99999-01-01\n",
    "tasks: &t [{name: procedural_arith}, *t]\n",
    "\ufeffseed: 1\n",
    "seed: .nan\n",
    "generate: {teacher: }\n",
]


@FUZZ
@given(
    st.one_of(
        st.text(max_size=300),
        st.sampled_from(YAML_TRICKS),
        st.lists(st.sampled_from(YAML_TRICKS + ["seed: 1\n", "  - x\n", ": :\n", "\t\n"]), max_size=6).map(
            "".join
        ),
    )
)
def test_fuzz_config_text(scratch, text):
    load_text(scratch, text)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_config_bytes(scratch, raw):
    load_text(scratch, raw)


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_fuzz_config_documents(scratch, doc):
    load_text(scratch, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.data())
def test_fuzz_config_mutations(scratch, data):
    cfg = valid_config()
    path = data.draw(st.sampled_from(paths_in(cfg)[1:]))
    load_text(scratch, yaml.safe_dump(replaced(cfg, path, data.draw(values)), allow_unicode=True))


@FUZZ
@given(
    st.dictionaries(
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=4).map(".".join) | keys, values, max_size=4
    )
)
def test_fuzz_config_overrides(overrides):
    try:
        assert isinstance(load_config(None, overrides), RunConfig)
    except QRDistillError:
        pass


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
#: Fields of a paths.jsonl row with any JSON value: the filter's reader must type-check each.
path_rows = st.fixed_dictionaries(
    {k: json_values for k in ("qid", "task", "style", "prompt", "response", "correct")},
    optional={
        "meta": json_values,
        "question": json_values,
        "sample": json_values,
        "choices": json_values,
        "gold_text": json_values,
    },
)
JSONL_TRICKS = [
    b"[" * 100_000,
    b'{"a": 1' + b"0" * 6000 + b"}",
    b"\xff\xfe",
    b"NaN",
    b'{"a": NaN}',
    b"\x00",
    b'"\\ud800"',
    b"{}" * 3,
    b"\r",
    b"\xef\xbb\xbf{}",
]
jsonl_lines = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(JSONL_TRICKS),
    json_values.map(lambda v: json.dumps(v).encode()),
    path_rows.map(lambda r: json.dumps(r).encode()),
)


def _readers(path: Path) -> None:
    for read in (
        lambda: read_jsonl(path),
        lambda: list(iter_jsonl_lines(path, required=("qid", "task"))),
        lambda: read_json(path),
    ):
        try:
            out = read()
        except QRDistillError:
            continue
        assert out is None or isinstance(out, (list, dict, str, int, float, bool))


@FUZZ
@given(st.lists(jsonl_lines, max_size=8))
def test_fuzz_jsonl_readers(scratch, lines):
    path = scratch / "paths.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _readers(path)


@FUZZ
@given(st.lists(jsonl_lines, max_size=8))
def test_fuzz_paths_reader(scratch, lines):
    from qrdistill.stages.filter import read_paths

    path = scratch / "paths.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        read_paths(path)
    except QRDistillError:
        pass


@FUZZ
@given(st.lists(path_rows, min_size=1, max_size=5))
def test_fuzz_paths_rows_are_type_checked(scratch, rows):
    """Whatever the filter's reader accepts has the types the filter relies on."""
    from qrdistill.stages.filter import read_paths

    path = scratch / "paths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        got = read_paths(path)
    except QRDistillError:
        return
    for r in got:
        assert all(isinstance(r[k], str) for k in ("qid", "task", "style", "prompt", "response"))
        assert isinstance(r["correct"], bool) and isinstance(r["meta"], dict)
        assert not isinstance(r.get("sample", 0), bool) and isinstance(r.get("sample", 0), int)
        assert isinstance(r.get("question", ""), (str, type(None)))
        assert isinstance(r.get("choices", []), (list, type(None))) and isinstance(
            r["meta"].get("record") or {}, dict
        )
