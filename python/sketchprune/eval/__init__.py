"""Evaluation of (pruned) language models."""

from .perplexity import perplexity

__all__ = ["perplexity"]
