"""What the benchmark scripts share: BERT-base's parameter shapes and glibc's malloc settings."""

from __future__ import annotations

import os
import sys


def bert_base_shapes(layers: int = 12, vocab: int = 30522, hidden: int = 768, intermediate: int = 3072,
                     positions: int = 512) -> list[tuple[int, ...]]:
    """Parameter shapes of BERT-base (Devlin et al. 2019) in the order of Hugging Face's BertModel."""
    shapes = [(vocab, hidden), (positions, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        for _ in range(3):                                      # query, key, value
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(hidden, hidden), (hidden,), (hidden,), (hidden,)]              # attention output, LayerNorm
        shapes += [(intermediate, hidden), (intermediate,)]                        # intermediate
        shapes += [(hidden, intermediate), (hidden,), (hidden,), (hidden,)]        # output, LayerNorm
    shapes += [(hidden, hidden), (hidden,)]                     # pooler
    return shapes


# glibc hands blocks over 32 MB straight back to the kernel, so every step re-faults the temporaries an
# optimizer allocates (the word-embedding tensor alone is 94 MB) page by page; on a VM that costs more than the
# arithmetic and varies from run to run. These keep freed memory in the process, for every optimizer alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def tune_malloc(enabled: bool = True) -> str:
    """Re-executes this script with MALLOC_ENV set, unless it is set already or ``enabled`` is false; returns a
    line saying which settings are in force."""
    if enabled and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    return "malloc tuning: " + (", ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) if enabled else "off")
