"""Fixtures shared by several test files."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_mlm():
    """A masked-LM data set of 40 random sentences of 60 words from a 32-word text (32 for training, 8 for
    validation), sequences of 16 tokens, a 64-token vocabulary: small enough to train a BERT in seconds."""
    from lamb.experiments import text

    words = ("the optimizer scales each layer by the ratio of the weight norm to the update norm so that "
             "large batches train as fast as small ones when the learning rate is tuned ").split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, 60)) for _ in range(40)]
    return text.mlm_from_texts(docs[:32], docs[32:], seq_len=16, vocab_size=64, cache=False)
