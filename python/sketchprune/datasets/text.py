"""Text sources by name: ``wiki``, ``austen`` or a UTF-8 text FILE -> fixed token windows.

Every source is cut into two **disjoint, fixed** slices, so evaluation never sees calibration
tokens:

==========  ======================================================  ====================================
source      documents                                               evaluation slice (the rest calibrates)
==========  ======================================================  ====================================
``wiki``    the 106 Wikipedia articles (:func:`wikipedia_texts`)    every 4th article (indices 3, 7, 11, ...)
``austen``  the six novels' 275 chapters in publication order        every 4th chapter (indices 3, 7, 11, ...)
            (:func:`~sketchprune.datasets.austen.austen_texts`)
FILE        the file cut into four consecutive quarters (by          the last quarter
            characters, each cut moved to the next line break)
==========  ======================================================  ====================================

Within a slice, documents are shuffled by ``seed``, tokenized, joined with the tokenizer's EOS
token and cut into consecutive windows of ``seq_len`` tokens
(:func:`~sketchprune.datasets.wikipedia.token_batches`).  The names ``wiki`` and ``austen`` take
precedence over files of the same name (write ``./wiki`` for such a file).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch

from .wikipedia import split_texts, token_batches, wikipedia_texts

__all__ = ["TEXT_SOURCES", "SPLITS", "source_documents", "file_documents", "text_tokens", "describe_split"]

TEXT_SOURCES = ("wiki", "austen")
SPLITS = ("calib", "heldout")
HELDOUT_FRACTION = 0.25


def file_documents(path: str | PathLike, parts: int = 4) -> list[str]:
    """A UTF-8 text file cut into ``parts`` consecutive pieces of about equal length (in
    characters; each cut moved forward to the next line break when there is one)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"text file {str(p)!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"text source {str(p)!r} is a directory, not a text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {str(p)!r} is not UTF-8 text ({e})") from None
    if not text.strip():
        raise ValueError(f"text file {str(p)!r} is empty")
    cuts, n = [0], len(text)
    for k in range(1, parts):
        c = max(cuts[-1], n * k // parts)
        nl = text.find("\n", c)
        cuts.append(nl + 1 if nl != -1 else c)
    cuts.append(n)
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def source_documents(source: str | PathLike) -> list[str]:
    """The documents of a named source (fetched and cached on first use) or of a text file."""
    if isinstance(source, str) and source == "wiki":
        return wikipedia_texts()
    if isinstance(source, str) and source == "austen":
        from .austen import austen_texts

        return austen_texts()
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"text source {str(source)!r} is neither one of {', '.join(TEXT_SOURCES)} "
                                f"nor an existing file")
    return file_documents(p)


def describe_split(source, split: str) -> str:
    """A one-line description of which part of ``source`` the ``split`` is (for reports)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held = split == "heldout"
    if source in TEXT_SOURCES:
        unit = "article" if source == "wiki" else "chapter"
        return (f"every 4th {unit} (indices 3, 7, ...)" if held else
                f"all {unit}s except every 4th (indices 0-2, 4-6, ...)")
    return "the last quarter of the file" if held else "the first three quarters of the file"


def text_tokens(source: str | PathLike, tokenizer, seq_len: int, n_tokens: int, split: str,
                seed: int = 0) -> torch.LongTensor:
    """(n_tokens // seq_len, seq_len) token ids from ``split`` (``"calib"`` or ``"heldout"``) of
    ``source``; errors name the source and what to change when it is too short."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if int(seq_len) < 2:
        raise ValueError(f"sequence length must be at least 2, got {seq_len}")
    if int(n_tokens) < int(seq_len):
        raise ValueError(f"asked for {n_tokens} tokens of {source}, less than one sequence of {seq_len} tokens")
    if tokenizer is None:
        raise ValueError(f"tokenizing {source} needs a tokenizer (the model has none)")
    docs = source_documents(source)
    n_seqs = int(n_tokens) // int(seq_len)
    what = "calibration" if split == "calib" else "evaluation"
    try:
        return token_batches(tokenizer, docs, int(seq_len), n_seqs, split=split, seed=seed,
                             heldout_fraction=HELDOUT_FRACTION)
    except ValueError as e:
        total = _split_token_count(tokenizer, split_texts(docs, split, HELDOUT_FRACTION))
        if total < seq_len:
            raise ValueError(f"the {what} slice of {source} ({describe_split(source, split)}) has only {total} "
                             f"tokens, shorter than the sequence length {seq_len}") from None
        raise ValueError(f"the {what} slice of {source} ({describe_split(source, split)}) has only {total} "
                         f"tokens, fewer than the {n_seqs} x {seq_len} = {n_seqs * seq_len} asked for; ask for "
                         f"at most {total // seq_len * seq_len} tokens") from e


def _split_token_count(tokenizer, docs) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    return sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + (eos is not None) for d in docs)
