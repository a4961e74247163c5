"""Configuration of a dialogue CVAE run: the data and model sections are the dialogue's own, the
objective, optimiser and loop sections are textvae's (``textvae.config``), so KL schedules,
remedies, the plateau lr schedule and checkpointing are configured exactly as for sentence VAEs.

``textvae train recipes/dailydialog/cvae.yaml`` reads a YAML holding ``task: dialogue`` into a
:class:`CVAERunConfig`, the configuration of the ``dialogue`` task (:mod:`textvae.tasks.runconfig`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

from textvae.config import (CONDITIONAL_PRIOR, COUNT, POSITIVE, PROBABILITY, ObjectiveConfig, OptimConfig, Range,
                            TrainConfig, settings_only)


@settings_only
@dataclass
class DialogueDataConfig:
    """(context, response) pairs and how they are batched."""

    name: str = "dailydialog"
    """a registered corpus in the ``dialogues`` format (``dailydialog``: ``textvae list corpus``) or a folder
    holding ``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl`` with lines
    ``{"context": ["turn", ...], "response": "...", "act": 0}`` (``act`` optional)"""
    data_dir: Optional[str] = None
    """local folder holding ``<name>/``; ``None``: ``$TEXTVAE_DATA_DIR`` (then the download cache)"""
    context_turns: int = 10
    """the last N turns before a response form its context (Zhao et al. 2017: 10)"""
    max_turn_words: int = 40
    """longer turns are cut to their first words (Zhao et al. 2017: 40); counted"""
    min_freq: int = 1
    """words seen fewer times in the training turns are ``<unk>`` (the word vocabulary is built on the
    training turns)"""
    max_vocab: Optional[int] = 10000
    """cap on the word vocabulary, built on the training turns, special tokens included (the most frequent
    words are kept); ``None``: no cap"""
    batch_size: int = 30
    """training pairs per optimiser step (in distributed training the global batch)"""
    eval_batch_size: int = 100
    """pairs per batch in validation, the periodic metrics and the test report's likelihood figures"""
    bucket_pool: int = 100
    """batches per shuffled pool that is sorted by response length (1 = plain shuffling)"""
    max_pairs: Optional[int] = None
    """cap on pairs per split (the first ones), for quick runs; ``None`` = all"""

    RANGES: ClassVar[dict[str, Range]] = {
        "context_turns": COUNT, "max_turn_words": COUNT, "min_freq": COUNT, "max_vocab": COUNT, "batch_size": COUNT,
        "eval_batch_size": COUNT, "bucket_pool": COUNT, "max_pairs": COUNT}


@settings_only
@dataclass
class CVAEConfig:
    """kgCVAE (Zhao et al. 2017) sizes; this class's defaults are the paper's Switchboard model (a recipe's own
    values show as the defaults in ``textvae train RECIPE --help``).

    Utterances (context turns and, in the recognition network, the response) are read by one
    bidirectional ``utterance_encoder`` (a registered sentence encoder); a GRU of
    ``context_hidden`` units reads the utterance vectors. ``decoder_type`` is a recurrent registered
    decoder (gru, lstm); it gets its initial state from [c, z, y] (linear) and y at every input, as in
    Zhao et al.'s code."""

    emb_dim: int = 200
    """size of the word embeddings of the utterance encoder and of the decoder"""
    utterance_encoder: str = "gru"
    """the registered sentence encoder (``textvae list encoder``) that reads every utterance, one
    bidirectional layer"""
    utterance_hidden: int = 300
    """units of the utterance encoder, per direction (an utterance vector has twice as many)"""
    context_hidden: int = 600
    """units of the context GRU that reads the utterance vectors: the size of the context vector c"""
    context_dropout: float = 0.0
    """dropout probability on the utterance vectors before the context GRU reads them"""
    latent_dim: int = 200
    """size of z"""
    prior_hidden: int = 400
    """hidden units of the prior network, the MLP of c that gives p(z|c)"""
    decoder_type: str = "gru"
    """the decoder: ``gru`` or ``lstm`` (a recurrent registered decoder: ``textvae list decoder``)"""
    decoder_hidden: int = 400
    """units of the decoder's recurrent state"""
    decoder_layers: int = 1
    """the decoder's stacked layers, each given its initial state from [c, z, y]"""
    input_dropout: float = 0.0
    """dropout probability on the decoder's input embeddings"""
    output_dropout: float = 0.0
    """dropout probability on the decoder's outputs, before the output layer"""
    share_embeddings: bool = True
    """the decoder reads words with the utterance encoder's embedding table instead of one of its own"""
    use_acts: bool = False
    """kgCVAE: the response's dialogue act y enters the recognition network and the decoder, and an MLP on
    [c, z] predicts it (an added cross-entropy); needs labelled data"""
    act_emb_dim: int = 30
    """size of the dialogue-act embedding e_y (``use_acts``)"""
    act_hidden: int = 400
    """hidden units of the MLP on [c, z] that predicts the act (``use_acts``)"""
    decoder_z: str = "initial_state"
    """``initial_state`` (Zhao et al.'s code: z reaches the decoder through its linear initial state only)
    or ``every_input`` (z also joins every decoder input, [z, y], and the initial state goes through a tanh:
    textvae's wiring before 2026-12-06 and a stronger coupling; a model saved without this key is read so)"""
    prior_remedies: list[str] = field(default_factory=lambda: ["bn_vae"])
    """remedies of the objective whose ``transform_posterior`` is also applied, by a second instance with
    the same parameters, to the prior network's (mu, logvar): BN-VAE's CVAE extension (Zhu et al. 2020)
    normalises the means of both q(z|x,c) and p(z|c). A name that ``objective.remedies`` does not list does
    nothing: the default only says that ``bn_vae``, once added to the objective, acts on both"""

    RANGES: ClassVar[dict[str, Range]] = {
        "emb_dim": COUNT, "utterance_hidden": COUNT, "context_hidden": COUNT, "context_dropout": PROBABILITY,
        "latent_dim": COUNT, "prior_hidden": COUNT, "decoder_hidden": COUNT, "decoder_layers": COUNT,
        "input_dropout": PROBABILITY, "output_dropout": PROBABILITY, "act_emb_dim": COUNT, "act_hidden": COUNT}

    def latent_family(self) -> dict[str, Any]:
        """What the remedies' combination rules read of the model (``check_remedies``): a Gaussian
        posterior against the learned prior p(z|c)."""
        return {"latent_dim": self.latent_dim, "posterior": "gaussian", "prior": CONDITIONAL_PRIOR}


