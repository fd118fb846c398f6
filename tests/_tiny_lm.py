"""A tiny random Llama with a byte-level tokenizer saved as a model directory, and synthetic text,
for the end-to-end tests of ``sketchprune prune`` / ``eval`` and ``sketchprune.prune`` (no network).

A plain module (``tests/`` is on sys.path through conftest.py).
"""

import os
import random
import sys

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "prune"))
from prune_models import make_model  # noqa: E402

BYTE_VOCAB = 257  # 256 byte symbols + <eos>
WORDS = ("the", "of", "and", "a", "to", "in", "was", "her", "she", "not", "be", "that", "it", "had", "as",
         "with", "for", "his", "you", "he", "my", "all", "very", "but", "at", "on", "could", "have", "miss")


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per UTF-8 byte, plus ``<eos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_lm(seed=0, **overrides):
    """(model fp32 eval, tokenizer): the tiny test Llama with a 257-token vocabulary."""
    import torch

    model = make_model(dtype=torch.float32, seed=seed, vocab_size=BYTE_VOCAB, max_position_embeddings=256,
                       **overrides)
    return model, byte_tokenizer()


def save_tiny_lm(path, seed=0, **overrides):
    model, tok = tiny_lm(seed, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_text(path, n_chars=6000, seed=0):
    """Pseudo-English lines of random common words (one byte per character)."""
    rng = random.Random(seed)
    lines, n = [], 0
    while n < n_chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) + "."
        lines.append(line)
        n += len(line) + 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
