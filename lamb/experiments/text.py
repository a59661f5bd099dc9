"""Text for the BERT stand-in: an offline English corpus, a WordPiece tokenizer, BERT's masking, batches.

The paper's headline result is BERT pre-training (masked language modelling on Wikipedia and BooksCorpus) at
batch sizes up to 64K. The book's stand-in keeps the *task* (BERT's masked-language-model objective, with its
tokenizer, its 15% masking and 80/10/10 rule, and its two sequence-length phases) and scales down the data,
which must be available offline.

Corpus
======
:func:`corpus` collects real English that ships with Python itself, so that any machine has it:

* ``pydoc_data.topics`` -- the text of the Python Language Reference and library topics that ``help()``
  shows (about 0.47 M characters on Python 3.11), one document per topic;
* the docstrings of the standard library (modules, classes, functions; test packages, ``idlelib``,
  ``lib2to3``, ``tkinter`` and ``site-packages`` left out), collected by parsing the sources with :mod:`ast`
  (nothing is imported or executed), one document per docstring of at least 40 characters, with doctest
  lines (``>>>``, ``...``) and reStructuredText underlines removed (about 1.5 M characters on Python 3.11).

It is *technical* English -- documentation prose about programming, with identifiers and some code -- not
the encyclopaedic and fictional prose of Wikipedia and BooksCorpus; the masked-language-model task on it is
the same and its loss curves behave the same way, which is what the optimizer experiments need. For more
text, ``packages=LARGE_CORPUS_PACKAGES`` adds the docstrings of installed NumPy, SciPy, scikit-learn and
Matplotlib (about 11 M more characters at the pinned versions). The corpus depends on the Python version
(and the versions of any added packages), which :class:`MLMData` records in ``info``; on one Python version
it is the same on every machine. Documents go to the validation split by a hash of their name
(:func:`_is_validation`), which does not depend on which other documents exist.

Tokenizer
=========
An uncased WordPiece tokenizer like BERT's (BERT's normalizer: lower-casing, accent stripping, Chinese
character splitting; BERT's pre-tokenizer: whitespace and punctuation), trained on the training split by
:func:`train_wordpiece_vocab` (deterministic, unlike the ``tokenizers`` package's trainer), encoded with
the ``tokenizers`` package, and cached. Special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.

Sequences and masking
=====================
Documents are tokenized, joined with ``[SEP]`` and cut into sequences ``[CLS] t_1 ... t_{L-2} [SEP]`` of
exactly ``seq_len`` tokens (packing, as RoBERTa's FULL-SENTENCES; no next-sentence task, which RoBERTa
showed is not needed); ``pack=False`` instead cuts each document on its own and pads with ``[PAD]``.
:func:`mask_tokens` applies BERT's rule (Devlin et al. 2019, section 3.1 and appendix A.1, as in
``create_pretraining_data.py``): in each sequence ``k = max(1, round(0.15 n))`` of its ``n`` maskable
positions (never ``[CLS]``, ``[SEP]``, ``[PAD]``, ...) are chosen uniformly at random, and each chosen token
is replaced by ``[MASK]`` with probability 0.8, by a random token with probability 0.1, and kept with
probability 0.1; the model is trained to predict the original token at the chosen positions only. Masks are
drawn afresh each epoch (dynamic masking) from ``rng(seed, epoch, batch)``, so runs are reproducible.

For users who are online (or have the files), :func:`load_wikitext_mlm` makes the same kind of data from
WikiText-103 (Merity et al. 2016), Wikipedia articles as in BERT's corpus, through Hugging Face ``datasets``
(the optional extra ``lamb[data]``) or from the original ``wiki.*.raw`` files.

The paper's two phases (90% of training at sequence length 128, the last 10% at 512) are scaled down per
profile by :data:`MLM_SEQ_LENS` and split by :func:`two_phase_steps`; :func:`mixed_batch_steps` gives the steps
of the paper's mixed-batch recipe, a larger batch at the short length.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lamb.experiments.data import (_cache_key, _check_int, _package_version, _save_npz_atomic, batch_stream,
                                   cache_dir, epoch_order, num_batches, rng)
from lamb.fingerprint import source_fingerprint


def _generator() -> str:
    """The fingerprint of this module's source: part of every cache key here, so that an edit to how the corpus,
    the tokenizer or the ids are made never reads what the old code made."""
    return source_fingerprint("experiments/text.py")

__all__ = [
    "IGNORE_INDEX",
    "LARGE_CORPUS_PACKAGES",
    "MLMData",
    "MLM_SEQ_LENS",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "train_wordpiece_vocab",
    "corpus",
    "load_mlm",
    "load_wikitext_mlm",
    "mask_tokens",
    "mlm_batches",
    "mlm_from_texts",
    "mlm_seq_lens",
    "mlm_stream",
    "pack_sequences",
    "two_phase_steps",
    "mixed_batch_steps",
    "wikitext_articles",
    "wikitext_lines",
]

#: BERT's special tokens, in id order: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
#: The label of positions the loss ignores (the convention of ``torch.nn.CrossEntropyLoss`` and Hugging Face).
IGNORE_INDEX = -100
#: (short, long) sequence lengths per profile: the paper's 128 and 512 (ratio 4) scaled down.
MLM_SEQ_LENS = {"smoke": (32, 128), "cpu": (64, 256), "gpu": (128, 512), "tpu": (128, 512)}
#: Installed packages whose docstrings enlarge the corpus (all are requirements of ``lamb[experiments]``).
LARGE_CORPUS_PACKAGES = ("numpy", "scipy", "sklearn", "matplotlib")

_MIN_DOCSTRING_CHARS = 40
_SKIPPED_STDLIB = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "tkinter",
                   "turtledemo", "__pycache__"}
_DOCTEST_LINE = re.compile(r"^\s*(>>>|\.\.\.)( |$)")
# reStructuredText section underlines ("*****", "=====", "-----"): markup, not language.
_RULE_LINE = re.compile(r"^\s*([=\-*~^\"'`#+_.])\1{2,}\s*$")


def _clean(text: str) -> str:
    return "\n".join(line for line in text.splitlines()
                     if not _DOCTEST_LINE.match(line) and not _RULE_LINE.match(line)).strip()


# ---------------------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------------------

def _docstrings(root: Path, prefix: str) -> list[tuple[str, str]]:
    """``(name, text)`` for every module, class and function docstring under ``root``, in sorted path order
    and source order, so the list is the same on every machine with the same sources."""
    documents = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIPPED_STDLIB.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # e.g. lib2to3 grammar fixtures written in Python 2
            continue
        nodes = [tree] + sorted((n for n in ast.walk(tree)
                                 if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
                                key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:
            text = ast.get_docstring(node, clean=True)
            if not text:
                continue
            text = _clean(text)
            if len(text) >= _MIN_DOCSTRING_CHARS:
                documents.append((f"{prefix}:{rel.as_posix()}:{getattr(node, 'lineno', 0)}", text))
    return documents


def corpus(packages: Sequence[str] = (), cache: bool = True) -> list[tuple[str, str]]:
    """The documents of the offline corpus (see the module docstring), as ``(name, text)`` pairs.

    Args:
      packages: installed packages whose docstrings are added (e.g. :data:`LARGE_CORPUS_PACKAGES`).
      cache: read and write the collected documents under :func:`lamb.experiments.data.cache_dir`.
    """
    import importlib.util

    import pydoc_data.topics

    packages = tuple(packages)
    for p in packages:
        if not isinstance(p, str) or not p.isidentifier():
            raise ValueError(f"packages must be importable top-level package names, got {p!r}")
    versions = {p: _package_version(p if p != "sklearn" else "scikit-learn") for p in packages}
    key = {"python": sys.version, "packages": versions, "min_chars": _MIN_DOCSTRING_CHARS, "format": 2,
           "generator": _generator()}
    path = cache_dir() / (_cache_key("mlm-corpus", key) + ".json")
    if cache and path.exists():
        try:
            return [tuple(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError):
            pass  # a damaged cache file: rebuild
    documents = [(f"pydoc:{topic}", _clean(text)) for topic, text in sorted(pydoc_data.topics.topics.items())]
    documents += _docstrings(Path(sysconfig.get_paths()["stdlib"]), "stdlib")
    for p in packages:
        spec = importlib.util.find_spec(p)
        if spec is None or spec.origin is None:
            raise ValueError(f"package {p!r} in packages is not installed, so its docstrings cannot be added")
        documents += _docstrings(Path(spec.origin).parent, p)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(documents), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass  # not cached; rebuilt next time (a few seconds)
    return documents


def _is_validation(name: str, validation_fraction: float) -> bool:
    """A document is in the validation split when the first 8 bytes of SHA-256 of its name, as a fraction of
    2**64, fall below ``validation_fraction``: stable across machines, processes and corpus additions."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return h < validation_fraction * 2.0**64


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

