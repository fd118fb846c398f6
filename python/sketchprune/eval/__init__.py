"""Evaluation of (pruned) language models: perplexity and top-1 next-token accuracy."""

from .perplexity import NextTokenScores, evaluate, perplexity, score_next_tokens

__all__ = ["perplexity", "evaluate", "score_next_tokens", "NextTokenScores"]
