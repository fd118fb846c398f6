"""Plain-text Wikipedia articles (the 106-article dump shipped as test data in gensim's wheel),
and fixed calibration / held-out token batches drawn from them.

The gensim wheel is downloaded once into the cache (:mod:`sketchprune.datasets.cache`); the data
file is read from the wheel (a zip) without installing gensim, the markup stripped, redirects and
non-article pages dropped, and the texts cached as ``wikipedia_articles.json``.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
import zipfile

import torch

from .cache import cache_dir, fetch_wheel, read_json_cache, reading_cached, write_json_cache

__all__ = ["strip_wiki_markup", "parse_dump", "wikipedia_texts", "split_texts", "token_batches"]

_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_CACHE_NAME = "wikipedia_articles.json"


def _remove_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced ``open_ ... close`` spans (possibly nested), e.g. templates ``{{...}}``."""
    out, depth, i, n = [], 0, 0, len(text)
    lo, lc = len(open_), len(close)
    while i < n:
        if text.startswith(open_, i):
            depth += 1
            i += lo
        elif depth and text.startswith(close, i):
            depth -= 1
            i += lc
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


_LINK_DROP = re.compile(r"\[\[(?:File|Image|Category|Media|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]",
                        re.IGNORECASE)


def strip_wiki_markup(text: str) -> str:
    """Wikitext -> plain text: drops templates, tables, references, comments, tags, files and
    categories; keeps link labels, headings' text and list items' text."""
    text = html.unescape(text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.DOTALL)
    text = re.sub(r"<(math|gallery|timeline|syntaxhighlight|source|score)[^>]*>.*?</\1>", "", text,
                  flags=re.DOTALL | re.IGNORECASE)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _LINK_DROP.sub("", text)
    text = re.sub(r"\[\[([^\[\]|]*)\|([^\[\]]*)\]\]", r"\2", text)   # [[target|label]]
    text = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", text)                 # [[target]]
    text = re.sub(r"\[https?://[^\s\]]+ ([^\]]*)\]", r"\1", text)     # [url label]
    text = re.sub(r"\[https?://[^\s\]]+\]", "", text)
    text = re.sub(r"<[^>]+>", "", text)                                # remaining tags
    text = re.sub(r"'{2,}", "", text)                                  # bold / italics
    text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.MULTILINE)  # headings
    text = re.sub(r"^[*#:;]+\s*", "", text, flags=re.MULTILINE)        # list markers
    text = re.sub(r"^__[A-Z]+__$", "", text, flags=re.MULTILINE)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def parse_dump(xml_text: str, min_chars: int = 200) -> list[tuple[str, str]]:
    """(title, plain text) of the main-namespace, non-redirect pages of a MediaWiki XML dump."""
    root = ET.fromstring(xml_text)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    out = []
    for page in root.iter(ns + "page"):
        if page.find(ns + "redirect") is not None or (page.findtext(ns + "ns") or "0") != "0":
            continue
        raw = page.findtext(f"{ns}revision/{ns}text") or ""
        if re.match(r"\s*#redirect", raw, re.IGNORECASE):
            continue
        body = strip_wiki_markup(raw)
        if len(body) >= min_chars:
            out.append((page.findtext(ns + "title") or "", body))
    return out


def wikipedia_texts() -> list[str]:
    """The dump's articles as plain text (cached after the first extraction)."""
    path = cache_dir() / _CACHE_NAME
    texts = read_json_cache(path, "texts")
    if texts is not None:
        return texts
    whl = fetch_wheel("gensim")
    with reading_cached(whl, "wheel"), zipfile.ZipFile(whl) as z:
        xml_text = bz2.decompress(z.read(_MEMBER)).decode("utf-8")
    pages = parse_dump(xml_text)
    write_json_cache(path, {"source": f"{whl.name}:{_MEMBER}", "titles": [t for t, _ in pages],
                            "texts": [b for _, b in pages]})
    return [b for _, b in pages]


def split_texts(texts, split: str, heldout_fraction: float = 0.25) -> list[str]:
    """A fixed, disjoint split by document: every 4th article (for 0.25) is held out."""
    if split not in ("calib", "heldout"):
        raise ValueError(f"split must be 'calib' or 'heldout', got {split!r}")
    if not 0 < heldout_fraction < 1:
        raise ValueError("heldout_fraction must be in (0, 1)")
    period = max(2, round(1 / heldout_fraction))
    held = [i % period == period - 1 for i in range(len(texts))]
    return [t for t, h in zip(texts, held) if h == (split == "heldout")]


def token_batches(tokenizer, texts, seq_len: int, n_seqs: int, split: str = "calib", seed: int = 0,
                  heldout_fraction: float = 0.25) -> torch.LongTensor:
    """(n_seqs, seq_len) token ids: the split's articles (shuffled by ``seed``) tokenized,
    joined with the EOS token and cut into consecutive windows.  Calibration and held-out
    windows come from disjoint sets of articles."""
    docs = split_texts(texts, split, heldout_fraction)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    eos = getattr(tokenizer, "eos_token_id", None)
    need = seq_len * n_seqs
    ids: list[int] = []
    for i in order:
        ids.extend(tokenizer(docs[i], add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the {split!r} split has only {len(ids)} tokens, need {n_seqs} x {seq_len} = {need}")
    return torch.tensor(ids[:need], dtype=torch.long).view(n_seqs, seq_len)
