"""Markup stripping, dump parsing and token batching (no downloads)."""

import pytest
import torch

from sketchprune.datasets import parse_dump, split_texts, strip_wiki_markup, token_batches


def test_links_templates_refs():
    s = ("{{Infobox person|name=X|born={{birth date|1900|1|1}}}}'''Ada''' was a [[mathematics|mathematician]] "
         "from [[London]].<ref name=\"a\">Some book, p. 3</ref> She wrote<ref name=b/> notes.")
    assert strip_wiki_markup(s) == "Ada was a mathematician from London. She wrote notes."


def test_files_categories_tables_comments():
    s = ("Intro text.<!-- hidden -->\n[[File:Foo.jpg|thumb|A [[picture]] caption]]\n"
         "{| class=\"wikitable\"\n|-\n| a || b\n|}\n== History ==\n* First item\n# Second item\n"
         "See [http://example.com the site] and [http://example.org].\n[[Category:People]]\n[[de:Ada]]")
    out = strip_wiki_markup(s)
    assert out == "Intro text.\n\nHistory\nFirst item\nSecond item\nSee the site and ."
    for bad in ("File", "thumb", "wikitable", "Category", "hidden", "http", "[[", "]]", "{{", "=="):
        assert bad not in out


def test_entities_and_italics():
    assert strip_wiki_markup("''Italic'' &amp; &quot;quoted&quot;&nbsp;x") == 'Italic & "quoted"\xa0x'


_DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Alpha</title><ns>0</ns><revision><text>'''Alpha''' is a [[letter]]. {LONG}</text></revision></page>
<page><title>Beta</title><ns>0</ns><redirect title="Alpha"/><revision><text>#REDIRECT [[Alpha]]</text></revision></page>
<page><title>Gamma</title><ns>0</ns><revision><text>#redirect [[Alpha]] {LONG}</text></revision></page>
<page><title>Talk:Alpha</title><ns>1</ns><revision><text>Discussion {LONG}</text></revision></page>
<page><title>Delta</title><ns>0</ns><revision><text>Short.</text></revision></page>
</mediawiki>""".replace("{LONG}", "word " * 60)


def test_parse_dump_keeps_articles_drops_redirects():
    pages = parse_dump(_DUMP)
    assert [t for t, _ in pages] == ["Alpha"]
    assert pages[0][1].startswith("Alpha is a letter.")


class _CharTok:
    """A stand-in tokenizer: one token per character."""
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 1000 + 1 for c in text]}


def test_splits_disjoint_and_cover():
    texts = [f"doc{i}" for i in range(21)]
    c, h = split_texts(texts, "calib"), split_texts(texts, "heldout")
    assert not set(c) & set(h) and set(c) | set(h) == set(texts)
    assert len(h) == 5
    with pytest.raises(ValueError):
        split_texts(texts, "train")


def test_token_batches_shapes_and_disjoint():
    # each document is made of a single distinct character, so token ids identify documents
    texts = [chr(65 + i) * 50 for i in range(40)]
    tok = _CharTok()
    cal = token_batches(tok, texts, seq_len=16, n_seqs=20, split="calib", seed=1)
    held = token_batches(tok, texts, seq_len=16, n_seqs=10, split="heldout", seed=1)
    assert cal.shape == (20, 16) and held.shape == (10, 16) and cal.dtype == torch.long
    ids_c, ids_h = set(cal.unique().tolist()) - {0}, set(held.unique().tolist()) - {0}
    assert ids_c and ids_h and not ids_c & ids_h
    assert torch.equal(cal, token_batches(tok, texts, 16, 20, split="calib", seed=1))
    assert not torch.equal(cal, token_batches(tok, texts, 16, 20, split="calib", seed=2))
    with pytest.raises(ValueError, match="only"):
        token_batches(tok, texts, seq_len=1000, n_seqs=100, split="heldout")
