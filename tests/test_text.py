"""lamb.experiments.text: the offline corpus, the WordPiece tokenizer, BERT's masking, MLM batches."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lamb.experiments import data, text


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One private cache for the module: the corpus and tokenizer are built once (a few seconds)."""
    path = tmp_path_factory.mktemp("lamb-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMB_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def mlm(cache):
    return text.load_mlm(seq_len=64, vocab_size=4096)


# ----------------------------------------------------------------------------------------------------------------
# Corpus and tokenizer
# ----------------------------------------------------------------------------------------------------------------

def test_corpus_is_real_english_from_python_itself(cache):
    import pydoc_data.topics

    documents = text.corpus()
    names = [n for n, _ in documents]
    assert len(set(names)) == len(names)
    assert sum(n.startswith("pydoc:") for n in names) == len(pydoc_data.topics.topics)
    assert sum(n.startswith("stdlib:") for n in names) > 1000
    assert not any("/test/" in n or "idlelib" in n for n in names)
    joined = "\n".join(t for _, t in documents)
    assert len(joined) > 1_000_000
    assert not any(line.lstrip().startswith(">>> ") for line in joined.splitlines())
    words = joined.lower().split()
    # English function words are frequent, as in any English prose (Zipf: 'the' is the most common word)
    the_share = sum(w == "the" for w in words) / len(words)
    assert the_share > 0.03
    assert text.corpus() == documents  # cached copy equals the built one


def test_tokenizer_special_tokens_and_round_trip(mlm):
    tok = mlm.tokenizer
    assert [tok.token_to_id(t) for t in text.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert mlm.vocab_size == 4096
    sentence = "The interpreter raises an exception when the argument is not valid."
    ids = tok.encode(sentence, add_special_tokens=False).ids
    assert text.UNK_ID not in ids
    # uncased WordPiece: decoding gives back the lower-cased sentence (the decoder rejoins '##' pieces)
    assert tok.decode(ids).replace(" .", ".") == sentence.lower()
    # common words are whole tokens, and an unseen word is cut into pieces rather than dropped
    assert tok.token_to_id("the") is not None and tok.token_to_id("exception") is not None
    pieces = tok.encode("hyperparameterization", add_special_tokens=False).tokens
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])


def test_wordpiece_training_by_hand():
    """The classic BPE example (Sennrich et al. 2016) in WordPiece pieces, merged by hand:
    low x5, lower x2, newest x6, widest x3. Pair counts: ##e ##s = ##s ##t = 9 (the largest; the tie goes to
    the smaller pair, ##e ##s), then ##es ##t = 9, then ##w ##e = 8, ..."""
    from collections import Counter

    words = Counter({"low": 5, "lower": 2, "newest": 6, "widest": 3})
    base = set(text.SPECIAL_TOKENS) | {"l", "##o", "##w", "##e", "##r", "n", "##s", "##t", "w", "##i", "##d"}
    assert set(text.train_wordpiece_vocab(words, len(base))) == base
    assert set(text.train_wordpiece_vocab(words, len(base) + 1)) == base | {"##es"}
    assert set(text.train_wordpiece_vocab(words, len(base) + 2)) == base | {"##es", "##est"}
    # next: l ##o (7) and ##o ##w (7) tie, l < ##o is false in code points ('#' < 'l'), so ##o ##w -> ##ow
    assert set(text.train_wordpiece_vocab(words, len(base) + 3)) == base | {"##es", "##est", "##ow"}
    vocab = text.train_wordpiece_vocab(words, 1000)
    assert vocab[:5] == list(text.SPECIAL_TOKENS) and vocab[5:] == sorted(vocab[5:])
    # merging stops when no pair occurs min_frequency (2) times: whole frequent words end up in the vocabulary
    assert {"low", "newest", "widest"} <= set(vocab)
    with pytest.raises(ValueError, match="vocab_size=10"):
        text.train_wordpiece_vocab(words, 10)