def train_wordpiece_vocab(words: "Counter[str]", vocab_size: int, min_frequency: int = 2) -> list[str]:
    """A WordPiece vocabulary learned from word counts, deterministically.

    The procedure of Hugging Face's ``WordPieceTrainer`` (byte-pair-encoding merges on WordPiece pieces):
    every word starts as its first character followed by ``##``-prefixed continuation characters
    (``"adam" -> a ##d ##a ##m``); the most frequent adjacent pair of pieces (counted over the corpus) is
    merged into one piece (``a + ##d -> ad``, ``##a + ##m -> ##am``) and added to the vocabulary, until the
    vocabulary has ``vocab_size`` entries or no pair occurs ``min_frequency`` times. Characters occurring
    fewer than ``min_frequency`` times are left out (they encode as ``[UNK]``).

    Why not ``tokenizers.trainers.WordPieceTrainer``: it breaks ties between equally frequent pairs by
    iteration order of randomly seeded hash maps, so two processes learn different vocabularies from the same
    text (measured: 5 runs at vocab_size=8192 on this corpus gave 4 different vocabularies). Here ties go to
    the lexicographically smallest pair, so the vocabulary depends only on the text. Returns the
    vocabulary: :data:`SPECIAL_TOKENS`, then all other pieces in code-point order.
    """
    import heapq
    from collections import Counter

    char_counts: Counter = Counter()
    for word, count in words.items():
        for ch in word:
            char_counts[ch] += count
    alphabet = {ch for ch, c in char_counts.items() if c >= min_frequency}
    corpus_words, freqs = [], []
    for word, count in sorted(words.items()):
        if word and all(ch in alphabet for ch in word):
            corpus_words.append([word[0]] + ["##" + ch for ch in word[1:]])
            freqs.append(count)
    vocab = set(SPECIAL_TOKENS)
    for symbols in corpus_words:
        vocab.update(symbols)
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens plus "
                         f"the {len(vocab) - len(SPECIAL_TOKENS)} single-character pieces of the corpus")

    pair_counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, (symbols, f) in enumerate(zip(corpus_words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + f
            where.setdefault(pair, set()).add(i)
    # Max-heap on (count, then the smallest pair); stale entries (count changed since pushed) are skipped.
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue
        if -neg < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]
        vocab.add(merged)
        changed = set()
        for i in sorted(where.pop(pair, ())):
            symbols, f = corpus_words[i], freqs[i]
            for p in zip(symbols, symbols[1:]):
                pair_counts[p] -= f
                changed.add(p)
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                    out.append(merged)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            corpus_words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] = pair_counts.get(p, 0) + f
                where.setdefault(p, set()).add(i)
                changed.add(p)
        pair_counts.pop(pair, None)
        for p in sorted(changed - {pair}):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
                where.pop(p, None)
    return list(SPECIAL_TOKENS) + sorted(vocab - set(SPECIAL_TOKENS))


