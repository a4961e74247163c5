"""Diverse responses to a dialogue context from a saved CVAE.

    textvae respond MODEL --context "how are you ?" --context "fine , and you ?" [--n 5]

MODEL is a run folder (its best model) or a saved model folder. Each ``--context`` is one turn,
oldest first; a single string may also hold several turns separated by ``__eou__``. Turns are
prepared as in training (normalised, cut to the saved ``max_turn_words``, the last
``context_turns`` kept); each response comes from its own z ~ p(z|c).
"""
from __future__ import annotations

from pathlib import Path

import torch

from textvae.config import COUNT, POSITIVE, SEED, Range, check_flags
from textvae.data.tokenization import Tokenizer, warn_unknown_words
from textvae.dialogue.data import EOU, collate_dialogues, normalize_utterance
from textvae.dialogue.generation import METHODS, generate_responses
from textvae.dialogue.model import KgCVAE
from textvae.errors import CommandParser, TextVAEError
from textvae.models.textvae import TOKENIZER_FILE, locate_model


def load_cvae(path: str | Path) -> tuple[KgCVAE, Tokenizer]:
    """A saved CVAE (on the CPU) and its tokenizer from a model folder or a run folder (``<run>/model``)."""
    p, _ = locate_model(path)
    if not (p / TOKENIZER_FILE).is_file():
        raise TextVAEError(f"{p} has no {TOKENIZER_FILE}")
    return KgCVAE.from_pretrained(p, "cpu"), Tokenizer.load(p / TOKENIZER_FILE)


def prepare_context(turns: list[str], context_turns: int, max_turn_words: int) -> list[str]:
    """Split ``__eou__``-joined strings into turns, normalise each, keep the last ``context_turns``."""
    split = [t.strip() for turn in turns for t in turn.split(EOU)]
    split = [t for t in split if t]
    if not split:
        raise TextVAEError("the context needs at least one non-empty turn")
    return [" ".join(normalize_utterance(t).split()[:max_turn_words]) for t in split[-context_turns:]]


def respond(model_dir: str | Path, context: list[str], n: int = 5, method: str = "greedy", max_len: int = 40,
            seed: int = 0, temperature: float = 1.0, top_p: float = 1.0, show: bool = True) -> list[str]:
    """n responses to ``context`` (turns, oldest first), each decoded from its own z ~ p(z|c); printed
    one per line when ``show``."""
    model, tokenizer = load_cvae(model_dir)
    turns = prepare_context(context, model.text.get("context_turns", 10), model.text.get("max_turn_words", 40))
    warn_unknown_words(tokenizer, turns)
    # The response slot of the batch is an empty placeholder: generation reads only the context.
    batch = collate_dialogues([[tokenizer.encode(t) for t in turns]], [tokenizer.encode("")])
    device = next(model.parameters()).device
    ids = generate_responses(model, batch.to(device), n, method, max_len, torch.Generator().manual_seed(seed),
                             temperature=temperature, top_p=top_p)[0]
    responses = [tokenizer.decode(r) for r in ids]
    if show:
        for i, line in enumerate(responses, start=1):
            print(f"{i}\t{line}")
    return responses


def cmd_respond(argv: list[str]) -> None:
    """The ``textvae respond`` command."""
    ap = CommandParser(prog="textvae respond", description="Diverse responses to a dialogue context.")
    ap.add_argument("model", help="run folder or saved model folder of a dialogue CVAE")
    ap.add_argument("--context", action="append", required=True,
                    help="one turn (repeat, oldest first; or one string with __eou__ between turns)")
    ap.add_argument("--n", type=int, default=5, help="number of responses")
    ap.add_argument("--method", default="greedy", choices=METHODS, help="(default: greedy)")
    ap.add_argument("--temperature", type=float, help="softmax temperature, --method sample (default: 1)")
    ap.add_argument("--top-p", type=float, help="nucleus sampling mass, --method sample (default: 1, all)")
    ap.add_argument("--max-len", type=int, default=40, help="decoding steps (default: 40)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the latent draws and the sampling (default: 0)")
    args = ap.parse_args(argv)
    check_flags(args, {"n": COUNT, "max_len": COUNT, "seed": SEED, "temperature": POSITIVE,
                       "top_p": Range(above=0, most=1)})
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p)) if value is not None]
    if given and args.method != "sample":  # greedy would ignore them
        raise TextVAEError(f"{given[0]} is an option of --method sample, and --method {args.method} would ignore it")
    respond(args.model, args.context, args.n, args.method, args.max_len, args.seed,
            1.0 if args.temperature is None else args.temperature, 1.0 if args.top_p is None else args.top_p)
