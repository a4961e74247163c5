"""Run configuration: nested dataclasses, read from YAML recipes with command-line overrides.

``textvae train recipes/ptb/vae.yaml --model.latent_dim 16 --optim.lr 0.5`` resolves a
:class:`RunConfig`; unknown keys and wrongly typed values are errors; the resolved configuration is
written to ``<run>/config.yaml`` so every run can be re-created.

Every numeric setting declares its bounds in its section's ``RANGES``; :func:`check_ranges` checks
them all in one pass before a run starts, so a value out of range is a one-line error naming the
key instead of a failure deep inside torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from textvae.errors import TextVAEError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting: ``value >= least``, ``value > above``, ``value <= most``,
    ``value < below``."""

    least: Optional[float] = None
    above: Optional[float] = None
    most: Optional[float] = None
    below: Optional[float] = None

    def violation(self, value: float) -> Optional[str]:
        """What is wrong with ``value`` (``"must be at least 1"``), or None when it is in range; NaN and
        infinities never are (a setting that means "none" is null)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # a configuration built in Python
            return "must be a number"
        if isinstance(value, float) and not math.isfinite(value):  # an int is finite, however large
            return "must be a finite number"
        if self.least is not None and value < self.least:
            return f"must be at least {self.least:g}"
        if self.above is not None and not value > self.above:
            return f"must be > {self.above:g}"
        if self.most is not None and value > self.most:
            return f"must be at most {self.most:g}"
        if self.below is not None and not value < self.below:
            return f"must be < {self.below:g}"
        return None


COUNT = Range(least=1)  # sizes, steps, counts of things
NON_NEGATIVE = Range(least=0)  # where 0 means "off" or "none"
SEED = Range(least=0, below=2**63)  # what torch's manual_seed takes
POSITIVE = Range(above=0)
PROBABILITY = Range(least=0, most=1)

# the prior of a model whose p(z|c) is learned from its condition c (the dialogue CVAE's), as the remedies'
# combination rules read it beside the registered priors' names
CONDITIONAL_PRIOR = "conditional"


def check_flags(args: Any, ranges: dict[str, Range]) -> None:
    """One-line error for the first numeric command-line flag of ``args`` (an argparse namespace) outside its
    bounds (what ``RANGES`` does for the run configuration), before a model is loaded."""
    for name, bounds in ranges.items():
        value = getattr(args, name)
        problem = None if value is None else bounds.violation(value)
        if problem:
            raise TextVAEError(f"--{name.replace('_', '-')} {problem}, got {value}")


def settings_only(cls: type) -> type:
    """Class decorator of the configuration's sections (outside ``@dataclass``): setting an attribute that is not
    one of a section's settings (a typo in a configuration built in Python, ``cfg.model.latnt_dim = 8``) is an
    error, not a new attribute that the run would silently ignore. (A base class would do the same, but
    jsonargparse would then read each section as a class to choose among its subclasses.)"""
    def __setattr__(self: Any, name: str, value: Any) -> None:
        fields = type(self).__dataclass_fields__
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}{close_name(name, list(fields))}")
        object.__setattr__(self, name, value)

    cls.__setattr__ = __setattr__  # type: ignore[method-assign]
    return cls


@settings_only
@dataclass
class DataConfig:
    """Where sentences come from and how they are batched."""

    name: str = "synthetic"
    """a registered corpus (``ptb``, ``yahoo``, ``yelp``, ``snli``, ``dailydialog``, ``yelp_short``:
    ``textvae list corpus``), ``synthetic`` / ``synthetic_z`` (ground-truth corpora generated on the fly:
    ``textvae list synthetic_corpus``), or a path to a text file or a folder with ``train/valid/test`` files"""
    data_dir: Optional[str] = None
    """local folder holding ``<name>/`` copies of the registered corpora; ``None``: ``$TEXTVAE_DATA_DIR``
    (then the download cache)"""
    tokenizer: str = "word"
    """a registered tokenizer kind (``word``, ``bpe``: ``textvae.data.tokenization``; ``textvae list
    tokenizer``), trained on the training split"""
    bpe_vocab_size: int = 8000
    """total vocabulary size of the ``bpe`` tokenizer, special tokens included; the word tokenizer ignores it"""
    min_freq: int = 1
    """word tokenizer: words seen fewer times in the training split are ``<unk>``; bpe: the trainer's
    minimum pair count"""
    max_vocab: Optional[int] = None
    """cap on the word tokenizer's vocabulary, special tokens included (the most frequent words are kept;
    bpe refuses it and takes ``bpe_vocab_size``); ``None``: no cap"""
    lowercase: bool = False
    """lowercase every sentence as it is read (and the sentences that ``textvae reconstruct`` /
    ``interpolate`` encode with the run's model)"""
    max_length: int = 200
    """sentences with more words than this (counted after ``unk_token`` and ``pretokenize``) are counted,
    reported and skipped (``long_lines: truncate`` cuts them instead)"""
    long_lines: str = "skip"
    """what becomes of a sentence longer than ``max_length`` words: ``skip`` (dropped) or ``truncate``
    (its first ``max_length`` words kept); counted and reported either way"""
    batch_size: int = 32
    """training sentences per optimiser step (in distributed training the global batch, shared among the
    processes)"""
    eval_batch_size: int = 128
    """sentences per batch in validation, the periodic metrics and the test report (and the default of
    ``textvae evaluate --batch-size`` for the run)"""
    bucket_pool: int = 100
    """batches per shuffled pool that is sorted by length (1 = plain shuffling)"""
    max_sentences: Optional[int] = None
    """cap on sentences per split (for quick runs): its first ones, or a labelled split's spread evenly over
    its labels' files; ``None`` = all"""
    synthetic_seed: int = 0
    """seed of the generated ``synthetic`` / ``synthetic_z`` corpus (cached per seed); other corpora
    ignore it"""
    unk_token: Optional[str] = None
    """the corpus's own unknown-word token (Yahoo's ``_UNK``), read as ``<unk>`` so the unk rate counts it;
    ``None``: an ordinary word"""
    pretokenize: Optional[str] = None
    """split words at punctuation first with a Hugging Face ``tokenizers`` pre-tokenizer (``bert``: every
    punctuation mark apart; ``whitespace``: runs of punctuation kept together), for text that is not
    tokenised ("the dog." -> "the dog ."); ``None``: split at whitespace only"""

    RANGES: ClassVar[dict[str, Range]] = {
        "bpe_vocab_size": COUNT, "min_freq": COUNT, "max_vocab": COUNT, "max_length": COUNT, "batch_size": COUNT,
        "eval_batch_size": COUNT, "bucket_pool": COUNT, "max_sentences": COUNT, "synthetic_seed": SEED}


@settings_only
@dataclass
class EncoderConfig:
    """The sentence encoder.

    It reads ``<s> w1 .. wn </s>`` (registered ``type``); its context vector feeds the posterior."""

    type: str = "lstm"
    """a registered encoder (``lstm``, ``gru``, ``cnn``, ``transformer``: ``textvae list encoder``)"""
    hidden_dim: int = 256
    """units of the recurrent state (per direction: a bidirectional encoder's vector has twice as many),
    channels of the ``cnn``, width of the ``transformer``"""
    num_layers: int = 1
    """stacked layers (recurrent, convolutional or self-attention)"""
    bidirectional: bool = False
    """read the sentence in both directions and concatenate the two final states (``lstm``, ``gru`` only)"""
    dropout: float = 0.0
    """dropout probability inside the encoder: between recurrent layers (with ``num_layers`` > 1), before each
    convolution of the ``cnn``, in the ``transformer``'s layers"""
    options: dict[str, Any] = field(default_factory=dict)
    """parameters only some types take (checked by the type), e.g. the ``cnn``'s ``kernel_size``; ``textvae
    list encoder`` shows each type's"""

    RANGES: ClassVar[dict[str, Range]] = {"hidden_dim": COUNT, "num_layers": COUNT, "dropout": PROBABILITY}


@settings_only
@dataclass
class DecoderConfig:
    """The decoder (registered ``type``: lstm, gru, skip_lstm, cnn, transformer).

    For the recurrent ones, z sets the initial state (c0 = W z, h0 = tanh c0) and is concatenated to
    every input embedding (He et al. 2019): ``z_init`` and ``z_concat`` switch each path."""

    type: str = "lstm"
    """a registered decoder (``lstm``, ``gru``, ``skip_lstm``, ``cnn``, ``transformer``: ``textvae list
    decoder``)"""
    hidden_dim: int = 256
    """units of the recurrent state, channels of the ``cnn``, width of the ``transformer``"""
    num_layers: int = 1
    """stacked layers (the ``cnn``: repetitions of its block of dilations)"""
    input_dropout: float = 0.5
    """ordinary dropout probability on the input embeddings (not word dropout, which is a remedy)"""
    output_dropout: float = 0.5
    """ordinary dropout probability on the decoder's outputs (the recurrent ones': their LSTM / GRU outputs),
    before the output layer"""
    z_init: bool = True
    """z sets the initial state: c0 = W z, h0 = tanh c0 (``lstm``, ``gru``, ``skip_lstm``)"""
    z_concat: bool = True
    """z is concatenated to every input embedding (``lstm``, ``gru``; a VAE needs this or ``z_init``)"""
    options: dict[str, Any] = field(default_factory=dict)
    """parameters only some decoder types take (e.g. ``dilations`` of the CNN decoder); ``textvae list
    decoder`` shows each type's"""

    RANGES: ClassVar[dict[str, Range]] = {"hidden_dim": COUNT, "num_layers": COUNT, "input_dropout": PROBABILITY,
                                          "output_dropout": PROBABILITY}


@settings_only
@dataclass
class ModelConfig:
    """The model: its sizes, encoder, decoder, posterior, prior and initialisation."""

    emb_dim: int = 256
    """size of the word embeddings (the encoder and the decoder each have their own table)"""
    latent_dim: int = 32
    """size of z; 0 gives the LSTM language model baseline (same decoder, no z; no encoder or posterior is
    built)"""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    posterior: str = "gaussian"
    """a registered posterior q(z|x) (``gaussian``, ``iaf``, ``vmf``: ``textvae list posterior``)"""
    posterior_options: dict[str, Any] = field(default_factory=dict)
    """parameters of the posterior beyond those textvae supplies (``textvae list posterior`` shows each
    one's)"""
    prior: str = "standard_normal"
    """a registered prior p(z) (``standard_normal``, ``mog``, ``flow``, ``vmf_uniform``: ``textvae list
    prior``)"""
    prior_options: dict[str, Any] = field(default_factory=dict)
    """parameters of the prior beyond those textvae supplies (``textvae list prior`` shows each one's)"""
    tie_weights: bool = False
    """the output layer shares the decoder's input embedding matrix (needs the decoder's output size, its
    ``hidden_dim``, plus ``latent_dim`` for ``skip_lstm``, equal to ``emb_dim``)"""
    init: str = "he2019"
    """initialisation scheme of the decoder and output layer (and of the encoder side, unless
    ``encoder_init``): ``he2019`` (weights U(-0.01, 0.01), embeddings U(-0.1, 0.1), normalisation layers
    excepted: He et al. 2019) or ``torch`` (PyTorch defaults)"""
    encoder_init: Optional[str] = None
    """the scheme of the encoder and posterior head (``None``: as ``init``). BN-VAE's code keeps PyTorch
    defaults there (``encoder_init: torch``): under U(-0.01, 0.01) the posterior means start with a batch
    variance far below BatchNorm's eps, where its KL floor gamma² v / (v + eps) vanishes"""
    encoder_from: Optional[str] = None
    """a saved model folder (a finished run's ``model/``, e.g. an autoencoder's) whose inference network
    (encoder and posterior head) replaces the freshly drawn one when a run starts; the decoder stays
    freshly drawn. Li et al. (2019)'s second stage, ``--load_path AE --reset_dec``. In a study,
    ``"{run:VARIANT}/model"`` names another variant's run of the same seed"""

    RANGES: ClassVar[dict[str, Range]] = {"emb_dim": COUNT, "latent_dim": NON_NEGATIVE}

    def encoder_scheme(self) -> str:
        """The init scheme of the encoder side: ``encoder_init``, else ``init``."""
        return self.encoder_init or self.init

    def latent_family(self) -> dict[str, Any]:
        """What the remedies' combination rules read of the model (``check_remedies``)."""
        return {"latent_dim": self.latent_dim, "posterior": self.posterior, "prior": self.prior}


@settings_only
@dataclass
class ObjectiveConfig:
    """The training objective: rec + beta(step) * KL, then whatever the remedies change."""

    kl_schedule: dict[str, Any] = field(default_factory=lambda: {"name": "constant", "value": 1.0})
    """a registered ``step -> beta`` schedule and its parameters (``textvae list kl_schedule``), e.g.
    ``{name: linear, start: 0.1, warmup_steps: 13000}``; ``{name: constant, value: 1.0}`` is the plain VAE"""
    remedies: list[dict[str, Any]] = field(default_factory=list)
    """registered remedy components with their parameters (``textvae list remedy``), e.g.
    ``[{name: free_bits_li2019, target_kl: 8}, {name: bn_vae, gamma: 0.7}]``"""


@settings_only
@dataclass
class OptimConfig:
    """Optimiser and the literature's plateau schedule.

    The published recipe: SGD lr 1.0, gradient-norm clip 5; after ``decay_start_epoch``, when the
    validation loss (-ELBO at beta = 1) has not improved for ``decay_patience`` epochs, multiply the
    lr by ``decay_factor`` and reload the best model; stop after ``max_decays`` decays."""

    name: str = "sgd"
    """the optimiser: ``sgd`` or ``adam`` (``textvae list optimizer``)"""
    lr: float = 1.0
    """the initial learning rate lr0: the plateau schedule's decays multiply it, ``cycle_lr`` shapes it
    within the KL cycles"""
    momentum: float = 0.0
    """SGD's momentum (``sgd`` only)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's decay rates of its moment estimates (``adam`` only)"""
    weight_decay: float = 0.0
    """L2 penalty the optimiser adds to every gradient (torch's ``weight_decay``; 0: none)"""
    clip: float = 5.0
    """the gradients' global norm is clipped to this before every update (0: no clipping)"""
    decay_factor: float = 0.5
    """a plateau multiplies the lr by this"""
    decay_patience: int = 2
    """complete epochs in a row without a better validation loss that make a plateau"""
    decay_start_epoch: int = 15
    """complete epochs before a plateau may decay the lr"""
    max_decays: int = 5
    """decays after which the run stops (0: the first plateau ends the run, without a decay)"""
    reload_best_on_decay: bool = True
    """reload the best model so far (by validation loss) at each decay"""
    cycle_lr: str = "none"
    """an lr schedule over the cycles of the cyclical KL schedule (Fu et al. 2019; ``textvae list
    optim.cycle_lr``): ``cosine`` sets lr = lr0 (1 + cos(pi u)) / 2 at cycle fraction u; ``none`` leaves
    the lr to the plateau schedule"""
    cycle_lr_stairs: int = 0
    """S > 0 holds the cosine's lr on S equal parts of each cycle (Fu et al.'s PTB script: once per epoch,
    S = 10); 0: a continuous cosine"""
    cycle_lr_options: dict[str, Any] = field(default_factory=dict)
    """the parameters of the ``cycle_lr`` schedule beyond the lr, the KL schedule and ``cycle_lr_stairs`` (a
    registered schedule of one's own: ``textvae list optim.cycle_lr`` shows each one's)"""
    plateau_kl_weight: float = 1.0
    """w: the validation loss that selects the best model and drives the decays is rec + w KL = -ELBO -
    (1 - w) KL. w = 1 (-ELBO) everywhere but in an autoencoder trained with the KL weight 0, which Li et al.
    (2019, ``text_beta.py --beta 0``) select by rec + 0 KL"""

    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "momentum": Range(least=0, below=1), "betas": Range(least=0, below=1), "weight_decay": NON_NEGATIVE,
        "clip": NON_NEGATIVE, "decay_factor": Range(above=0, most=1), "decay_patience": COUNT,
        "decay_start_epoch": NON_NEGATIVE, "max_decays": NON_NEGATIVE, "cycle_lr_stairs": NON_NEGATIVE,
        "plateau_kl_weight": NON_NEGATIVE}

    @property
    def plain_sgd(self) -> bool:
        """SGD without momentum or weight decay: its update moves only what has a gradient, p - lr * g, which
        the sparse embedding gradients and the bf16 weight copies rely on."""
        return self.name == "sgd" and self.momentum == 0 and self.weight_decay == 0


