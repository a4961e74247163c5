"""Diverse responses to a dialogue context from a saved CVAE.

    textvae respond MODEL --context "how are you ?" --context "fine , and you ?" [--n 5]

MODEL is a run folder (its best model) or a saved model folder. Each ``--context`` is one turn,
oldest first; a single string may also hold several turns separated by ``__eou__``. Turns are
prepared as in training (normalised, cut to the saved ``max_turn_words``, the last
``context_turns`` kept); response i comes from its own z ~ p(z|c) and random stream, seeded with
(``--seed``, i), so that ``--n 5`` prints ``--n 3``'s responses, then two more. From Python:
``textvae.pretrained.load(RUN).respond(turns)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from textvae.dialogue.generation import METHODS, check_response_options
from textvae.errors import CommandParser, TextVAEError
from textvae.models.textvae import locate_model
from textvae.pretrained import is_dialogue, load


def respond(model_dir: str | Path, context: list[str], n: int = 5, method: str = "greedy", max_len: int = 40,
            seed: int = 0, temperature: Optional[float] = None, top_p: Optional[float] = None, show: bool = True
            ) -> list[str]:
    """n responses to ``context`` (turns, oldest first) from the CVAE in ``model_dir``
    (:meth:`textvae.pretrained.PretrainedCVAE.respond`); printed one per line when ``show``."""
    folder, _ = locate_model(model_dir)
    if not is_dialogue(folder):  # refused before its weights are read
        raise TextVAEError(f"{folder}: not a dialogue CVAE but a sentence VAE or language model, which "
                           f"`textvae sample`, `reconstruct` and `evaluate` read")
    cvae = load(model_dir)
    responses = cvae.respond(context, n, method, max_len, seed, temperature, top_p)
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
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the latent draws and the sampling, one stream per response (default: 0)")
    args = ap.parse_args(argv)
    settings = {name: getattr(args, name) for name in ("n", "max_len", "seed", "temperature", "top_p")}
    check_response_options(args.method, lambda name: "--" + name.replace("_", "-"), **settings)  # before the model
    respond(args.model, args.context, method=args.method, **settings)
