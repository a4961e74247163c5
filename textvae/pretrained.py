"""A trained model for use from Python: :func:`load`.

    from textvae.pretrained import load
    vae = load("runs/ptb_vae")                     # a run folder, its model/, or a saved model folder
    mu = vae.encode(["the company said it would", "n't"])   # posterior means [N, D]
    vae.decode(mu)                                 # greedy; method="sample" / "beam" with their options
    vae.sample(5, generator=torch.Generator().manual_seed(0))
    evaluate_model(vae.model, vae.batches(sentences))   # IW-NLL (K = 500), ELBO, KL, MI, AU (textvae.metrics)
    vae.model, vae.tokenizer, vae.run_config       # the parts

    cvae = load("runs/dd_kgcvae")                  # a dialogue CVAE's run: a PretrainedCVAE
    cvae.respond(["hi , how are you ?"], n=3)      # responses, each from its own z ~ p(z|c)

The sentences are read as the run read its corpus (its ``data.lowercase``, ``unk_token`` and ``pretokenize``),
which a bare ``TextVAE.from_pretrained`` and ``Tokenizer.load`` do not know: a model trained on lowercased text
would otherwise see capitalised words as ``<unk>``. The ``textvae`` commands load models the same way.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from textvae.errors import TextVAEError


@dataclasses.dataclass
class Pretrained:
    """A loaded model (in eval mode), its tokenizer, and the configuration of the run that trained it (None for a
    model folder on its own, whose input is then taken as given)."""

    model: Any
    tokenizer: Any
    run_config: Optional[dict]
    folder: Path

    def prepare(self, sentences: list[str]) -> list[str]:
        """``sentences`` rewritten as the run read its corpus (``data.unk_token``, ``data.pretokenize``,
        ``data.lowercase``)."""
        from textvae.data.words import word_rewriter

        data = (self.run_config or {}).get("data") or {}
        rewrite = word_rewriter(data.get("unk_token"), data.get("pretokenize"))
        lines = [rewrite(s) for s in sentences] if rewrite else list(sentences)
        return [s.lower() for s in lines] if data.get("lowercase") else lines

    def batches(self, sentences: list[str], batch_size: int = 128) -> list[Any]:
        """The sentences, prepared and tokenised, as batches (``<s> w1 .. wn </s>``) of ``batch_size`` on the
        model's device, in order: what :func:`textvae.metrics.evaluate_model` takes. A warning names the words
        the vocabulary lacks (read as ``<unk>``)."""
        from textvae.data.batch import collate
        from textvae.data.tokenization import warn_unknown_words

        if isinstance(sentences, str):  # one sentence would read as a list of its characters
            raise TextVAEError("give a list of sentences, not one string")
        if not sentences:
            raise TextVAEError("no sentences given")
        if batch_size < 1:
            raise TextVAEError(f"batch_size must be at least 1, got {batch_size}")
        sentences = self.prepare(sentences)
        warn_unknown_words(self.tokenizer, sentences)
        ids = [self.tokenizer.encode(s) for s in sentences]
        device = next(self.model.parameters()).device
        return [collate(ids[i:i + batch_size]).to(device) for i in range(0, len(ids), batch_size)]

    def batch(self, sentences: list[str]) -> Any:
        """All the sentences as one batch (:meth:`batches`)."""
        return self.batches(sentences, max(len(sentences), 1))[0]

    def encode(self, sentences: list[str]) -> torch.Tensor:
        """Posterior means E[z|x] [N, D] of the sentences."""
        from textvae.metrics._common import eval_mode

        if self.model.is_lm:
            raise TextVAEError("this model is a language model: it has no latent space")
        batch = self.batch(sentences)
        with eval_mode(self.model), torch.no_grad():  # a model put in training mode by its caller stays so
            return self.model.encode(batch).mean

    def decode(self, z: Optional[torch.Tensor], method: str = "greedy", max_len: int = 50, **options: Any
               ) -> list[str]:
        """One sentence per row of z [N, D] (None: the language model's, one). ``method``: greedy, sample
        (``temperature``, ``top_k``, ``top_p``, ``generator``) or beam (``beam_size``)."""
        from textvae.models.decoding import decode_sentences

        return decode_sentences(self.model, self.tokenizer, z, method=method, max_len=max_len, **options)

    def sample(self, n: int, method: str = "sample", max_len: int = 50,
               generator: Optional[torch.Generator] = None, **options: Any) -> list[str]:
        """``n`` sentences from z ~ p(z) (the language model's: from nothing), decoded by ``method``; the draws
        from ``generator``."""
        if n < 1:
            raise TextVAEError(f"n must be at least 1, got {n}")
        if "batch_size" in options:
            raise TextVAEError("sample: n is the number of sentences; it takes no batch_size")
        if method == "sample":
            options["generator"] = generator
        if self.model.is_lm:
            return self.decode(None, method=method, max_len=max_len, batch_size=n, **options)
        with torch.no_grad():
            z = self.model.sample_prior(n, generator=generator)
        return self.decode(z, method=method, max_len=max_len, **options)


@dataclasses.dataclass
class PretrainedCVAE:
    """A loaded dialogue CVAE (in eval mode), its tokenizer, and the configuration of the run that trained it (None
    for a model folder on its own)."""

    model: Any
    tokenizer: Any
    run_config: Optional[dict]
    folder: Path

    def respond(self, context: list[str], n: int = 5, method: str = "greedy", max_len: int = 40, seed: int = 0,
                temperature: Optional[float] = None, top_p: Optional[float] = None) -> list[str]:
        """``n`` responses to ``context`` (its turns, oldest first; a string may hold several, joined by
        ``__eou__``), prepared as in training (normalised, cut to the run's ``max_turn_words``, its last
        ``context_turns`` kept). Response i is decoded from its own z ~ p(z|c), drawn from a stream of its own
        seeded with (``seed``, i), so that n = 5 gives n = 3's responses and two more. ``method``: greedy, sample
        (``temperature``, default 1; ``top_p``, default 1, all) or beam."""
        from textvae.data.tokenization import warn_unknown_words
        from textvae.dialogue.data import collate_dialogues, prepare_context
        from textvae.dialogue.generation import check_response_options, generate_responses
        from textvae.rng import numbered_streams

        if isinstance(context, str):  # one string would read as a list of its characters
            raise TextVAEError("give the context as a list of turns, not one string")
        check_response_options(method, n=n, max_len=max_len, seed=seed, temperature=temperature, top_p=top_p)
        turns = prepare_context(context, self.model.text.get("context_turns", 10),
                                self.model.text.get("max_turn_words", 40))
        warn_unknown_words(self.tokenizer, turns)
        # the response slot of the batch is an empty placeholder: generation reads only the context
        device = next(self.model.parameters()).device
        batch = collate_dialogues([[self.tokenizer.encode(t) for t in turns]], [self.tokenizer.encode("")]).to(device)
        sampling = {name: value for name, value in (("temperature", temperature), ("top_p", top_p)) if value is not None}
        ids = [generate_responses(self.model, batch, 1, method, max_len, stream, **sampling)[0][0]
               for stream in numbered_streams(seed, n, device)]
        return [self.tokenizer.decode(r) for r in ids]


def load(path: str | Path) -> Pretrained | PretrainedCVAE:
    """The model in ``path`` (a run folder, its ``model/``, or a saved model folder), its tokenizer and its run's
    configuration: a :class:`Pretrained` sentence VAE or language model, or a :class:`PretrainedCVAE` dialogue
    CVAE. The plugins named in ``TEXTVAE_PLUGINS`` are loaded first, as the commands do, and a warning names those
    the run was made with that are not loaded here."""
    from textvae.plugins import load_plugins

    load_plugins()
    folder, _, run_config = locate(path)
    if is_dialogue(folder):
        return PretrainedCVAE(*load_folder(folder, dialogue=True), run_config, folder)
    return Pretrained(*load_folder(folder), run_config, folder)


def is_dialogue(folder: Path) -> bool:
    """Whether the model folder ``folder`` holds a dialogue CVAE (its ``config.json`` says ``model_type: kgcvae``);
    False where that file is missing or unreadable, which loading the folder then reports."""
    import json

    from textvae.models.textvae import CONFIG_FILE

    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("model_type") == "kgcvae"


def locate(path: str | Path) -> tuple[Path, Optional[Path], Optional[dict]]:
    """(the model folder, the run folder or None, the run's configuration or None) of ``path``: a run folder, its
    ``model/`` or a saved model folder; with the warning of :func:`warn_missing_plugins`."""
    from textvae.config import read_run_config
    from textvae.models.textvae import locate_model

    folder, run_dir = locate_model(path)
    if run_dir is not None:
        warn_missing_plugins(run_dir)
    return folder, run_dir, read_run_config(run_dir) if run_dir else None


_WARNED: set[str] = set()  # a study re-reads its runs after each one ends: each warning once per process


def warn_missing_plugins(*run_dirs: Path, consequence: str = "the parts they register are unknown without them"
                         ) -> None:
    """A warning, before the runs' parts are looked up, for the plugins their logs say they were made with
    (their ``source`` records) that this process has not loaded: a part they register is unknown here, and a
    report made without them lacks their figures (``consequence`` says which)."""
    from textvae.plugins import ENV, loaded_plugins

    sources = {run_dir: source_records(run_dir) for run_dir in run_dirs}
    made_with = {name for records in sources.values() for r in records for name in r.get("plugins", [])}
    missing = sorted(made_with - set(loaded_plugins()) - set(sys.modules))  # a script may have imported them
    if not missing:
        return
    modules = [name for name in missing if "=" not in name]  # entry points come with their installed package
    files = {name: entry["file"] for records in sources.values() for r in records
             for name, entry in r.get("plugin_files", {}).items()}
    folders = import_roots({m: files[m] for m in modules if m in files})
    hint = f"{ENV}={','.join(modules)}" + (f" PYTHONPATH={os.pathsep.join(folders)}" if folders else "")
    runs = [d for d, records in sources.items() if set(missing) & {n for r in records for n in r.get("plugins", [])}]
    message = (f"{runs[0] if len(runs) == 1 else f'{len(runs)} runs'} {'was' if len(runs) == 1 else 'were'} made with "
               f"plugin(s) not loaded here: {', '.join(missing)}; {consequence}{f' ({hint})' if modules else ''}")
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger("textvae").warning(message)


def source_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ``source`` records of a run's log (one per start or resume), read without parsing the rest of a log
    that may hold hundreds of thousands of training records."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    with open(path) as lines:
        return [json.loads(line) for line in lines if '"split": "source"' in line]


def import_roots(files: dict[str, str]) -> list[str]:
    """For the modules (name -> the file a run read it from) that this process cannot import by name, the folders
    to put on ``PYTHONPATH``: where the top of each module's dotted name lay (``a/b.py`` for ``a.b``: ``a``'s
    parent). Only a folder that is here and holds the module under its name (a run copied from another machine
    may name one that is not), and not the current directory, which the commands search for plugins."""
    roots = set()
    for name, file in files.items():
        parts = name.split(".")
        if importlib.util.find_spec(parts[0]) is not None:
            continue
        path = Path(file)
        tail = [*parts, "__init__.py"] if path.name == "__init__.py" else [*parts[:-1], f"{parts[-1]}.py"]
        if list(path.parts[-len(tail):]) != tail or len(path.parts) <= len(tail):
            continue
        root = path.parents[len(tail) - 1]
        if root.is_dir() and root != Path.cwd():
            roots.add(str(root))
    return sorted(roots)


def load_folder(folder: Path, dialogue: bool = False) -> tuple[Any, Any]:
    """The model saved in the model folder ``folder`` (in eval mode; a dialogue CVAE where ``dialogue``) and its
    tokenizer."""
    from textvae.data.tokenization import Tokenizer
    from textvae.dialogue.model import KgCVAE
    from textvae.models.textvae import TOKENIZER_FILE, TextVAE

    model = (KgCVAE if dialogue else TextVAE).from_pretrained(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        raise TextVAEError(f"{folder} has no {TOKENIZER_FILE}")
    return model, Tokenizer.load(folder / TOKENIZER_FILE)
