"""Two tiny causal-LM students of different architectures and tokenizers, built offline.

`make_tiny_students(tmp_dir)` writes, with `save_pretrained`, directories that
`AutoModelForCausalLM` / `AutoTokenizer` (and so `load_students`) load by path
exactly like a hub model:

* ``tiny-llama``: LlamaForCausalLM (hidden 64, 2 layers) with a GPT-2 style
  byte-level BPE tokenizer ("Ġword" tokens, digits merged, any unicode), BOS
  added to prompts like Gemma's.
* ``tiny-gpt2``: GPT2LMHeadModel (hidden 32, 2 layers) with a SentencePiece
  style Unigram tokenizer ("▁word", one token per digit, unknown characters
  to <unk>) and a different vocabulary size, no BOS.

So the same text is cut at different places by the two students, which is
what span alignment has to handle. Weights are seeded: the same call gives
the same models.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Question: Today is 03/15/2021. What is the date one week from today?",
    "Answer: Let's think step by step.",
    "One week from 03/15/2021 is 03/22/2021. The answer is (B) 03/22/2021.",
    "Jane has 12 apples and buys 30 more, so she has 12 + 30 = 42 apples. The answer is 42.",
    "Would a pear sink in water? Pears are less dense than water, so no. The answer is no.",
    "The capital of France is Paris; it lies on the Seine. The answer is yes.",
    "First, compute 7 * 8 = 56. Then 56 - 6 = 50. Finally 50 / 2 = 25. The answer is 25.",
    "def solution():\n    return sum([1, 2, 3])\n\nThe answer is 6.",
    "Fact: the Earth orbits the Sun once every 365.25 days.",
    "Working backward from the options: (A) 01/01/2020, (C) 12/31/2019.",
]


def _byte_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def _unigram(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok, {"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _save(tok, special: dict, model, out: Path) -> str:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    model.save_pretrained(str(out))
    return str(out)


def make_tiny_students(tmp_dir) -> list[str]:
    """Build both tiny students under `tmp_dir`; returns their directories [tiny-llama, tiny-gpt2]."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = Path(tmp_dir)
    paths = []

    tok, special = _byte_bpe(vocab_size=420)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tok.token_to_id("<s>"),
            eos_token_id=tok.token_to_id("</s>"),
            pad_token_id=tok.token_to_id("<pad>"),
            tie_word_embeddings=False,
        )
    )
    paths.append(_save(tok, special, llama, root / "tiny-llama"))

    tok, special = _unigram(vocab_size=150)
    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tok.get_vocab_size(),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=1024,
            # No dropout: two forwards of the same batch must give the same numbers in tests.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.token_to_id("<eos>"),
            eos_token_id=tok.token_to_id("<eos>"),
            pad_token_id=tok.token_to_id("<pad>"),
        )
    )
    paths.append(_save(tok, special, gpt2, root / "tiny-gpt2"))
    return paths