def test_load_mlm_splits_sequences_and_two_lengths(mlm, cache):
    assert mlm.train.dtype == np.int32 and mlm.train.shape[1] == 64
    assert (mlm.train[:, 0] == text.CLS_ID).all() and (mlm.train[:, -1] == text.SEP_ID).all()
    assert not (mlm.train == text.PAD_ID).any()  # packed: no padding
    assert mlm.train.max() < mlm.vocab_size
    assert len(mlm.validation) > 0 and len(mlm.train) > 10 * len(mlm.validation)
    info = mlm.info
    # packing keeps every token: sequences hold (seq_len - 2) tokens of the [SEP]-joined documents each
    assert len(mlm.train) == (info["tokens"]["train"] + info["documents"]["train"]) // 62
    long = text.load_mlm(seq_len=256, vocab_size=4096)
    assert long.tokenizer.to_str() == mlm.tokenizer.to_str()  # one vocabulary for both phases
    assert long.train.shape == ((info["tokens"]["train"] + info["documents"]["train"]) // 254, 256)
    # the long sequences are the same token stream cut differently
    np.testing.assert_array_equal(long.train[0, 1:63], mlm.train[0, 1:63])


def test_validation_split_is_by_document_and_stable():
    names = [f"doc{i}" for i in range(4000)]
    val = [text._is_validation(n, 0.05) for n in names]
    assert 0.04 < np.mean(val) < 0.06
    # adding documents does not move the others
    assert [text._is_validation(n, 0.05) for n in names[:100]] == val[:100]


def test_unpacked_sequences_are_padded_and_padding_never_masked(cache):
    ds = text.load_mlm(seq_len=64, vocab_size=4096, pack=False)
    assert (ds.train == text.PAD_ID).any()
    batch = next(ds.batches(batch_size=512, seed=0))
    pad = batch["attention_mask"] == 0
    np.testing.assert_array_equal(pad, ds.train[data.epoch_order(len(ds.train), 0, 0)[:512]] == text.PAD_ID)
    assert (batch["labels"][pad] == text.IGNORE_INDEX).all()
    assert (batch["input_ids"][pad] == text.PAD_ID).all()


def test_pack_sequences_by_hand():
    docs = [np.array([10, 11, 12]), np.array([20, 21]), np.array([30, 31, 32, 33])]
    C, S, P = text.CLS_ID, text.SEP_ID, text.PAD_ID
    # stream: 10 11 12 S 20 21 S 30 31 32 33 S  (12 tokens) -> pieces of 4, all complete
    np.testing.assert_array_equal(text.pack_sequences(docs, 6), [[C, 10, 11, 12, S, S],
                                                                 [C, 20, 21, S, 30, S],
                                                                 [C, 31, 32, 33, S, S]])
    np.testing.assert_array_equal(text.pack_sequences(docs, 5, pack=False), [[C, 10, 11, 12, S],
                                                                             [C, 20, 21, S, P],
                                                                             [C, 30, 31, 32, S],
                                                                             [C, 33, S, P, P]])
    with pytest.raises(ValueError, match="seq_len"):
        text.pack_sequences(docs, 2)


def _fingerprint_script():
    # The corpus code path (sorted files, source-ordered docstrings) on one stdlib package, to keep it quick.
    return (
        "import hashlib, sysconfig, numpy as np\n"
        "from pathlib import Path\n"
        "from lamb.experiments import text\n"
        "docs = text._docstrings(Path(sysconfig.get_paths()['stdlib']) / 'email', 'stdlib')\n"
        "h = hashlib.sha256(repr(docs).encode())\n"
        "tok = text.build_tokenizer([t for _, t in docs], vocab_size=1200, cache=False)\n"
        "h.update(tok.to_str().encode())\n"
        "ids = text.pack_sequences([np.asarray(e.ids) for e in tok.encode_batch([t for _, t in docs],"
        " add_special_tokens=False)], 32)\n"
        "for b in text.mlm_batches(ids, batch_size=64, vocab_size=1200, seed=3, epoch=1):\n"
        "    for v in b.values(): h.update(v.tobytes())\n"
        "print(len(docs), tok.get_vocab_size(), h.hexdigest())\n")


def test_corpus_tokenizer_and_batches_identical_across_processes(tmp_path):
    """Two fresh interpreters with different hash seeds (and tokenizers' multithreaded trainer) build the
    same corpus, the same tokenizer and the same masked batches."""
    procs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, LAMB_DATA_DIR=str(tmp_path / hash_seed))
        procs.append(subprocess.Popen([sys.executable, "-c", _fingerprint_script()], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert outputs[0] == outputs[1]
    num_docs, vocab_size, digest = outputs[0].split()
    assert int(num_docs) > 50 and int(vocab_size) == 1200 and len(digest) == 64


# ----------------------------------------------------------------------------------------------------------------
# Masking: BERT's 15% and 80/10/10 rule
# ----------------------------------------------------------------------------------------------------------------

VOCAB = 1000
SPECIAL = tuple(range(5))


def _random_tokens(seed=0, batch=2000, length=128):
    g = np.random.default_rng(seed)
    tokens = g.integers(5, VOCAB, size=(batch, length))
    tokens[:, 0], tokens[:, -1] = text.CLS_ID, text.SEP_ID
    # variable-length rows: padding after a random end, and a few [UNK] and inner [SEP]
    ends = g.integers(2, length, size=batch)
    tokens[np.arange(length) > ends[:, None]] = text.PAD_ID
    tokens[np.arange(batch), ends] = text.SEP_ID
    tokens[g.random(tokens.shape) < 0.01] = text.UNK_ID
    return tokens


def test_mask_tokens_80_10_10_rule_statistics():
    tokens = _random_tokens(batch=12000)
    inputs, labels = text.mask_tokens(tokens, data.rng(0), vocab_size=VOCAB)
    chosen = labels != text.IGNORE_INDEX
    maskable = ~np.isin(tokens, SPECIAL)

    # exactly k = max(1, round(0.15 n)) predictions per row, only at maskable positions, labelled with the
    # original token
    n = maskable.sum(1)
    np.testing.assert_array_equal(chosen.sum(1), np.where(n > 0, np.maximum(1, np.round(0.15 * n)), 0))
    assert not (chosen & ~maskable).any()
    np.testing.assert_array_equal(labels[chosen], tokens[chosen])
    # unchosen positions are untouched
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])

    total = chosen.sum()
    assert total > 100_000
    masked = (inputs == text.MASK_ID) & chosen
    kept = (inputs == tokens) & chosen
    replaced = chosen & ~masked & ~kept
    ordinary = VOCAB - len(SPECIAL)
    # a random replacement equals the original with probability 1/ordinary, and then counts as kept
    expected = {"mask": 0.8, "kept": 0.1 + 0.1 / ordinary, "replaced": 0.1 * (1 - 1 / ordinary)}
    observed = {"mask": masked.sum() / total, "kept": kept.sum() / total, "replaced": replaced.sum() / total}
    for key in expected:
        # the binomial standard deviation is below 0.0013 here; 0.006 is > 4.5 sigma, and any other rule
        # (90/5/5, 80/20/0, 100/0/0) is off by >= 0.05
        assert abs(observed[key] - expected[key]) < 0.006, (key, observed[key], expected[key])

    # random replacements are never special tokens and are uniform over the ordinary vocabulary
    replacement_ids = inputs[replaced]
    assert not np.isin(replacement_ids, SPECIAL).any()
    from scipy import stats

    counts = np.bincount(replacement_ids - len(SPECIAL), minlength=ordinary)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_mask_tokens_choice_is_uniform_over_positions():
    """Every maskable position is equally likely to be chosen (no bias to the start of the sequence)."""
    tokens = np.full((20000, 22), 7)
    tokens[:, 0], tokens[:, -1] = text.CLS_ID, text.SEP_ID
    _, labels = text.mask_tokens(tokens, data.rng(1), vocab_size=VOCAB)
    per_position = (labels != text.IGNORE_INDEX)[:, 1:-1].sum(0)
    # round(0.15 * 20) = 3 of the 20 positions in every row
    assert per_position.sum() == 3 * 20000
    from scipy import stats

    assert stats.chisquare(per_position).pvalue > 1e-4


