"""Shared fixtures. Real data lives in ../shared/data (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# Tests must never reach a hub: the machines have no internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"{SHARED_DATA} is missing: the real benchmark files must sit in ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gemma_path() -> str:
    """Local un-quantized Gemma-3-270M (converted once from the bundled GGUF, then cached)."""
    from qrdistill.models import resolve_model

    return resolve_model("gemma3-270m")


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    from qrdistill.models import gemma_gguf_path

    return gemma_gguf_path()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from qrdistill.models import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one thread avoids OpenMP spin-waits on the shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    """Two tiny random students (Llama and GPT-2 shaped, different widths), built once per test module."""
    from tiny_models import make_tiny_students

    return make_tiny_students(tmp_path_factory.mktemp("tiny"))