@settings_only
@dataclass
class DialogueEvalConfig:
    """The final test figures.

    Generation (Zhao et al. 2017): ``n_responses`` responses per test context, each decoded from its own
    z ~ p(z|c), scored by the registered text metrics (BLEU precision / recall, distinct-n, self-BLEU).
    Likelihood: ELBO terms and IW-NLL with ``train.iw_samples_final`` samples on ``max_pairs`` test pairs."""

    n_responses: int = 10
    """responses decoded per test context, each from its own z ~ p(z|c)"""
    max_contexts: Optional[int] = None
    """test contexts whose responses are scored, spread evenly over the split; ``None`` = all"""
    method: str = "greedy"
    """how each response is decoded: ``greedy``, ``sample`` or ``beam`` (a beam of 5)"""
    max_len: int = 40
    """decoding steps per response, ``</s>`` included"""
    temperature: float = 1.0
    """softmax temperature of ``method: sample``"""
    top_p: float = 1.0
    """nucleus sampling mass of ``method: sample`` (1: every word)"""
    max_pairs: Optional[int] = None
    """test pairs (spread evenly over the split) whose ELBO terms and IW-NLL (``train.iw_samples_final``
    samples) the report computes; ``None`` = all"""
    likelihood_act: str = "predicted"
    """kgCVAE: the act the validation and test likelihood figures condition on: ``predicted``
    (softmax(p(y|z,c)) @ E, so p(x|z,c) needs nothing but the context) or ``true`` (the response's labelled
    act, as Zhao et al.'s code reports its validation and test ELBO: the figures to set beside theirs).
    Generation always predicts the act"""

    RANGES: ClassVar[dict[str, Range]] = {"n_responses": COUNT, "max_contexts": COUNT, "max_len": COUNT,
                                          "temperature": POSITIVE, "top_p": Range(above=0, most=1), "max_pairs": COUNT}


@settings_only
@dataclass
class DialogueOptimConfig(OptimConfig):
    """Optimiser, with Zhao et al. (2017)'s defaults.

    textvae's optimiser section with their Adam 1e-3, clip 5, and the plateau decay off
    (``decay_start_epoch`` out of reach)."""

    name: str = "adam"
    lr: float = 1e-3
    decay_start_epoch: int = 10**9


@settings_only
@dataclass
class CVAERunConfig:
    """A run of the dialogue task: where it goes (``out_dir/name``) and its sections."""

    task: str = "dialogue"
    """the task (``textvae list task``): a dialogue recipe says ``task: dialogue``"""
    name: str = "cvae"
    """the run's folder under ``out_dir``"""
    out_dir: str = "runs"
    """the folder that holds the runs' folders"""
    data: DialogueDataConfig = field(default_factory=DialogueDataConfig)
    model: CVAEConfig = field(default_factory=CVAEConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: DialogueOptimConfig = field(default_factory=DialogueOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: DialogueEvalConfig = field(default_factory=DialogueEvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