def test_mask_tokens_never_masks_special_tokens_or_padding():
    tokens = _random_tokens(seed=2, batch=300)
    for seed in range(5):
        inputs, labels = text.mask_tokens(tokens, data.rng(seed), vocab_size=VOCAB)
        special = np.isin(tokens, SPECIAL)
        assert (labels[special] == text.IGNORE_INDEX).all()
        np.testing.assert_array_equal(inputs[special], tokens[special])
    # a row with nothing maskable gets no prediction
    only_special = np.array([[text.CLS_ID, text.SEP_ID, text.PAD_ID, text.PAD_ID]])
    inputs, labels = text.mask_tokens(only_special, data.rng(0), vocab_size=VOCAB)
    assert (labels == text.IGNORE_INDEX).all() and np.array_equal(inputs, only_special)


def test_mask_tokens_deterministic_and_options():
    tokens = _random_tokens(seed=3, batch=50)
    a = text.mask_tokens(tokens, data.rng(4), vocab_size=VOCAB)
    b = text.mask_tokens(tokens, data.rng(4), vocab_size=VOCAB)
    c = text.mask_tokens(tokens, data.rng(5), vocab_size=VOCAB)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # max_predictions caps the count per row (BERT: 20 at length 128, 80 at 512)
    _, labels = text.mask_tokens(tokens, data.rng(4), vocab_size=VOCAB, max_predictions=3)
    assert ((labels != text.IGNORE_INDEX).sum(1) <= 3).all()
    # mask_token_prob=1: every chosen token becomes [MASK]
    inputs, labels = text.mask_tokens(tokens, data.rng(4), vocab_size=VOCAB, mask_token_prob=1.0,
                                      random_token_prob=0.0)
    np.testing.assert_array_equal(inputs == text.MASK_ID, labels != text.IGNORE_INDEX)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mask_prob": 1.5}, ValueError, "mask_prob"),
    ({"mask_token_prob": 0.95, "random_token_prob": 0.1}, ValueError, "mask_token_prob"),
    ({"vocab_size": 50}, ValueError, "vocab_size=50"),
    ({"mask_id": 7}, ValueError, "mask_id"),
    ({"max_predictions": 0}, ValueError, "max_predictions"),
])
def test_mask_tokens_bad_arguments(kwargs, error, match):
    kwargs = {"vocab_size": VOCAB, **kwargs}
    with pytest.raises(error, match=match):
        text.mask_tokens(_random_tokens(batch=4), data.rng(0), **kwargs)


