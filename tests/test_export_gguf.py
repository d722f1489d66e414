"""`qrdistill export --what gguf`: a trained tiny student converted by llama.cpp's own converter, served by the
real llama.cpp server (llama-cpp-python) on 127.0.0.1, answers like the merged transformers model.

The students are those of tests/tiny_gguf_model.py (SentencePiece vocabularies; the byte-BPE/Unigram
students of tiny_models.py do not convert, see there), a Llama and a Gemma 3, trained for a few steps by the
real train stage. For each prompt the server's greedy completion (/v1/completions, raw prompt, temperature 0,
no repeat penalty) must be the merged model's greedy continuation token for token: the same prompt token ids
(/extras/tokenize), the same text and the same number of tokens. A random tiny model has near-ties among its
logits; where transformers' top two logits at a step are closer than float rounding can decide, the two may
pick different tokens, and the comparison ends there (GAP_F32/GAP_F16; every such case is in the assertion
message). f16 rounds the weights, so its completions may part earlier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llama_server import llama_cpp_available, llama_server
from train_helpers import make_filtered, tiny_config

from qrdistill.errors import ConfigError, QRDistillError
from qrdistill.export.gguf import check_outtype, export_gguf

PROMPTS = [
    "Question: Today is 03/15/2021. What is the date one week from today?\nAnswer:",
    "Jane has 12 apples and buys 30 more, so",
    "First, compute 7 * 8 = 56. Then",
    "The capital of France is",
]
MAX_TOKENS = 20
#: Largest top-2 logit gap of transformers at which llama.cpp may pick the other token: float32 summation
#: order, and f16 weights. Measured on these models: every f32 completion exact; in f16 one in four parts at a
#: tie of gap 8e-5 (and untrained, a float32 tie of 8e-5 too).
GAP_F32 = 1e-3
GAP_F16 = 5e-3
ALIAS = "tiny"


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory) -> list[str]:
    from tiny_gguf_model import make_tiny_gguf_students

    return make_tiny_gguf_students(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gguf_models, one_thread) -> Path:
    from qrdistill.stages import train as train_stage

    run_dir = tmp_path_factory.mktemp("run")
    make_filtered(run_dir, limit=3)
    llama, gemma = gguf_models
    students = [
        {"name": "llama", "model": llama, "lr": 2.0e-2, "lora": {"r": 4, "alpha": 8}},
        {"name": "gemma", "model": gemma, "lr": 2.0e-2, "lora": {"r": 4, "alpha": 8}},
    ]
    train_stage.run(tiny_config(run_dir, gguf_models, students=students, epochs=1), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def merged(trained, tmp_path_factory) -> Path:
    from qrdistill.export.model import export_models

    out = tmp_path_factory.mktemp("merged")
    export_models(trained, out)
    return out


@pytest.fixture(scope="module")
def f32(trained, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gguf")
    return out, export_gguf(trained, out, outtype="f32")


def _need_server() -> None:
    if not llama_cpp_available():
        pytest.fail("llama-cpp-python is not installed: pip install 'qrdistill[server]' (CI must install it)")


def _post(server, path: str, body: dict) -> dict:
    import httpx

    r = httpx.post(server.base_url.removesuffix("/v1") + path, json=body, timeout=60)
    r.raise_for_status()
    return r.json()


def _hf_greedy(model, tok, prompt: str) -> tuple[list[int], list[int], list[float]]:
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=MAX_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    gen = out.sequences[0, len(ids):].tolist()
    gaps = []
    for step in out.scores:
        top = step[0].topk(2).values
        gaps.append(float(top[0] - top[1]))
    if gen and gen[-1] == tok.eos_token_id:
        gen = gen[:-1]  # llama.cpp stops before EOS and does not count it
    return ids, gen, gaps


def _compare(server, merged_dir: Path, gap: float) -> list[str]:
    """Check every prompt; returns a line per prompt saying exact or where a near-tie parted them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    seen = []
    for prompt in PROMPTS:
        ids, gen, gaps = _hf_greedy(model, tok, prompt)
        assert _post(server, "/extras/tokenize", {"input": prompt})["tokens"] == ids, prompt
        resp = _post(server, "/v1/completions", {
            "model": ALIAS, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "top_k": 1,
            "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": 0})
        text, n = resp["choices"][0]["text"], resp["usage"]["completion_tokens"]
        head = tok.decode(ids, skip_special_tokens=True)
        texts = []
        for i in range(len(gen) + 1):
            full = tok.decode(ids + gen[:i], skip_special_tokens=True)
            assert full.startswith(head)
            texts.append(full[len(head):])
        if text == texts[-1] and n == len(gen):
            seen.append(f"exact ({n} tokens)")
            continue
        agree = max(i for i, t in enumerate(texts) if text.startswith(t))
        assert agree < len(gen), f"{prompt!r}: llama.cpp {text!r} ({n} tokens) vs transformers {texts[-1]!r}"
        assert gaps[agree] < gap, (
            f"{prompt!r}: llama.cpp and transformers part at token {agree}, where transformers' top-2 logit gap "
            f"is {gaps[agree]:.2e} (not a near-tie): llama.cpp {text!r} vs transformers {texts[-1]!r}")
        seen.append(f"same {agree} tokens, then a near-tie (gap {gaps[agree]:.1e})")
    return seen


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(900)
@pytest.mark.parametrize("student", ["llama", "gemma"])
def test_f32_gguf_served_by_llama_cpp_matches_merged_model(student, f32, merged):
    _need_server()
    out, result = f32
    path = Path(result["students"][student]["gguf"])
    assert path == out / f"{student}-f32.gguf" and path.is_file()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["what"] == "gguf" and info["outtype"] == "f32" and info["student"] == student
    assert info["converter"].startswith(("llama-cpp-python ", "QRDISTILL_LLAMA_CPP"))
    with llama_server(path, n_ctx=512, model_alias=ALIAS) as server:
        seen = _compare(server, merged / student, GAP_F32)
    print(student, "f32:", "; ".join(seen))
    # A broken model whose logits all tie would pass the near-tie rule vacuously: nearly all must be exact.
    assert sum(s.startswith("exact") for s in seen) >= len(PROMPTS) - 1, seen


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(900)
def test_f16_and_quantised_gguf(trained, merged, tmp_path):
    _need_server()
    result = export_gguf(trained, tmp_path, students=["gemma"])  # f16: the default
    path = Path(result["students"]["gemma"]["gguf"])
    assert path.name == "gemma-f16.gguf" and result["outtype"] == "f16"
    with llama_server(path, n_ctx=512, model_alias=ALIAS) as server:
        seen = _compare(server, merged / "gemma", GAP_F16)
    print("gemma f16:", "; ".join(seen))
    # A broken model whose logits all tie would pass the near-tie rule vacuously: most must be exact.
    assert sum(s.startswith("exact") for s in seen) >= len(PROMPTS) // 2, seen

    q = export_gguf(trained, tmp_path, students=["gemma"], outtype="Q4_K_M")
    qpath = Path(q["students"]["gemma"]["gguf"])
    assert qpath.name == "gemma-q4_k_m.gguf" and "quantize" in q["students"]["gemma"]["seconds"]
    with llama_server(qpath, n_ctx=512, model_alias=ALIAS) as server:
        resp = _post(server, "/v1/completions", {"model": ALIAS, "prompt": PROMPTS[0], "max_tokens": 8,
                                                 "temperature": 0.0})
    assert resp["usage"]["completion_tokens"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".gguf-export.lock", "gemma-f16.gguf", "gemma-f16.json", "gemma-q4_k_m.gguf", "gemma-q4_k_m.json"]