@settings_only
@dataclass
class TrainConfig:
    """The training loop: its budget, logging, checkpoints, precision and final test report.

    Training stops at whichever of ``epochs``, ``max_steps`` and ``max_seconds`` comes first; a checkpoint
    is written every epoch."""

    epochs: int = 100
    """passes over the training set"""
    max_steps: Optional[int] = None
    """optimiser steps after which training stops early; ``None``: no limit"""
    max_seconds: Optional[float] = None
    """training-loop time in seconds, summed over resumed sessions and checked after every step, after
    which training stops early; ``None``: no limit"""
    seed: int = 783435
    """seed of the run's random draws: initial weights, batch order, z samples, dropout masks"""
    device: str = "auto"
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``"""
    threads: Optional[int] = None
    """torch's CPU threads; ``None``: torch's own choice (a study's runs with ``--jobs N``: ``OMP_NUM_THREADS``
    where it is set, else the cores / N)"""
    log_every: int = 50
    """log the training loss (``metrics.jsonl``, TensorBoard, the progress bar) every N optimiser steps"""
    metrics_every: int = 500
    """log KL / MI / AU on ``metrics_sentences`` validation sentences every N steps (0 = only at epoch ends)"""
    metrics_sentences: int = 1000
    """validation sentences (spread evenly over the split; the dialogue task's: pairs) that the
    ``metrics_every`` figures read"""
    checkpoint_every: int = 0
    """write a checkpoint every N steps as well as at every epoch end (0: at epoch ends only)"""
    precision: str = "fp32"
    """``fp32``, or ``bf16``: forward passes under bfloat16 autocast (CPU or GPU) with fp32 master weights;
    the loss' softmax stays fp32"""
    retain_memory: bool = True
    """keep freed memory in the process (glibc malloc) instead of returning it to the system, so the large
    per-step temporaries are not page-faulted in again on every step; the resident size then stays at its
    peak"""
    sampled_softmax: int = 0
    """n > 0 trains the reconstruction term with a sampled softmax over n candidate words per step drawn
    from the unigram^0.75 (Jean et al. 2015; :mod:`textvae.models.sampled_softmax`): a biased estimate that
    saves most of the output layer's work; validation, test and every metric use the full softmax. 0: the
    full softmax in training too"""
    sparse_gradients: bool = True
    """give the embeddings (and, with the sampled softmax, the output layer) a gradient holding only the
    rows the batch used, instead of zeroing, norming and updating every row of the V x E tables each step;
    it takes effect only where the update is the same (plain SGD: momentum 0, weight decay 0; one process)
    and on the CPU (on a GPU the dense update is faster), and is ignored otherwise"""
    iw_samples_final: int = 500
    """importance samples of the final test report's IW-NLL (0 skips IW-NLL)"""
    valid_redraw: bool = False
    """validation draws its random numbers (z samples) from a stream of its own, the same draws every
    epoch, so a change between epochs is the model's; on, it draws them anew each epoch instead (seeded by
    the epoch), as He et al.'s and Li et al.'s code do: their epoch-to-epoch comparisons (aggressive
    training's MI switch-off, the plateau schedule) then carry the estimators' sampling noise"""
    flush_denormals: bool = True
    """compute with denormal floats (below 1.18e-38) read and written as 0 in every thread, as TensorFlow's
    CPU kernels do: x86 takes a slow microcode path for them, and Adam's moments of rare words' embedding
    rows pass through them (:mod:`textvae.training.denormals`); off, arithmetic is IEEE's to the last bit"""
    native_kernels: bool = True
    """compute on the CPU, with textvae's C++ kernels compiled for the machine on first use
    (:mod:`textvae.models.native`; torch operations where no compiler is found, or when off), the bf16
    output loss's softmax part (the same formulas, other rounding), the recurrent decoders' dropout masks
    (the same distribution, another random stream), the working copies' gradient norm and update, and, on
    CPUs with AMX, a one-layer LSTM's forward and backward recurrences in bf16 training and its bf16 scoring
    of many samples of z per sentence in the IW-NLL (:mod:`textvae.models.lstm`: the same function, other
    rounding)"""
    bf16_weight_copies: bool = True
    """keep, in bf16 on the CPU with plain SGD in one process, a bf16 working copy of each LSTM and output
    weight for the forward and backward passes, updated together with its fp32 master in one pass, instead
    of casting every weight and its gradient each step (:mod:`textvae.training.working_copies`): the same
    values, other rounding of the update; ignored elsewhere"""
    progress: bool = True
    """show progress bars (the main process's); off, each epoch's validation line goes to the log instead"""
    tensorboard: bool = True
    """also log to TensorBoard in ``<run>/tensorboard`` (needs ``textvae[tb]``; without it the run logs to
    ``metrics.jsonl`` only)"""

    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": NON_NEGATIVE, "max_steps": COUNT, "max_seconds": POSITIVE, "seed": SEED, "threads": COUNT,
        "log_every": COUNT, "metrics_every": NON_NEGATIVE, "metrics_sentences": Range(least=2),
        "checkpoint_every": NON_NEGATIVE, "sampled_softmax": NON_NEGATIVE, "iw_samples_final": NON_NEGATIVE}