def test_mask_tokens_needs_a_generator_and_a_matrix():
    with pytest.raises(TypeError, match="rng"):
        text.mask_tokens(_random_tokens(batch=4), 0, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="2-D"):
        text.mask_tokens(np.arange(10), data.rng(0), vocab_size=VOCAB)


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------

def test_mlm_batches_recomputable_and_dynamic(mlm):
    first = list(mlm.batches(batch_size=32, seed=1, epoch=0))
    assert len(first) == len(mlm.train) // 32
    for key in ("input_ids", "labels", "attention_mask"):
        assert first[0][key].shape == (32, 64) and first[0][key].dtype == np.int32
    # batch b of epoch e is mask_tokens(sequences in epoch order, rng(seed, e, b)): recomputed independently
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, 0]))).permutation(len(mlm.train))
    rows = mlm.train[order[2 * 32:3 * 32]]
    inputs, labels = text.mask_tokens(rows, np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, 0, 2]))),
                                      vocab_size=mlm.vocab_size)
    np.testing.assert_array_equal(first[2]["input_ids"], inputs)
    np.testing.assert_array_equal(first[2]["labels"], labels)
    again = list(mlm.batches(batch_size=32, seed=1, epoch=0))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    # the next epoch visits other sequences and masks other positions
    nxt = next(mlm.batches(batch_size=32, seed=1, epoch=1))
    assert not np.array_equal(nxt["labels"], first[0]["labels"])


def test_mlm_stream_resumes_exactly(mlm):
    small = mlm.train[:100]
    full = [b for b, _ in zip(text.mlm_stream(small, batch_size=16, vocab_size=mlm.vocab_size, seed=2),
                              range(14))]
    epoch1 = list(text.mlm_batches(small, batch_size=16, vocab_size=mlm.vocab_size, seed=2, epoch=1))
    np.testing.assert_array_equal(full[6]["input_ids"], epoch1[0]["input_ids"])  # 6 batches per epoch
    for start in (4, 6, 9):
        resumed = [b for b, _ in zip(text.mlm_stream(small, batch_size=16, vocab_size=mlm.vocab_size, seed=2,
                                                     start_step=start), range(14 - start))]
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
            np.testing.assert_array_equal(a["labels"], b["labels"])


def test_mlm_batch_size_errors(mlm):
    with pytest.raises(ValueError, match="batch_size"):
        next(mlm.batches(batch_size=len(mlm.train) + 1))
    with pytest.raises(ValueError, match="split"):
        next(mlm.batches(batch_size=2, split="test"))


def test_two_phase_steps():
    assert text.two_phase_steps(1000) == (900, 100)
    assert text.two_phase_steps(7, long_fraction=0.0) == (7, 0)
    short, long = text.two_phase_steps(12345)
    assert short + long == 12345 and long == round(1234.5)
    with pytest.raises(ValueError, match="long_fraction"):
        text.two_phase_steps(10, long_fraction=1.5)
    assert all(b == 4 * a for a, b in text.MLM_SEQ_LENS.values())  # the paper's 128:512 ratio


# ----------------------------------------------------------------------------------------------------------------
# WikiText on local fixtures in its two real formats
# ----------------------------------------------------------------------------------------------------------------

def _wikitext_rows(seed, articles=6):
    """Rows as in WikiText-103-raw (one line per row, headings ' = Title = ', sections ' = = S = = ',
    blank rows between paragraphs), with English sentences."""
    g = np.random.default_rng(seed)
    sentences = ["The river flows through the old town and into the sea .",
                 "In 1887 the company built a railway station near the harbour .",
                 "The album was released in the United States and reached number five on the chart .",
                 "Critics praised the game for its story , music and characters .",
                 "The species lives in forests and feeds on insects and small fruits .",
                 "After the war , the city was rebuilt with a new cathedral and a museum ."]
    rows = []
    for a in range(articles):
        rows += ["", f" = Article {seed} {a} = \n", ""]
        for section in range(2):
            rows += [f" = = Section {section} = = \n", ""]
            rows.append(" " + " ".join(g.choice(sentences, size=4)) + " \n")
            rows.append("")
    return rows