def _bert_tokenizer(vocab: Sequence[str] | None = None):
    """An uncased BERT ``tokenizers.Tokenizer`` (normalizer, pre-tokenizer, WordPiece model and decoder)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = (models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix="##")
             if vocab is not None else models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True,
                                                      handle_chinese_chars=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    if vocab is not None:
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # so that "[MASK]" in text is one token
    return tokenizer


def build_tokenizer(texts: Sequence[str], vocab_size: int = 8192, cache: bool = True):
    """An uncased BERT-style WordPiece ``tokenizers.Tokenizer`` trained on ``texts`` (cached by their digest).

    BERT's normalizer (lower-casing, accent stripping) and pre-tokenizer (whitespace and punctuation) split
    the texts into words; :func:`train_wordpiece_vocab` learns the vocabulary from the word counts; the
    ``tokenizers`` WordPiece model encodes with it (greedy longest match, ``[UNK]`` for an unknown
    character). Special tokens have ids 0..4 in the order of :data:`SPECIAL_TOKENS`.
    """
    from collections import Counter

    from tokenizers import Tokenizer

    vocab_size = _check_int("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
    key = {"texts": _texts_digest(texts), "vocab_size": vocab_size, "tokenizers": _package_version("tokenizers"),
           "format": 2, "generator": _generator()}
    path = cache_dir() / (_cache_key("wordpiece", key) + ".json")
    if cache and path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a damaged cache file (tokenizers raises its own exception type): retrain
            pass
    splitter = _bert_tokenizer()
    words: Counter = Counter()
    for t in texts:
        words.update(w for w, _ in splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(t)))
    tokenizer = _bert_tokenizer(train_wordpiece_vocab(words, vocab_size))
    for i, token in enumerate(SPECIAL_TOKENS):  # the ids the rest of this module relies on
        assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tokenizer.save(str(tmp))
            os.replace(tmp, path)
        except OSError:
            pass
    return tokenizer


def _encode(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, without special tokens (they are added when sequences are cut)."""
    return [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


# ---------------------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------------------

def pack_sequences(documents: Sequence[np.ndarray], seq_len: int, pack: bool = True) -> np.ndarray:
    """Cut token-id ``documents`` into ``[CLS] ... [SEP]`` sequences of exactly ``seq_len`` tokens.

    ``pack=True``: the documents are joined, each followed by ``[SEP]``, and cut into consecutive pieces of
    ``seq_len - 2`` tokens (the incomplete last piece is dropped), so no position is padding. ``pack=False``:
    each document is cut on its own into pieces of at most ``seq_len - 2`` tokens and short pieces are padded
    with ``[PAD]`` after the closing ``[SEP]``.
    """
    seq_len = _check_int("seq_len", seq_len, 3)
    body = seq_len - 2
    if pack:
        stream = np.concatenate([np.append(d, SEP_ID) for d in documents] or [np.zeros(0, np.int32)])
        n = len(stream) // body
        out = np.empty((n, seq_len), dtype=np.int32)
        out[:, 0] = CLS_ID
        out[:, 1:-1] = stream[:n * body].reshape(n, body)
        out[:, -1] = SEP_ID
        return out
    rows = []
    for d in documents:
        for start in range(0, len(d), body):
            piece = d[start:start + body]
            row = np.full(seq_len, PAD_ID, dtype=np.int32)
            row[0], row[1:1 + len(piece)], row[1 + len(piece)] = CLS_ID, piece, SEP_ID
            rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype=np.int32)