@settings_only
@dataclass
class RunConfig:
    """A run of the sentence task: where it goes (``out_dir/name``) and its sections."""

    name: str = "run"
    """the run's folder under ``out_dir``"""
    out_dir: str = "runs"
    """the folder that holds the runs' folders"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise :class:`TextVAEError` for the first numeric setting of the (nested) configuration
    ``cfg`` outside the bounds its section declares in ``RANGES`` (``None``, "not set", passes)."""
    ranges = getattr(type(cfg), "RANGES", {})
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
        elif f.name in ranges and value is not None:
            for item in value if isinstance(value, (tuple, list)) else (value,):
                problem = ranges[f.name].violation(item)
                if problem:
                    raise TextVAEError(f"{key} {problem}, got {value}", key)


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, recursing into dataclass-typed fields.

    An unknown key raises :func:`unknown_key`'s error; used to read back a run's saved ``config.yaml``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise unknown_key(unknown[0], cls, cls.__name__, prefix)
    kwargs = {}
    for name, value in values.items():
        sub = section_type(fields[name])
        section = sub is not None and isinstance(value, dict)
        kwargs[name] = from_dict(sub, value, f"{prefix}{name}.") if section else value
    return cls(**kwargs)


def expand_dotted(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """{"optim.lr": 0.5, "model": {"encoder.hidden_dim": 8}} -> {"optim": {"lr": 0.5}, "model": {"encoder": {...}}}.

    Nested dicts are expanded too; two spellings of the same key are an error."""
    if not isinstance(overrides, dict):
        raise TextVAEError(f"{where}: overrides must be a mapping, got {type(overrides).__name__}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            raise TextVAEError(f"{where}: malformed key {key!r}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TextVAEError(f"{where}: key {key!r} conflicts with another override")
        value = expand_dotted(value, where) if isinstance(value, dict) else value
        leaf = parts[-1]
        if leaf in node:
            if not (isinstance(node[leaf], dict) and isinstance(value, dict)):
                raise TextVAEError(f"{where}: key {key!r} is given twice")
            value = _merge_plain(node[leaf], value, f"{where}: key {key!r}")
        node[leaf] = value
    return nested


def _merge_plain(a: dict[str, Any], b: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge_plain(out[k], v, where)
        elif k in out:
            raise TextVAEError(f"{where}: {k!r} is given twice")
        else:
            out[k] = v
    return out


def section_type(f: dataclasses.Field) -> Optional[type]:
    """The dataclass type of a configuration's field that is itself a section, else None."""
    factory = f.default_factory  # type: ignore[misc]
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


class UnknownKeyError(TextVAEError):
    """A configuration key that its section lacks; ``key`` is its dotted name (``data.max_sentences``)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def unknown_key(key: str, cls: type, where: str, prefix: str = "") -> UnknownKeyError:
    """The error for a key ``key`` that the section ``prefix`` (the dataclass ``cls``) lacks: its dotted
    name, a close valid one where there is one (a misspelling) and the section's valid keys."""
    fields = [f.name for f in dataclasses.fields(cls)]
    return UnknownKeyError(f"{where}: unknown key {prefix}{key}{close_name(str(key), fields, prefix)}; valid"
                           f"{' in ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}", f"{prefix}{key}")


def close_name(key: str, valid: Any, prefix: str = "") -> str:
    """``" (did you mean PREFIX+NAME?)"`` for the valid name closest to ``key`` (a misspelling, ``-`` for
    ``_``), or "" where none is close. A dotted ``key`` is matched within its section."""
    key = key.replace("-", "_")
    section, _, leaf = key.rpartition(".")
    names = [n for n in valid if n.rpartition(".")[0] == section]
    match = difflib.get_close_matches(leaf, [n.rpartition(".")[2] for n in names], n=1, cutoff=0.8)
    if match:
        return f" (did you mean {prefix}{section + '.' if section else ''}{match[0]}?)"
    # a misspelt section (model.encodr.hidden_dim): the whole dotted name, which a section's typo barely changes
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.9) if "." in key else []
    return f" (did you mean {prefix}{match[0]}?)" if match else ""


def setting_names(cls: type, prefix: str = "") -> list[str]:
    """Every setting of the configuration dataclass ``cls`` by its dotted name (``model.encoder.hidden_dim``)."""
    names = []
    for f in dataclasses.fields(cls):
        sub = section_type(f)
        names += setting_names(sub, f"{prefix}{f.name}.") if sub is not None else [prefix + f.name]
    return names


def setting_changes(cls: type, old: dict[str, Any], new: dict[str, Any],
                    prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{"optim.lr": (1.0, 0.5), ...}``: the settings in which ``new`` differs from ``old`` (two dicts of
    the dataclass ``cls``'s settings, e.g. saved ``config.yaml`` files), dotted by section, in the order
    of ``cls``'s fields. A free-form value (a KL schedule, a remedy list, a part's options) counts
    whole, and so does a key ``cls`` lacks (a setting textvae no longer has): it shows as a change."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    changes: dict[str, tuple[Any, Any]] = {}
    for key in [k for k in fields if k in old or k in new] + sorted((set(old) | set(new)) - set(fields)):
        a, b = old.get(key), new.get(key)
        sub = section_type(fields[key]) if key in fields else None
        if sub is not None and isinstance(a, (dict, type(None))) and isinstance(b, (dict, type(None))):
            changes.update(setting_changes(sub, a or {}, b or {}, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


# settings without effect on a run's figures: a run resumed or compared with other values is the same run
INCIDENTAL_KEYS = {"name", "out_dir", "train.threads", "train.progress", "train.retain_memory"}
# settings (or sections) of a run's test report alone: a finished run resumed with others reports again with them
REPORT_KEYS = ("train.iw_samples_final", "eval")


def is_report_setting(key: str) -> bool:
    """Whether the dotted setting ``key`` is one of :data:`REPORT_KEYS` or in one of their sections."""
    return any(key == k or key.startswith(k + ".") for k in REPORT_KEYS)


def read_run_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """A run folder's saved settings (its ``config.yaml``) as plain JSON values; None when it has none."""
    import yaml

    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return None
    values = yaml.safe_load(saved.read_text()) or {}
    if not isinstance(values, dict):
        raise TextVAEError(f"{saved}: not a run's settings (a mapping of sections), but a {type(values).__name__}")
    return json.loads(json.dumps(values))


def settings_now(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Saved settings as JSON values with every setting textvae has now: one added since the run was
    made reads as its default (the same run); with one textvae no longer has they stay as saved, so
    that it shows as a change."""
    try:
        return json.loads(json.dumps(dataclasses.asdict(from_dict(cls, values))))
    except TextVAEError:
        return values