def test_wikitext_articles_split_at_titles():
    rows = _wikitext_rows(0, articles=3)
    articles = text.wikitext_articles(rows)
    assert len(articles) == 3
    assert all(a.startswith(f"= Article 0 {i} =") for i, a in enumerate(articles))
    assert all(a.count("= = Section") == 2 for a in articles)  # sections stay inside their article


def test_wikitext_from_original_raw_files(tmp_path, cache):
    root = tmp_path / "wikitext-103-raw"
    root.mkdir()
    (root / "wiki.train.raw").write_text("".join(r if r else " \n" for r in _wikitext_rows(1, 40)), "utf-8")
    (root / "wiki.valid.raw").write_text("".join(r if r else " \n" for r in _wikitext_rows(2, 5)), "utf-8")
    ds = text.load_wikitext_mlm(seq_len=32, vocab_size=300, root=root)
    assert ds.info["documents"] == {"train": 40, "validation": 5}
    assert ds.train.shape[1] == 32 and len(ds.train) > 10 and len(ds.validation) > 0
    tokens = ds.tokenizer.encode("the river flows through the old town", add_special_tokens=False).tokens
    assert tokens == ["the", "river", "flows", "through", "the", "old", "town"]  # frequent words are whole
    batch = next(ds.batches(batch_size=8, seed=0))
    assert batch["input_ids"].shape == (8, 32)
    with pytest.raises(FileNotFoundError, match="huggingface.co/datasets/Salesforce/wikitext"):
        text.load_wikitext_mlm(root=tmp_path / "missing")


def test_wikitext_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "lamb\[data\]"'):
        text.wikitext_lines("train")


def test_wikitext_from_parquet_with_hf_datasets_offline(tmp_path, monkeypatch, cache):
    """The Hugging Face layout (parquet files with a 'text' column) read by datasets, offline; it gives the
    same sequences as the same lines in the original raw-file format."""
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = tmp_path / "wikitext-103-raw-v1"
    folder.mkdir()
    files = {}
    for split, seed, n in (("train", 1, 40), ("validation", 2, 5)):
        files[split] = folder / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.table({"text": _wikitext_rows(seed, n)}), files[split])
    from_parquet = text.load_wikitext_mlm(seq_len=32, vocab_size=300, data_files=files,
                                          hf_cache_dir=tmp_path / "hf-cache")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "wiki.train.raw").write_text("".join(_wikitext_rows(1, 40)), "utf-8")
    (raw / "wiki.valid.raw").write_text("".join(_wikitext_rows(2, 5)), "utf-8")
    from_raw = text.load_wikitext_mlm(seq_len=32, vocab_size=300, root=raw)
    np.testing.assert_array_equal(from_parquet.train, from_raw.train)
    np.testing.assert_array_equal(from_parquet.validation, from_raw.validation)


def test_mixed_batch_steps_by_hand():
    # The paper's budget: BERT's 1M steps of 512 = 512M sequences, 10% at length 512.
    # Regular 32K: 51.2M / 32768 = 1562.5 -> 1562 (half to even); (512M - 1562 * 32768) / 32768 = 14063.
    assert text.mixed_batch_steps(512_000_000, 32768, 32768) == (14063, 1562) == text.two_phase_steps(15625)
    # Mixed 64K/32K: (512M - 51,183,616) / 65536 = 7031.5 -> 7032; 7032 + 1562 = 8594 (the paper reports 8599).
    assert text.mixed_batch_steps(512_000_000, 65536, 32768) == (7032, 1562)
    # Small numbers: 1000 examples, 100 at the long length in batches of 10, 900 in batches of 20.
    assert text.mixed_batch_steps(1000, 20, 10) == (45, 10)
    assert text.mixed_batch_steps(1000, 20, 10, long_fraction=0.0) == (50, 0)


def test_mixed_batch_steps_rejects_bad_input():
    with pytest.raises(ValueError, match="long_fraction"):
        text.mixed_batch_steps(1000, 20, 10, long_fraction=1.0)
    with pytest.raises(ValueError, match="no full batch"):
        text.mixed_batch_steps(10, 64, 10)
    with pytest.raises(ValueError, match="short_batch"):
        text.mixed_batch_steps(1000, 0, 10)