@dataclass(frozen=True)
class MLMData:
    """Token sequences for masked language modelling, with their tokenizer.

    ``train`` and ``validation`` are int32 arrays of shape ``(num_sequences, seq_len)``.
    """

    seq_len: int
    train: np.ndarray
    validation: np.ndarray
    tokenizer: object = field(repr=False, compare=False)
    info: dict = field(default_factory=dict, compare=False, repr=False)

    pad_id = PAD_ID
    unk_id = UNK_ID
    cls_id = CLS_ID
    sep_id = SEP_ID
    mask_id = MASK_ID
    special_ids = tuple(range(len(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def num_train_tokens(self) -> int:
        return int(np.sum(self.train != PAD_ID))

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, split: str = "train",
                **kwargs) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of masked batches of ``split`` (see :func:`mlm_batches`)."""
        return mlm_batches(self._split(split), batch_size=batch_size, seed=seed, epoch=epoch,
                           vocab_size=self.vocab_size, **kwargs)

    def stream(self, batch_size: int, seed: int = 0, start_step: int = 0, **kwargs) -> Iterator[dict]:
        """Endless masked training batches from ``start_step`` on (see :func:`mlm_stream`)."""
        return mlm_stream(self.train, batch_size=batch_size, seed=seed, start_step=start_step,
                          vocab_size=self.vocab_size, **kwargs)

    def decode(self, ids) -> str:
        """Text of token ids (special tokens shown), for reading examples in the book."""
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=False)

    def _split(self, split: str) -> np.ndarray:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        return getattr(self, split)

    def __repr__(self) -> str:
        return (f"MLMData(seq_len={self.seq_len}, train={self.train.shape[0]} sequences, "
                f"validation={self.validation.shape[0]} sequences, vocab_size={self.vocab_size})")


def load_mlm(seq_len: int = 128, vocab_size: int = 8192, *, packages: Sequence[str] = (),
             validation_fraction: float = 0.05, pack: bool = True, cache: bool = True) -> MLMData:
    """The offline MLM data set: :func:`corpus`, split by document, a WordPiece tokenizer trained on the
    training documents, and sequences of ``seq_len`` tokens (:func:`pack_sequences`).

    The same tokenizer serves every ``seq_len``, so the two phases of BERT's recipe (``MLM_SEQ_LENS``) share
    one vocabulary and one model.
    """
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    documents = corpus(packages, cache=cache)
    is_val = [_is_validation(name, validation_fraction) for name, _ in documents]
    train_texts = [t for (_, t), v in zip(documents, is_val) if not v]
    val_texts = [t for (_, t), v in zip(documents, is_val) if v]
    info = {"source": "pydoc_data.topics and docstrings of the Python standard library"
                      + (f" and of {', '.join(packages)}" if packages else ""),
            "python": sys.version.split()[0],
            "packages": {p: _package_version(p if p != "sklearn" else "scikit-learn") for p in packages}}
    return mlm_from_texts(train_texts, val_texts, seq_len, vocab_size, pack=pack, cache=cache, info=info)


def mlm_from_texts(train_texts: Sequence[str], validation_texts: Sequence[str], seq_len: int = 128,
                   vocab_size: int = 8192, *, tokenizer=None, pack: bool = True, cache: bool = True,
                   info: dict | None = None) -> MLMData:
    """MLM sequences from any documents: a WordPiece tokenizer trained on ``train_texts`` (unless one is
    given), the token ids of both splits (cached), and ``[CLS] ... [SEP]`` sequences of ``seq_len`` tokens."""
    seq_len = _check_int("seq_len", seq_len, 3)
    train_texts, validation_texts = list(train_texts), list(validation_texts)
    if not train_texts:
        raise ValueError("train_texts is empty")
    if tokenizer is None:
        tokenizer = build_tokenizer(train_texts, vocab_size, cache=cache)
    else:
        for i, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != i:
                raise ValueError(f"tokenizer must give {token} the id {i} (SPECIAL_TOKENS order), got "
                                 f"{tokenizer.token_to_id(token)}")
    ids_key = {"train": _texts_digest(train_texts), "validation": _texts_digest(validation_texts),
               "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(), "format": 1,
               "generator": _generator()}
    path = cache_dir() / (_cache_key("mlm-ids", ids_key) + ".npz")
    arrays = None
    if cache and path.exists():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError):
            arrays = None
    if arrays is None:
        arrays = {}
        for split, texts in (("train", train_texts), ("validation", validation_texts)):
            docs = _encode(tokenizer, texts)
            arrays[f"{split}_ids"] = np.concatenate(docs) if docs else np.zeros(0, np.int32)
            arrays[f"{split}_lengths"] = np.asarray([len(d) for d in docs], dtype=np.int64)
        if cache:
            _save_npz_atomic(path, **arrays)

    def documents_of(split):
        return np.split(arrays[f"{split}_ids"], np.cumsum(arrays[f"{split}_lengths"])[:-1])

    train = pack_sequences(documents_of("train"), seq_len, pack)
    validation = pack_sequences(documents_of("validation"), seq_len, pack)
    info = dict(info or {})
    info.update({"documents": {"train": len(train_texts), "validation": len(validation_texts)},
                 "characters": {"train": sum(map(len, train_texts)), "validation": sum(map(len, validation_texts))},
                 "tokens": {"train": int(arrays["train_lengths"].sum()),
                            "validation": int(arrays["validation_lengths"].sum())},
                 "vocab_size": tokenizer.get_vocab_size(), "pack": pack})
    return MLMData(seq_len, train, validation, tokenizer, info)


# ---------------------------------------------------------------------------------------------------------------
# WikiText (the data must be on disk or reachable by Hugging Face datasets)
# ---------------------------------------------------------------------------------------------------------------

WIKITEXT_CONFIGS = ("wikitext-103-raw-v1", "wikitext-2-raw-v1", "wikitext-103-v1", "wikitext-2-v1")
_WIKITEXT_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
# An article starts with a level-1 heading line " = Title = " (level 2 is " = = Section = = ").
_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
_WIKITEXT_HELP = (
    "WikiText (Merity et al. 2016) is at https://huggingface.co/datasets/Salesforce/wikitext. Either install "
    "the optional extra (pip install \"lamb[data]\") and call load_wikitext_mlm() online, or download the "
    "parquet files of a config (e.g. wikitext-103-raw-v1/train-*.parquet, validation-*.parquet) and pass "
    "data_files={'train': [...], 'validation': [...]}, or unpack the original zip with wiki.train.raw, "
    "wiki.valid.raw, wiki.test.raw and pass root=<that folder>.")


def wikitext_articles(lines: Sequence[str]) -> list[str]:
    """Join WikiText's lines into articles: a new article starts at each level-1 heading ``" = Title = "``
    (section headings ``" = = ... = = "`` stay inside); empty lines are dropped."""
    articles, current = [], []
    for line in lines:
        if _WIKITEXT_TITLE.match(line.rstrip("\n")) and current:
            articles.append("".join(current).strip())
            current = []
        if line.strip():
            current.append(line if line.endswith("\n") else line + "\n")
    if current:
        articles.append("".join(current).strip())
    return [a for a in articles if a]


def _hf_datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError('WikiText through Hugging Face needs the datasets package: pip install "lamb[data]" '
                          f"(or pass root= with the original wiki.*.raw files). {_WIKITEXT_HELP}") from error
    return datasets


def wikitext_lines(split: str = "train", *, root=None, data_files=None, config: str = "wikitext-103-raw-v1",
                   hf_cache_dir=None) -> list[str]:
    """The text lines of one WikiText split, from the first of these that is given:

    * ``root``: a folder with the original files ``wiki.{train,valid,test}.raw`` (or ``.tokens``), read
      directly (no extra package needed);
    * ``data_files``: local parquet files in the Hugging Face layout (a column ``text``), a mapping from
      split to file(s), read with ``datasets.load_dataset("parquet", ...)``;
    * otherwise ``datasets.load_dataset("Salesforce/wikitext", config)``, which downloads unless the
      data set is in the Hugging Face cache (set ``HF_DATASETS_OFFLINE=1`` to forbid the network).
    """
    if split not in _WIKITEXT_SPLITS:
        raise ValueError(f"split must be one of {sorted(_WIKITEXT_SPLITS)}, got {split!r}")
    if root is not None:
        folder = Path(root).expanduser()
        for suffix in ("raw", "tokens"):
            path = folder / f"wiki.{_WIKITEXT_SPLITS[split]}.{suffix}"
            if path.is_file():
                return path.read_text(encoding="utf-8").splitlines(keepends=True)
        raise FileNotFoundError(f"no wiki.{_WIKITEXT_SPLITS[split]}.raw in {folder}. {_WIKITEXT_HELP}")
    datasets = _hf_datasets()
    if data_files is not None:
        if not isinstance(data_files, dict) or split not in data_files:
            raise ValueError(f"data_files must map split names to files and contain {split!r}, got {data_files!r}")
        files = [data_files[split]] if isinstance(data_files[split], (str, os.PathLike)) else data_files[split]
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"WikiText files not found: {missing}. {_WIKITEXT_HELP}")
        table = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split,
                                      cache_dir=hf_cache_dir)
    else:
        if config not in WIKITEXT_CONFIGS:
            raise ValueError(f"config must be one of {WIKITEXT_CONFIGS}, got {config!r}")
        table = datasets.load_dataset("Salesforce/wikitext", config, split=split, cache_dir=hf_cache_dir)
    if "text" not in table.column_names:
        raise ValueError(f"WikiText data must have a 'text' column, got columns {table.column_names}")
    return list(table["text"])


def load_wikitext_mlm(seq_len: int = 128, vocab_size: int = 30522, *, root=None, data_files=None,
                      config: str = "wikitext-103-raw-v1", max_articles: int | None = None, tokenizer=None,
                      pack: bool = True, cache: bool = True, hf_cache_dir=None) -> MLMData:
    """WikiText as :class:`MLMData`: articles of the train and validation splits (:func:`wikitext_lines`,
    :func:`wikitext_articles`), a WordPiece tokenizer trained on the training articles (BERT's vocabulary
    size, 30 522, by default), sequences of ``seq_len`` tokens. ``max_articles`` keeps the first articles of
    each split (for quick runs). Training the tokenizer on all of WikiText-103 (540 MB of text) takes minutes
    and is cached; pass ``tokenizer=`` (ids 0..4 for :data:`SPECIAL_TOKENS`) to reuse one."""
    source = {"root": root, "data_files": data_files, "config": config, "hf_cache_dir": hf_cache_dir}
    splits = {}
    for split in ("train", "validation"):
        articles = wikitext_articles(wikitext_lines(split, **source))
        if max_articles is not None:
            articles = articles[:_check_int("max_articles", max_articles, 1)]
        splits[split] = articles
    info = {"source": "WikiText (Merity et al., Pointer Sentinel Mixture Models, 2016)",
            "root": None if root is None else str(root), "data_files": data_files,
            "config": None if root is not None or data_files is not None else config}
    return mlm_from_texts(splits["train"], splits["validation"], seq_len, vocab_size, tokenizer=tokenizer,
                          pack=pack, cache=cache, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------------------------

def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, *, vocab_size: int, mask_id: int = MASK_ID,
                special_ids: Sequence[int] = tuple(range(len(SPECIAL_TOKENS))), mask_prob: float = 0.15,
                mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                max_predictions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-language-model corruption of a batch of token ids (Devlin et al. 2019, section 3.1).

    In each row, of the ``n`` positions whose token is not in ``special_ids`` (padding, ``[CLS]``, ``[SEP]``,
    ``[MASK]``, ``[UNK]`` are never chosen), ``k = min(max_predictions, max(1, round(mask_prob * n)))`` are
    chosen uniformly without replacement (``k = 0`` when ``n = 0``), as in BERT's
    ``create_pretraining_data.py``. Each chosen token becomes ``[MASK]`` with probability
    ``mask_token_prob`` (0.8), a token drawn uniformly from the non-special vocabulary with probability
    ``random_token_prob`` (0.1), and stays itself otherwise (0.1): the model cannot tell which inputs are
    real, so it must keep a good representation of every token.

    Returns ``(inputs, labels)``, both int32 of the shape of ``tokens``: ``labels`` is the original token at
    the chosen positions and :data:`IGNORE_INDEX` (-100) elsewhere.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 2-D integer array (batch, seq_len), got shape {tokens.shape} "
                         f"and dtype {tokens.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. lamb.experiments.data.rng(seed)), got "
                        f"{type(rng).__name__}")
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    for name, p in (("mask_prob", mask_prob), ("mask_token_prob", mask_token_prob),
                    ("random_token_prob", random_token_prob)):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    if mask_token_prob + random_token_prob > 1.0:
        raise ValueError(f"mask_token_prob + random_token_prob must be <= 1, got {mask_token_prob} + "
                         f"{random_token_prob}")
    if max_predictions is not None:
        max_predictions = _check_int("max_predictions", max_predictions, 1)
    special = np.unique(np.asarray(special_ids, dtype=np.int64))
    if mask_id not in special:
        raise ValueError(f"mask_id={mask_id} must be one of special_ids {special.tolist()} (a [MASK] input must "
                         "never be chosen again)")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokens must lie in [0, vocab_size={vocab_size}), got values in "
                         f"[{tokens.min()}, {tokens.max()}]")
    ordinary = np.setdiff1d(np.arange(vocab_size), special)  # the ids a random replacement may take
    if len(ordinary) == 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special token for random replacements")

    maskable = ~np.isin(tokens, special)
    n = maskable.sum(axis=1)
    k = np.where(n > 0, np.maximum(1, np.round(mask_prob * n).astype(np.int64)), 0)
    if max_predictions is not None:
        k = np.minimum(k, max_predictions)
    # A uniform random subset of size k of the maskable positions: rank independent uniforms (non-maskable
    # positions get +inf, so they rank last) and keep the k smallest.
    scores = np.where(maskable, rng.random(tokens.shape), np.inf)
    ranks = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
    chosen = ranks < k[:, None]

    action = rng.random(tokens.shape)
    replacement = ordinary[rng.integers(0, len(ordinary), size=tokens.shape)]
    inputs = tokens.astype(np.int32, copy=True)
    to_mask = chosen & (action < mask_token_prob)
    to_random = chosen & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)
    inputs[to_mask] = mask_id
    inputs[to_random] = replacement[to_random]
    labels = np.where(chosen, tokens, IGNORE_INDEX).astype(np.int32)
    return inputs, labels


def _masked_batch(sequences, generator, vocab_size, kwargs) -> dict[str, np.ndarray]:
    inputs, labels = mask_tokens(sequences, generator, vocab_size=vocab_size, **kwargs)
    return {"input_ids": inputs, "labels": labels, "attention_mask": (sequences != PAD_ID).astype(np.int32)}


def mlm_batches(sequences: np.ndarray, *, batch_size: int, vocab_size: int, seed: int = 0, epoch: int = 0,
                shuffle: bool = True, **mask_kwargs) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of masked batches: dicts with ``input_ids``, ``labels`` (:data:`IGNORE_INDEX` where not
    predicted) and ``attention_mask`` (1 on real tokens, 0 on padding), int32 of shape ``(batch_size, seq_len)``.

    Sequences are visited in :func:`lamb.experiments.data.epoch_order` ``(n, seed, epoch)`` (the last partial
    batch is dropped, so shapes are static); batch ``b``'s mask is drawn from ``rng(seed, epoch, b)``, so a
    new epoch masks other positions (dynamic masking) and any batch can be recomputed on its own.
    ``mask_kwargs`` go to :func:`mask_tokens`.
    """
    sequences = np.asarray(sequences)
    batch_size = _check_int("batch_size", batch_size, 1)
    if batch_size > len(sequences):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(sequences)} sequences; use a smaller "
                         "batch_size, a shorter seq_len or a larger corpus")
    order = epoch_order(len(sequences), seed, epoch, shuffle)
    for b in range(num_batches(len(sequences), batch_size)):
        yield _masked_batch(sequences[order[b * batch_size:(b + 1) * batch_size]], rng(seed, epoch, b),
                            vocab_size, mask_kwargs)