def test_output_types():
    assert check_outtype("F16") == ("f16", None) and check_outtype("q8_0") == ("q8_0", None)
    with pytest.raises(ConfigError, match=r"--quant 'q9_z': expected one of f32, f16, bf16, q8_0"):
        check_outtype("q9_z")
    if llama_cpp_available():
        name, ftype = check_outtype("q4_k_m")
        assert name == "q4_k_m" and isinstance(ftype, int)
        with pytest.raises(ConfigError, match="importance-matrix, ternary, MoE"):
            check_outtype("iq2_xxs")


def test_bad_output_type_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--quant"):
        export_gguf(tmp_path / "no-run", tmp_path / "o", outtype="int3")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_an_unknown_bpe_tokenizer_is_one_clear_error(models, tmp_path):
    """tiny_models' byte-level BPE: llama.cpp's converter does not know its pre-tokenizer (why the GGUF tests
    use tests/tiny_gguf_model.py)."""
    from qrdistill.export.gguf import convert, converter_tree

    tree, _ = converter_tree()
    with pytest.raises(QRDistillError, match=r"student llama: llama\.cpp's converter failed .*pre-tokenizer"):
        convert(tree, Path(models[0]), tmp_path / "x.gguf", "f32", "llama")
    assert not (tmp_path / "x.gguf").exists()


def _sdist(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_converter_from_an_sdist_takes_only_the_converter(tmp_path, monkeypatch):
    from qrdistill.export.gguf import LLAMA_CPP_ENV, converter_tree

    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    sdist = _sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz", {
        root + "convert_hf_to_gguf.py": b"print('converter')\n",
        root + "conversion/__init__.py": b"",
        root + "gguf-py/gguf/__init__.py": b"",
        root + "src/llama.cpp": b"// not needed",
        root + "gguf-py/../../../../escape.py": b"x",
        "llama_cpp_python-9.9.9/setup.py": b"",
    }, links=(root + "conversion/link.py",))
    monkeypatch.setenv("QRDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(LLAMA_CPP_ENV, str(sdist))
    tree, source = converter_tree()
    assert source == f"{LLAMA_CPP_ENV} {sdist}" and tree.parent == tmp_path / "cache"
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() or p.is_symlink())
    assert files == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not list(tmp_path.rglob("escape.py"))
    assert converter_tree()[0] == tree  # cached


def test_converter_location_errors(tmp_path, monkeypatch):
    from qrdistill.export.gguf import LLAMA_CPP_ENV, converter_tree

    monkeypatch.setenv("QRDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(LLAMA_CPP_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=f"{LLAMA_CPP_ENV}=.*nowhere: no such file or folder"):
        converter_tree()
    monkeypatch.setenv(LLAMA_CPP_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="no convert_hf_to_gguf.py in that folder"):
        converter_tree()
    bad = _sdist(tmp_path / "other.tar.gz", {"pkg/setup.py": b""})
    monkeypatch.setenv(LLAMA_CPP_ENV, str(bad))
    with pytest.raises(QRDistillError, match=r"other\.tar\.gz: no convert_hf_to_gguf\.py in it"):
        converter_tree()
