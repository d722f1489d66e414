"""Tiny students that llama.cpp's own converter (convert_hf_to_gguf.py) can turn into GGUF files.

The students of `tiny_models.py` cannot be converted: their tokenizers are `tokenizers` BPE/Unigram models
trained here, and the converter accepts a BPE vocabulary only when a hash of how it cuts a fixed text is in
its table of known pre-tokenizers (it raises "BPE pre-tokenizer was not recognized" otherwise). A
SentencePiece model (tokenizer.model) it reads directly, as it does for Llama 2 and Gemma. So these two
students use SentencePiece vocabularies trained here on the same corpus:

* ``tiny-spm-llama``: LlamaForCausalLM (hidden 64, 2 layers), SentencePiece BPE with a dummy prefix
  (Llama 2 style), BOS added.
* ``tiny-gemma3``: Gemma3ForCausalLM (hidden 64, 2 layers, tied head), SentencePiece BPE without dummy
  prefix and with Gemma's special tokens and ids (Gemma 3 style: the architecture of the real student).

No byte fallback: a random model's greedy continuation is then made of whole pieces, so the text
llama.cpp returns and the text transformers decodes can be compared exactly (byte tokens that do not
form UTF-8 are dropped by one and replaced by the other). Every character of the corpus is a piece; prompts
must keep to those characters: on one outside a vocabulary without byte fallback llama.cpp's tokenizer
aborts the server, where transformers maps it to <unk> (extend CORPUS before building to widen it).
"""

from __future__ import annotations

import io
from pathlib import Path

from tiny_models import CORPUS

#: Special pieces: id and text (the Gemma ids are the real Gemma tokenizer's).
_LLAMA_SPECIAL = {"pad": (0, "<pad>"), "unk": (1, "<unk>"), "bos": (2, "<s>"), "eos": (3, "</s>")}
_GEMMA_SPECIAL = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}


def _sentencepiece(path: Path, dummy_prefix: bool, special: dict[str, tuple[int, str]]) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    kw = {f"{k}_id": i for k, (i, _) in special.items()} | {f"{k}_piece": p for k, (_, p) in special.items()}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=buf,
        vocab_size=300,
        hard_vocab_limit=False,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=False,
        split_digits=True,
        add_dummy_prefix=dummy_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
        **kw,
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(buf.getvalue())


def _tokenizer(cls, path: Path, special: dict[str, tuple[int, str]]):
    names = {f"{k}_token": p for k, (_, p) in special.items()}
    return cls.from_pretrained(str(path), add_bos_token=True, add_eos_token=False, **names)


def make_tiny_gguf_students(tmp_dir) -> list[str]:
    """Build both students under `tmp_dir`; returns their directories [tiny-spm-llama, tiny-gemma3]."""
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GemmaTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaTokenizer,
    )

    root = Path(tmp_dir)
    paths = []

    out = root / "tiny-spm-llama"
    _sentencepiece(out, True, _LLAMA_SPECIAL)
    tok = _tokenizer(LlamaTokenizer, out, _LLAMA_SPECIAL)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
    )
    tok.save_pretrained(str(out))
    llama.save_pretrained(str(out))
    paths.append(str(out))

    out = root / "tiny-gemma3"
    _sentencepiece(out, False, _GEMMA_SPECIAL)
    tok = _tokenizer(GemmaTokenizer, out, _GEMMA_SPECIAL)
    torch.manual_seed(1)
    gemma = Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            max_position_embeddings=1024,
            sliding_window=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    tok.save_pretrained(str(out))
    gemma.save_pretrained(str(out))
    paths.append(str(out))
    return paths