def mlm_stream(sequences: np.ndarray, *, batch_size: int, vocab_size: int, seed: int = 0, start_step: int = 0,
               shuffle: bool = True, **mask_kwargs) -> Iterator[dict[str, np.ndarray]]:
    """Endless masked batches, epoch after epoch of :func:`mlm_batches`, starting at global step
    ``start_step``: a resumed run gets exactly the batches (and masks) an uninterrupted run gets."""
    sequences = np.asarray(sequences)
    start_step = _check_int("start_step", start_step, 0)
    per_epoch = num_batches(len(sequences), _check_int("batch_size", batch_size, 1))
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(sequences)} sequences")
    step = start_step
    for (batch,) in batch_stream(sequences, batch_size=batch_size, seed=seed, start_step=start_step,
                                 shuffle=shuffle):
        epoch, b = divmod(step, per_epoch)
        yield _masked_batch(batch, rng(seed, epoch, b), vocab_size, mask_kwargs)
        step += 1


def mlm_seq_lens(profile: str | None = None) -> tuple[int, int]:
    """The (short, long) sequence lengths of :data:`MLM_SEQ_LENS` for ``profile`` (default: the current)."""
    from lamb import profiles

    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    return MLM_SEQ_LENS[profile]


def two_phase_steps(total_steps: int, long_fraction: float = 0.1) -> tuple[int, int]:
    """Steps at the short and at the long sequence length: BERT's and the paper's recipe trains the first
    90% at length 128 and the last 10% at 512 (``long_fraction=0.1``). Returns ``(short_steps, long_steps)``
    with ``long_steps = round(long_fraction * total_steps)``."""
    total_steps = _check_int("total_steps", total_steps, 1)
    if not 0.0 <= float(long_fraction) <= 1.0:
        raise ValueError(f"long_fraction must be in [0, 1], got {long_fraction!r}")
    long_steps = int(round(long_fraction * total_steps))
    return total_steps - long_steps, long_steps


