"""Tests of the real-data layer: reading, tokenization, corpora, bucketing, datasets.

Real-corpus tests need ``TEXTVAE_DATA_DIR`` (e.g. ``TEXTVAE_DATA_DIR=/work/shared/data``) and are
skipped without it. Every test runs with ``TEXTVAE_CACHE`` in a temporary folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from textvae.config import DataConfig
from textvae.data import corpora, datasets
from textvae.data.batch import collate
from textvae.data.batching import BucketBatchSampler, padding_fraction
from textvae.data.corpora import CORPORA, CorpusSpec, list_corpora, resolve_corpus
from textvae.data.datasets import load_dataset
from textvae.data.reading import read_corpus, read_lines
from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID
from textvae.data.tokenization import (TOKENIZERS, Tokenizer, create_tokenizer, list_tokenizers, register_tokenizer,
                                       unk_rate)
from textvae.errors import TextVAEError
from textvae.reduction import token_counts

torch.set_num_threads(1)

DATA_DIR = os.environ.get("TEXTVAE_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA_DIR or not Path(DATA_DIR).is_dir(),
    reason="real-corpus test: set TEXTVAE_DATA_DIR to a folder with ptb/, yelp_short_shen2017/, dailydialog/",
)

LINES = [
    "the cat sat on the mat",
    "a dog <unk> barked at the cat",
    "the <unk> dog sat",
    "cats and dogs don't mix",
    "the mat was red and the cat was black",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- tokenization


@pytest.mark.parametrize("kind", list_tokenizers())
def test_special_token_ids(kind):
    tok = create_tokenizer(kind, LINES, bpe_vocab_size=60)
    assert [tok.hf.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
    for line in LINES:
        ids = tok.encode(line)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert not set(ids[1:-1]) & {PAD_ID, BOS_ID, EOS_ID}
    assert tok.encode_batch(LINES) == [tok.encode(line) for line in LINES]


def test_word_fast_path_equals_library_encoding():
    tok = create_tokenizer("word", LINES[:3])
    tests = LINES + ["  <s> weird\t spacing </s> <pad> ", "zebra <unk>"]
    assert tok.encode_batch(tests) == [e.ids for e in tok.hf.encode_batch(tests)]


def test_literal_unk_is_unk_id_not_a_word():
    tok = create_tokenizer("word", LINES)
    words = {w for line in LINES for w in line.split()} - {"<unk>"}
    assert tok.vocab_size == len(words) + len(SPECIAL_TOKENS)
    ids = tok.encode("a dog <unk> barked")
    assert ids[3] == UNK_ID and ids.count(UNK_ID) == 1
    assert tok.encode("zebra")[1] == UNK_ID  # unseen word
    bpe = create_tokenizer("bpe", LINES, bpe_vocab_size=60)
    assert bpe.encode("the <unk> dog").count(UNK_ID) == 1  # one token, not "<", "u", "n", ...


@pytest.mark.parametrize("kind", list_tokenizers())
def test_decode_never_shows_pad_bos_eos(kind):
    tok = create_tokenizer(kind, LINES, bpe_vocab_size=60)
    rng = np.random.default_rng(0)
    for _ in range(300):  # arbitrary id sequences, as a sampler might produce
        ids = rng.integers(0, tok.vocab_size, size=rng.integers(0, 12)).tolist()
        text = tok.decode(ids)
        assert not any(t in text for t in ("<pad>", "<s>", "</s>"))
    cat = tok.encode("cat")[1:-1]
    # stops at the first </s>; drops <s> / <pad>; keeps <unk>
    assert tok.decode([BOS_ID, *cat, PAD_ID, UNK_ID, EOS_ID, *cat]) == "cat <unk>"


def test_bpe_round_trip():
    tok = create_tokenizer("bpe", LINES, bpe_vocab_size=50)
    tests = LINES + ["  the   cat  ", "mat cat sat", "dogsat thecat"]  # unseen words, seen characters
    encoded = tok.encode_batch(tests)
    assert any(len(ids) > len(t.split()) + 2 for ids, t in zip(encoded, tests))  # words were split
    for text, ids in zip(tests, encoded):
        assert tok.decode(ids) == " ".join(text.split())


@pytest.fixture
def wordpiece_kind(monkeypatch):
    """Registers ``wordpiece`` (Wu et al. 2016's pieces, ``##`` marking a word's continuation) for
    this test only: a new tokenizer kind is one registered class."""
    monkeypatch.setattr(TOKENIZERS, "_entries", dict(TOKENIZERS._entries))

    @register_tokenizer("wordpiece")
    class WordPieceKind:
        model = models.WordPiece

        def __init__(self, bpe_vocab_size: int = 8000):
            self.vocab_size = bpe_vocab_size

        def train(self, lines):
            hf = HFTokenizer(models.WordPiece(unk_token="<unk>"))
            hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            hf.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=self.vocab_size, show_progress=False,
                                                                    special_tokens=SPECIAL_TOKENS))
            return hf

        @staticmethod
        def join(pieces):
            return " ".join(pieces).replace(" ##", "")

    return "wordpiece"


def test_a_registered_tokenizer_kind_trains_saves_and_loads(wordpiece_kind, tmp_path):
    assert list_tokenizers() == ["bpe", "word", "wordpiece"]
    tok = create_tokenizer(wordpiece_kind, LINES, bpe_vocab_size=60, max_vocab=None, min_freq=1)
    tok.save(tmp_path / "tok.json")
    again = Tokenizer.load(tmp_path / "tok.json")
    assert tok.kind == again.kind == wordpiece_kind
    tests = LINES + ["dogsat thecat"]  # unseen words of seen pieces
    assert [again.decode(again.encode(t)) for t in tests] == [" ".join(t.split()) for t in tests]
    with pytest.raises(TextVAEError, match="tokenizer 'wordpiece': unknown parameter"):
        TOKENIZERS.build(wordpiece_kind, {"merges": 3})


def test_word_vocabulary_cutoffs():
    lines = ["b b b a a c", "c d"]  # counts: b 3, a 2, c 2, d 1
    assert create_tokenizer("word", lines, min_freq=2).vocab_size == 4 + 3
    tok = create_tokenizer("word", lines, max_vocab=4 + 2)  # b, then a before c (tie, alphabetical)
    assert [tok.encode(w)[1] for w in ("b", "a", "c", "d")] == [4, 5, UNK_ID, UNK_ID]
    with pytest.raises(TextVAEError, match="bpe_vocab_size"):
        create_tokenizer("bpe", lines, max_vocab=100)
    with pytest.raises(TextVAEError, match=r"unknown tokenizer .chars.; valid: bpe, word \(a part of your own: "):
        create_tokenizer("chars", lines)


@pytest.mark.parametrize("kind", list_tokenizers())
def test_save_load(tmp_path, kind):
    tok = create_tokenizer(kind, LINES, bpe_vocab_size=60)
    tok.save(tmp_path / "tok.json")
    again = Tokenizer.load(tmp_path / "tok.json")
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    tests = LINES + ["an unseen zebra"]
    encoded = tok.encode_batch(tests)
    assert again.encode_batch(tests) == encoded
    assert [again.decode(x) for x in again.encode_batch(tests)] == [tok.decode(x) for x in encoded]
    with pytest.raises(TextVAEError, match="no such file"):
        Tokenizer.load(tmp_path / "missing.json")


def test_unk_rate():
    ids = [[BOS_ID, UNK_ID, 7, EOS_ID, PAD_ID], [BOS_ID, UNK_ID, EOS_ID]]
    assert unk_rate(ids) == pytest.approx(2 / 3)
    assert unk_rate([]) == 0.0


def test_token_counts_are_words_plus_one():
    tok = create_tokenizer("word", LINES)
    batch = collate(tok.encode_batch(LINES))
    expected = [len(line.split()) + 1 for line in LINES]
    assert token_counts(batch.lengths).tolist() == expected
    assert (batch.targets != PAD_ID).sum(1).tolist() == expected  # targets w1 .. wn </s>


# ---------------------------------------------------------------- reading: bad input


def test_missing_file(tmp_path):
    with pytest.raises(TextVAEError, match="no such file: .*nope.txt"):
        read_corpus(tmp_path / "nope.txt", 50)


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(TextVAEError, match="e.txt: the file is empty"):
        read_corpus(tmp_path / "e.txt", 50)


def test_only_blank_lines(tmp_path):
    (tmp_path / "b.txt").write_text("\n  \n\t\n")
    with pytest.raises(TextVAEError, match=r"b.txt: the file has only blank lines \(3\)"):
        read_corpus(tmp_path / "b.txt", 50)


def test_non_utf8_byte_names_line_and_offset(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"good line\nsecond\nbad \xff byte\n")
    with pytest.raises(TextVAEError, match=r"x.txt: line 3: invalid UTF-8 byte 0xff at byte offset 21"):
        read_corpus(tmp_path / "x.txt", 50)


def test_blank_and_long_lines_are_counted(tmp_path):
    (tmp_path / "c.txt").write_text(" a b c \n\none two three four five six seven\n\n  x   y  \n")
    lines, stats = read_corpus(tmp_path / "c.txt", 5)
    assert lines == ["a b c", "x y"]
    assert (stats.total, stats.blank, stats.long, stats.kept) == (5, 2, 1, 2)
    assert "2 of 5 lines kept; 2 blank skipped; 1 longer than 5 words skipped" in stats.summary()
    lines, stats = read_corpus(tmp_path / "c.txt", 5, long_lines="truncate", lowercase=True)
    assert lines == ["a b c", "one two three four five", "x y"]
    assert (stats.long, stats.kept) == (1, 3) and "truncated" in stats.summary()
    (tmp_path / "l.txt").write_text("one two three\n")
    with pytest.raises(TextVAEError, match="no usable lines"):
        read_corpus(tmp_path / "l.txt", 2)


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(TextVAEError) as e:
        resolve_corpus("ptbb")
    for name in ("ptb", "yahoo", "yelp", "snli", "dailydialog", "yelp_short"):
        assert name in str(e.value)
    assert set(list_corpora()) == {"ptb", "yahoo", "yelp", "snli", "dailydialog", "yelp_short"}
    with pytest.raises(TextVAEError, match="not a corpus .*dailydialog"):
        load_dataset(DataConfig(name="no_such_corpus_or_path"))


# ---------------------------------------------------------------- corpora: md5, cache, download

FILES = {"a/train.txt": b"one two\nthree\n", "a/valid.txt": b"one\n", "a/test.txt": b"two three\n"}


def toy_spec(url: str = "file:///nonexistent/toy.zip", name: str = "toy") -> CorpusSpec:
    return CorpusSpec(
        name=name,
        reference="test corpus",
        splits={s: (f"a/{s}.txt",) for s in ("train", "valid", "test")},
        md5={rel: md5(data) for rel, data in FILES.items()},
        downloads={"toy.zip": url},
    )


def write_files(root: Path, files=FILES) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_md5_mismatch_names_file_and_both_md5s(tmp_path):
    write_files(tmp_path / "data" / "toy")
    spec = toy_spec()
    assert resolve_corpus(spec, tmp_path / "data") == tmp_path / "data" / "toy"
    (tmp_path / "data" / "toy" / "a" / "valid.txt").write_bytes(b"one!\n")
    with pytest.raises(TextVAEError) as e:
        resolve_corpus(spec, tmp_path / "data")
    msg = str(e.value)
    assert "valid.txt" in msg and md5(FILES["a/valid.txt"]) in msg and md5(b"one!\n") in msg


def test_md5_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    write_files(tmp_path / "toy")
    spec = toy_spec()
    resolve_corpus(spec, tmp_path)

    def no_hashing(path):
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(corpora, "file_md5", no_hashing)
    resolve_corpus(spec, tmp_path)  # all three md5s come from the sidecar
    (tmp_path / "toy" / "a" / "test.txt").write_bytes(b"two three four\n")  # new size: must re-hash
    with pytest.raises(AssertionError, match="re-hashed .*test.txt"):
        resolve_corpus(spec, tmp_path)


def test_unverified_md5_is_not_reported_ok(tmp_path, caplog):
    write_files(tmp_path / "toy")
    spec = toy_spec()
    spec.md5["a/test.txt"] = None
    resolve_corpus(spec, tmp_path)
    assert "test.txt is unverified (no known md5): read without a check" in caplog.text


def test_local_folder_missing_a_file(tmp_path):
    write_files(tmp_path / "toy", {"a/train.txt": b"x\n"})
    with pytest.raises(TextVAEError, match="lacks a/valid.txt, a/test.txt"):
        resolve_corpus(toy_spec(), tmp_path)


def test_download_unpacks_nested_archives(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.delenv("TEXTVAE_DATA_DIR", raising=False)
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:  # like DailyDialog: a zip holding a zip
        for rel, data in FILES.items():
            z.writestr(rel, data)
    outer = tmp_path / "toy.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "pack/inner.zip")
    root = resolve_corpus(toy_spec(outer.as_uri()))
    assert root == isolated_cache / "corpora" / "toy" / "pack"
    assert not list(root.rglob("*.zip"))
    outer.unlink()  # now served from the cache, no second download
    assert resolve_corpus(toy_spec(outer.as_uri())) == root


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_download(tmp_path, monkeypatch, isolated_cache, caplog):
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for rel, data in FILES.items():
            z.writestr(rel, data)
    with pytest.raises(TextVAEError, match=f"^data.data_dir {tmp_path}/nope: no such folder; give the folder"):
        resolve_corpus(toy_spec(archive.as_uri()), tmp_path / "nope")
    assert not (isolated_cache / "corpora" / "toy").exists()
    # the environment's folder is a general place, which may lack a corpus: said, then the cache's
    monkeypatch.setenv("TEXTVAE_DATA_DIR", str(tmp_path / "nope"))
    with caplog.at_level("WARNING", logger="textvae"):
        assert resolve_corpus(toy_spec(archive.as_uri())) == isolated_cache / "corpora" / "toy"
    assert f"TEXTVAE_DATA_DIR={tmp_path}/nope: no such folder" in caplog.text


def test_a_data_dir_the_corpus_would_not_read_is_refused(tmp_path):
    """data.data_dir is where the named corpora are looked for; a synthetic corpus or a path does not read it."""
    corpus = tmp_path / "mine.txt"
    corpus.write_text("a b c\n")
    datasets.check_data_dir(DataConfig(name="ptb", data_dir=str(tmp_path)))
    datasets.check_data_dir(DataConfig(name="synthetic"))
    datasets.check_data_dir(DataConfig(name="ptbb", data_dir="/no/dir"))  # misspelt: the reader's error says more
    for name, what in (("synthetic", "a synthetic corpus"), (str(corpus), "read from its own path")):
        with pytest.raises(TextVAEError, match=re.escape(f"data.data_dir /no/dir: not read for data.name {name!r}, "
                                                         f"{what}; it is where the named corpora (")):
            datasets.check_data_dir(DataConfig(name=name, data_dir="/no/dir"))


def test_failed_download_says_set_textvae_data_dir(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.delenv("TEXTVAE_DATA_DIR", raising=False)
    with pytest.raises(TextVAEError, match="download of .* failed .*set TEXTVAE_DATA_DIR") as e:
        resolve_corpus(toy_spec((tmp_path / "absent.zip").as_uri()))
    assert "\n" not in str(e.value)
    assert not (isolated_cache / "corpora" / "toy").exists()  # nothing half-downloaded left behind


# ---------------------------------------------------------------- bucketing


def sim_lengths(n=997, seed=0):
    return np.random.default_rng(seed).integers(3, 60, size=n)


def flat(batches):
    return np.concatenate([np.asarray(b) for b in batches])


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch(shuffle):
    lengths = sim_lengths()
    sampler = BucketBatchSampler(lengths, 32, pool_batches=5, shuffle=shuffle, seed=3)
    batches = list(sampler)
    assert sorted(flat(batches).tolist()) == list(range(len(lengths)))
    assert len(batches) == len(sampler) == 32 and max(map(len, batches)) == 32
    if not shuffle:  # evaluation order: sorted by length
        assert np.all(np.diff(lengths[flat(batches)]) >= 0)


def test_bucketing_deterministic_and_epoch_dependent():
    lengths = sim_lengths()

    def plan(seed, epoch):
        s = BucketBatchSampler(lengths, 16, pool_batches=4, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert plan(1, 0) == plan(1, 0)
    assert plan(1, 0) != plan(1, 1)
    assert plan(1, 0) != plan(2, 0)
    # inside a pool sentences are sorted: each batch spans a narrow length range
    spans = [np.ptp(lengths[b]) for b in plan(1, 0)]
    plain = [np.ptp(lengths[b]) for b in BucketBatchSampler(lengths, 16, pool_batches=1, seed=1)]
    assert np.median(spans) < np.median(plain)


def test_pools_cut_padding():
    lengths = sim_lengths(5000)
    pooled = padding_fraction(list(BucketBatchSampler(lengths, 32, pool_batches=50)), lengths)
    plain = padding_fraction(list(BucketBatchSampler(lengths, 32, pool_batches=1)), lengths)
    assert pooled < 0.25 * plain


def test_padding_fraction_closed_form():
    assert padding_fraction([[0, 1], [2]], [1, 3, 4]) == pytest.approx(2 / 10)


def test_resume_yields_exactly_the_remaining_batches():
    lengths = sim_lengths()
    full = BucketBatchSampler(lengths, 10, pool_batches=3, seed=5)
    full.set_epoch(2)
    everything = list(full)
    resumed = BucketBatchSampler(lengths, 10, pool_batches=3, seed=5)
    resumed.set_epoch(2, start_batch=17)
    assert list(resumed) == everything[17:]


@pytest.mark.parametrize(
    "n,bs,replicas,drop_last", [(997, 32, 3, False), (101, 8, 4, False), (997, 32, 3, True)]
)
def test_distributed_ranks_disjoint_equal_and_covering(n, bs, replicas, drop_last):
    lengths = sim_lengths(n)
    kwargs = dict(pool_batches=4, seed=9, drop_last=drop_last, num_replicas=replicas)
    per_rank = []
    for rank in range(replicas):
        s = BucketBatchSampler(lengths, bs, rank=rank, **kwargs)
        s.set_epoch(1)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    indices = [flat(b) for b in per_rank]
    everything = np.concatenate(indices)
    assert len(np.unique(everything)) == len(everything)  # disjoint
    if drop_last:
        assert all(len(b) == bs for r in per_rank for b in r)
    else:
        assert sorted(everything.tolist()) == list(range(n))  # covering
    # all ranks agree on the global plan: rank k holds batches k, k + R, ...
    plan = [b.tolist() for b in BucketBatchSampler(lengths, bs, **kwargs).epoch_batches(1)]
    assert all(per_rank[k] == plan[k::replicas] for k in range(replicas))


# ---------------------------------------------------------------- datasets


def write_split_folder(folder: Path, names=("train.txt", "valid.txt", "test.txt")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    texts = ["\n".join(LINES) + "\n", "the cat barked\na zebra sat\n", "dogs mix\n"]
    for name, text in zip(names, texts):
        (folder / name).write_text(text)


def test_load_folder_and_batches(tmp_path):
    write_split_folder(tmp_path / "corpus")
    bundle = load_dataset(DataConfig(name=str(tmp_path / "corpus")))
    train, valid = bundle.splits["train"], bundle.splits["valid"]
    assert len(train) == len(LINES) and bundle.truth is None
    assert train.lengths.tolist() == [len(line.split()) + 2 for line in LINES]
    assert valid.ids[1][2] == UNK_ID  # "zebra" is not in the train vocabulary
    seen = []
    for batch in train.batches(2, shuffle=True, seed=0, pool_batches=2):
        for row, i in zip(batch.tokens, batch.index.tolist()):
            assert bundle.tokenizer.decode(row) == train.lines[i]
        assert batch.n_tokens.tolist() == [len(train.lines[i].split()) + 1 for i in batch.index.tolist()]
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(len(LINES)))


def test_limit_takes_an_even_subset(tmp_path):
    (tmp_path / "all.txt").write_text("".join(f"{'w ' * (1 + i % 7)}\n" for i in range(400)))
    train = load_dataset(DataConfig(name=str(tmp_path / "all.txt"))).splits["train"]
    n = len(train)
    assert train.subset(4).tolist() == [0, n // 4, n // 2, 3 * n // 4]
    seen = [i for b in train.batches(7, shuffle=False, limit=50) for i in b.index.tolist()]
    assert sorted(seen) == train.subset(50).tolist()
    assert train.num_batches(7, limit=50) == 8 and train.num_batches(7) == -(-n // 7)


def test_load_folder_with_prefixed_names(tmp_path):
    write_split_folder(tmp_path / "c", ("x.train.txt", "x.valid.txt", "x.test.txt"))
    assert len(load_dataset(DataConfig(name=str(tmp_path / "c"))).splits["test"]) == 1
    (tmp_path / "c" / "y.train.txt").write_text("extra\n")
    with pytest.raises(TextVAEError, match="several"):
        load_dataset(DataConfig(name=str(tmp_path / "c")))


def test_single_file_split_90_5_5(tmp_path):
    (tmp_path / "all.txt").write_text("".join(f"w{i} x\n" for i in range(100)))
    bundle = load_dataset(DataConfig(name=str(tmp_path / "all.txt")))
    lines = {s: sp.lines for s, sp in bundle.splits.items()}
    assert [len(lines[s]) for s in ("train", "valid", "test")] == [90, 5, 5]
    assert lines["valid"] == [f"w{i} x" for i in range(18, 100, 20)]
    assert lines["test"] == [f"w{i} x" for i in range(19, 100, 20)]
    (tmp_path / "few.txt").write_text("a\nb\n")
    with pytest.raises(TextVAEError, match="too few"):
        load_dataset(DataConfig(name=str(tmp_path / "few.txt")))


def test_given_tokenizer_and_max_sentences(tmp_path):
    write_split_folder(tmp_path / "c")
    tok = create_tokenizer("word", ["cat dog"])
    bundle = load_dataset(DataConfig(name=str(tmp_path / "c"), max_sentences=2), tokenizer=tok)
    assert bundle.tokenizer is tok and tok.vocab_size == 6
    assert len(bundle.splits["train"]) == 2
    assert bundle.splits["train"].ids[0].tolist() == tok.encode(LINES[0])


def test_labelled_formats(tmp_path):
    root = tmp_path / "lab"
    write_files(root, {
        "t.txt": b"1\tgood food\n0\tbad food\n\nno tab here\nx\tbad label\n",
        "d.txt": "hi there . __eou__ hello ! __eou__\nbye . __eou__\n".encode(),
        "a.txt": b"2 1 \n3 4\n",  # the second dialogue has one turn but two acts: malformed
    })
    cfg = DataConfig(max_length=10)
    tab = CorpusSpec("t", "", {s: ("t.txt",) for s in datasets.SPLITS}, {"t.txt": None}, {}, "label_tab")
    text = datasets._read_corpus(tab, root, cfg)["train"]
    assert (text.lines, text.labels) == (["good food", "bad food"], [1, 0])
    assert (text.stats.blank, text.stats.malformed) == (1, 2)
    splits = {s: ("d.txt", "a.txt") for s in datasets.SPLITS}
    dia = CorpusSpec("d", "", splits, {"d.txt": None, "a.txt": None}, {}, "dialogues")
    text = datasets._read_corpus(dia, root, cfg)["valid"]
    assert (text.lines, text.labels) == (["hi there .", "hello !"], [1, 0])  # acts 2, 1 -> 1, 0
    assert text.stats.malformed == 1


def test_synthetic_goes_through_the_generator(monkeypatch, isolated_cache):
    calls = []

    def generate_corpus(kind, out_dir, seed):
        calls.append((kind, Path(out_dir), seed))
        write_split_folder(Path(out_dir))
        return Path(out_dir)

    from textvae.data.synthetic import SYNTHETIC_KINDS

    stub = types.SimpleNamespace(generate_corpus=generate_corpus, load_truth=lambda d: {"dir": str(d)},
                                 SYNTHETIC_KINDS=SYNTHETIC_KINDS)
    monkeypatch.setitem(sys.modules, "textvae.data.synthetic", stub)
    bundle = load_dataset(DataConfig(name="synthetic_z", synthetic_seed=4))
    out = isolated_cache / "synthetic" / "synthetic_z-seed4"
    assert calls == [("synthetic_z", out, 4)] and bundle.truth == {"dir": str(out)}
    assert len(bundle.splits["train"]) == len(LINES)


# ---------------------------------------------------------------- real corpora


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    if not DATA_DIR or not Path(DATA_DIR).is_dir():
        pytest.skip("real-corpus test: TEXTVAE_DATA_DIR is not set")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTVAE_CACHE", str(tmp_path_factory.mktemp("ptb_cache")))
        return load_dataset(DataConfig(name="ptb", data_dir=DATA_DIR))


@needs_data
def test_ptb_sizes_vocabulary_and_tokens(ptb):
    assert {s: len(sp) for s, sp in ptb.splits.items()} == {"train": 42068, "valid": 3370, "test": 3761}
    # 9,999 word types including the literal <unk> (Mikolov's 10k counts <eos>), plus <pad> <s> </s>
    assert ptb.tokenizer.vocab_size == 9999 + 3
    train = ptb.splits["train"]
    n_tokens = int(token_counts(torch.as_tensor(train.lengths)).sum())
    assert n_tokens == 887521 + 42068  # words + one </s> per sentence, as in SOURCES.md
    assert unk_rate([ptb.splits["valid"].ids.flat]) == pytest.approx(
        sum(line.split().count("<unk>") for line in ptb.splits["valid"].lines)
        / sum(len(line.split()) for line in ptb.splits["valid"].lines)
    )  # PTB valid has no out-of-vocabulary words: only its literal <unk>s are UNK
    pooled = padding_fraction(list(train.sampler(32, shuffle=True, pool_batches=100)), train.lengths)
    plain = padding_fraction(list(train.sampler(32, shuffle=True, pool_batches=1)), train.lengths)
    assert pooled < 0.1 < 0.3 < plain


@needs_data
def test_ptb_md5_verified_and_corruption_detected(tmp_path):
    root = resolve_corpus("ptb", DATA_DIR)
    verified = (Path(os.environ["TEXTVAE_CACHE"]) / "md5-verified.json").read_text()
    for rel, digest in corpora.CORPORA.get("ptb").md5.items():
        assert digest in verified
    (tmp_path / "data" / "ptb").mkdir(parents=True)
    for f in root.glob("ptb.*.txt"):
        shutil.copyfile(f, tmp_path / "data" / "ptb" / f.name)  # copyfile: not the read-only mode
    bad = tmp_path / "data" / "ptb" / "ptb.valid.txt"
    data = bytearray(bad.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    expected = "md5 mismatch for .*ptb.valid.txt: expected aa0affc06ff7c36e977d7cd49e3839bf, got"
    with pytest.raises(TextVAEError, match=expected):
        resolve_corpus("ptb", tmp_path / "data")


@needs_data
def test_yelp_short_derived_splits():
    texts, _ = datasets._read_splits(DataConfig(name="yelp_short", data_dir=DATA_DIR))
    assert len(texts["train"].lines) == 25278 + 38205 - 4000
    assert np.bincount(texts["valid"].labels).tolist() == [2000, 2000]
    assert np.bincount(texts["test"].labels).tolist() == [50278, 76392]
    raw = read_lines(Path(DATA_DIR) / "yelp_short_shen2017" / "sentiment.dev.0")
    dev0 = [" ".join(x.split()) for x in raw]
    assert texts["train"].lines[: len(dev0) - 2000] == dev0[:-2000]  # a fixed cut, no shuffling
    assert texts["valid"].lines[:2000] == dev0[-2000:]
    # data.max_sentences keeps both classes of a corpus whose files come one label after another
    capped = datasets.load_dataset(DataConfig(name="yelp_short", data_dir=DATA_DIR, max_sentences=100))
    for split in capped.splits.values():
        assert len(split) == 100 and 0.3 < split.labels.mean() < 0.7


@needs_data
def test_dailydialog_utterances_and_acts():
    texts, _ = datasets._read_splits(DataConfig(name="dailydialog", data_dir=DATA_DIR))
    train = texts["train"]
    # 87,171 turns: 12 in the one dialogue whose act line has 11 labels, 4 longer than 200 words
    assert (train.stats.total, train.stats.malformed, train.stats.long) == (87171, 12, 4)
    assert len(train.lines) == len(train.labels) == 87171 - 12 - 4
    assert set(train.labels) == {0, 1, 2, 3}
    assert len(texts["valid"].lines) == 8069


def test_readme_names_every_unverified_corpus():
    """The README's "Unverified" sentence lists exactly the corpora with a file of unknown md5."""
    from tests.test_train import REPO

    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = readme[readme.index("Unverified (no known md5"):].split(".")[0]
    listed = set(re.findall(r"`(\w+)`", sentence))
    assert listed == {spec.name for spec in (CORPORA.get(n) for n in list_corpora()) if spec.unverified}
    assert CORPORA.get("yahoo").unverified == ["yahoo_data/yahoo.train.txt"]


def test_a_corpus_without_a_download_that_is_not_found_says_where_to_put_it(monkeypatch, isolated_cache):
    monkeypatch.delenv("TEXTVAE_DATA_DIR", raising=False)
    spec = dataclasses.replace(toy_spec(), downloads={})
    with pytest.raises(TextVAEError, match=r"^corpus toy: not found \(no data.data_dir or TEXTVAE_DATA_DIR given\) and "
                                           r"it has no download; set TEXTVAE_DATA_DIR .* toy/a/train.txt$"):
        resolve_corpus(spec)