def mixed_batch_steps(total_examples: int, short_batch: int, long_batch: int,
                      long_fraction: float = 0.1) -> tuple[int, int]:
    """Steps of each phase when a budget of ``total_examples`` sequences is trained with ``long_fraction`` of
    them at the long length in batches of ``long_batch`` and the rest at the short length in batches of
    ``short_batch`` (You et al. 2020, section 4.1: 65536 at length 128, then 32768 at 512).

    ``long_steps = round(long_fraction * total_examples / long_batch)`` and phase 1 gets the examples phase 2
    does not: ``short_steps = round((total_examples - long_steps * long_batch) / short_batch)`` (Python's
    ``round``, halves to even). With ``short_batch == long_batch`` this is :func:`two_phase_steps` of the
    total ``total_examples / batch`` steps when that is whole: 512M sequences (BERT's 1M steps of 512) at
    32768 give (14063, 1562), the paper's split of its 15625 steps; with 65536 in phase 1, (7032, 1562).
    """
    total_examples = _check_int("total_examples", total_examples, 1)
    short_batch = _check_int("short_batch", short_batch, 1)
    long_batch = _check_int("long_batch", long_batch, 1)
    if not 0.0 <= float(long_fraction) < 1.0:
        raise ValueError(f"long_fraction must be in [0, 1), got {long_fraction!r}")
    long_steps = int(round(long_fraction * total_examples / long_batch))
    short_steps = int(round((total_examples - long_steps * long_batch) / short_batch))
    if short_steps < 1:
        raise ValueError(f"total_examples={total_examples} leaves no full batch of {short_batch} for phase 1")
    return short_steps, long_steps
