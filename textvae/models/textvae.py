"""TextVAE: a sentence VAE composed of parts, and the LSTM language model (``latent_dim = 0``).

    encoder(x) -> h [B, H_enc] -> posterior head -> q(z|x) = N(mu, sigma²)
    z ~ q(z|x) -> decoder(<s> w1..wn, z) -> hidden [B, T, H_dec] -> projection -> p(w1..wn </s> | z)

``forward`` returns per-sentence reconstruction NLL, per-dimension KL, token counts and the loss of
the configured objective; the training loop only calls ``backward`` on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig
from textvae.data.batch import Batch
from textvae.errors import TextVAEError
from textvae.files import partial_file, write_safetensors
from textvae.models.decoders import DECODERS
from textvae.models.distributions import PRIORS, DiagGaussian, StandardNormal, kl_terms
from textvae.models.encoders import ENCODERS
from textvae.models.posteriors import POSTERIORS
from textvae.models.output_head import OutputHead
from textvae.objective import Objective

WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"


def locate_model(path: str | Path) -> tuple[Path, Optional[Path]]:
    """(the saved model folder, the run folder it belongs to or None) of ``path``: a run folder (its
    ``config.yaml`` and its best model in ``model/``), a run's ``model/`` itself, or a model folder on its
    own (``config.json``, weights, tokenizer); a one-line error for anything else."""
    p = Path(path)
    if not p.exists():
        raise TextVAEError(f"no such run or model folder: {p}")
    if (p / "config.yaml").is_file() and (p / "model").is_dir():
        return p / "model", p
    if not (p / CONFIG_FILE).is_file():
        raise TextVAEError(f"{p} is neither a run folder (config.yaml and model/) nor a model folder ({CONFIG_FILE} "
                           f"and {WEIGHTS_FILE})")
    run = p.resolve().parent  # ("." inside the run's model/ too)
    trained = (run / "metrics.jsonl").is_file() or (run / "checkpoint.safetensors").is_file()
    inside_run = p.resolve().name == "model" and (run / "config.yaml").is_file() and trained
    return p, run if inside_run else None


@dataclass
class VAEOutput:
    """Per-sentence figures of one batch (B sentences, D latent dimensions).

    rec [B]: Σ_t -log p(x_t | x_<t, z); kl [B, D]: KL(q(z|x) || p(z)) per dimension (one MC column
    when there is no closed form); n_tokens [B]; loss: the objective's scalar; terms: for logging.
    """

    rec: torch.Tensor
    kl: torch.Tensor
    n_tokens: torch.Tensor
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    z: Optional[torch.Tensor] = None


def unshared_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as CPU copies that share no memory, a tied weight once (under its first name
    in sorted order, as safetensors' ``save_model`` keeps it, so its ``load_model`` reads the file).
    On CUDA, cuDNN packs an LSTM's weights into one buffer, which ``save_model`` refuses to write."""
    state, seen = {}, set()
    for name, tensor in sorted(module.state_dict().items()):
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return state


INITS = ("he2019", "torch")  # the schemes of TextVAE.init_weights


class PretrainedMixin:
    """Saving and loading a model folder: ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``).

    A model class provides ``config_dict()`` and the classmethod ``from_config_dict(cfg)``; the
    files, atomic writes and load errors are shared here (TextVAE, the dialogue CVAE).

    ``MOVED_STATE`` maps where earlier versions of a class kept some of its weights to where it keeps
    them now (key prefixes): :meth:`state_now` renames a saved state dict, and a class with moves
    registers :meth:`_load_moved_state` as a ``load_state_dict`` pre-hook, so its saved models and
    checkpoints still load.
    """

    MOVED_STATE: dict[str, str] = {}

    def state_now(self, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state`` (keys under ``prefix``) with its keys as this version of the class names them."""
        def now(key: str) -> str:
            for old, new in self.MOVED_STATE.items():
                if key.startswith(prefix + old):
                    return prefix + new + key[len(prefix + old):]
            return key
        return {now(k): v for k, v in state.items()}

    def _load_moved_state(self, state: dict[str, Any], prefix: str, *_: Any) -> None:
        moved = self.state_now(state, prefix)
        state.clear()
        state.update(moved)

    def save_weights(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (weights and buffers) atomically: a crash mid-write keeps
        the previous file. No pickle: it loads with any torch version, on any device."""
        path = Path(directory) / WEIGHTS_FILE
        try:
            write_safetensors(path, unshared_state(self), {"format": "pt"})
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TextVAEError(f"cannot write {partial_file(path)}: {reason}; any earlier {WEIGHTS_FILE} there is "
                               f"intact; free space (or fix the cause) and save again (a training run: --resume, "
                               f"or, before its first checkpoint, start it again)") from None

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and, if given, ``tokenizer.json``;
        :meth:`from_pretrained` reads the folder back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_weights(directory)
        tmp = directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(self.config_dict(), indent=2))
        os.replace(tmp, directory / CONFIG_FILE)
        if tokenizer is not None:
            tokenizer.save(directory / TOKENIZER_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Any:
        """The model saved in ``directory`` (``config.json`` and ``model.safetensors``: a run's ``model/``), on
        ``device``, in eval mode: encoding and scoring are then deterministic, and BN-VAE's running statistics stay
        as saved (``.train()`` to train it further)."""
        from safetensors.torch import load_model

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() and (directory / "model" / CONFIG_FILE).is_file():
            raise TextVAEError(f"{directory} is a run folder; its model is {directory / 'model'} "
                               f"(textvae.pretrained.load takes either, with the run's tokenizer)")
        for path in (config_path, weights_path):
            if not path.is_file():
                raise TextVAEError(f"not a saved textvae model: {path} is missing")
        try:
            cfg = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise TextVAEError(f"corrupted model config {config_path}: {e}") from None
        try:
            model = cls.from_config_dict(cfg)
        except TextVAEError as e:
            raise TextVAEError(f"{directory}: {e}") from None
        except (TypeError, KeyError, AttributeError, ValueError) as e:  # a key this version lacks, a wrong shape
            raise TextVAEError(f"{config_path} is not a model configuration this textvae reads ({type(e).__name__}: "
                               f"{e}); was it written by another version?") from None
        try:
            load_model(model, str(weights_path), device=str(device))
        except Exception as e:  # safetensors raises several types for truncated/garbled files
            raise TextVAEError(f"cannot load weights {weights_path}: {str(e).splitlines()[0]}") from None
        return model.to(device).eval()


class TextVAE(OutputHead, PretrainedMixin, nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, objective: Optional[ObjectiveConfig] = None, *,
                 check: bool = True):
        """``check``: refuse a setting that a part would ignore (:func:`refuse_ignored_settings`), as a recipe's
        is refused; off for a saved model, which loads as it was made, whatever rule came after it."""
        super().__init__()
        if check:
            refuse_ignored_settings(cfg)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.objective_cfg = objective or ObjectiveConfig()
        d = cfg.latent_dim
        if d > 0:
            enc = cfg.encoder
            self.encoder = ENCODERS.build(enc.type, enc.options, vocab_size=vocab_size, emb_dim=cfg.emb_dim,
                                          hidden_dim=enc.hidden_dim, num_layers=enc.num_layers,
                                          bidirectional=enc.bidirectional, dropout=enc.dropout)
            self.posterior = POSTERIORS.build(cfg.posterior, cfg.posterior_options, in_dim=self.encoder.out_dim,
                                              latent_dim=d)
            self.prior = PRIORS.build(cfg.prior, cfg.prior_options, latent_dim=d)
        else:
            self.prior = StandardNormal(0)
        dec = cfg.decoder
        self.decoder = DECODERS.build(dec.type, dec.options, vocab_size=vocab_size, emb_dim=cfg.emb_dim,
                                      hidden_dim=dec.hidden_dim, latent_dim=d, num_layers=dec.num_layers,
                                      input_dropout=dec.input_dropout, output_dropout=dec.output_dropout,
                                      z_init=dec.z_init, z_concat=dec.z_concat)
        self.projection = nn.Linear(self.decoder.out_dim, vocab_size)
        self.init_weights()
        if cfg.tie_weights:
            if self.decoder.out_dim != cfg.emb_dim:
                raise TextVAEError(f"tie_weights needs decoder hidden_dim == emb_dim "
                                   f"({self.decoder.out_dim} != {cfg.emb_dim})")
            self.projection.weight = self.decoder.embedding.weight
        self.objective = Objective(self.objective_cfg, posterior=cfg.posterior, latent_dim=d,
                                   vocab_size=vocab_size, hidden_dim=self.decoder.out_dim, emb_dim=cfg.emb_dim,
                                   encoder_dim=self.encoder.out_dim if d > 0 else 0)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def is_lm(self) -> bool:
        return self.cfg.latent_dim == 0

    def init_weights(self, parts: Optional[list[nn.Module]] = None, scheme: Optional[str] = None) -> None:
        """(Re-)draw the parameters of ``parts`` with ``scheme`` (default: ``cfg.init``):
        ``he2019`` = U(-0.01, 0.01) for weights, U(-0.1, 0.1) for embeddings (He et al. 2019),
        normalisation layers excepted; ``torch`` = each layer's PyTorch default initialisation.
        Without ``parts``: the decoder side with ``cfg.init`` and the encoder side with
        ``cfg.encoder_init`` (falling back to ``cfg.init``)."""
        if parts is None:
            self.init_weights([self.projection, self.decoder], self.cfg.init)  # a tied weight: as the embedding
            if not self.is_lm:
                self.init_weights([self.encoder, self.posterior], self.cfg.encoder_scheme())
            return
        scheme = scheme or self.cfg.init
        if scheme not in INITS:
            raise TextVAEError(f"unknown init {scheme!r}; valid: {', '.join(INITS)}")
        for part in parts:
            if scheme == "torch":
                for sub in part.modules():
                    if hasattr(sub, "reset_parameters"):
                        sub.reset_parameters()
                continue
            with torch.no_grad():
                for name, p in part.named_parameters():
                    if "norm" in name:  # normalisation scales keep their own initialisation
                        continue
                    bound = 0.1 if "embedding" in name else 0.01
                    p.uniform_(-bound, bound)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The inference network q(z|x): encoder, posterior head, and the remedies that transform
        the posterior. He et al. (2019) update exactly these in their aggressive inner loop."""
        modules: list[nn.Module] = [self.encoder, self.posterior, *self.objective.posterior_remedies()]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def prior_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of p(z) (a flow prior's; none for N(0, I)), which only the KL term reaches."""
        return [p for p in self.prior.parameters() if p.requires_grad]

    def reinit_decoder(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Re-draw the decoder and output projection with the init scheme (Li et al. 2019
        re-initialise the decoder after pretraining) and drop their optimiser state (momentum,
        Adam moments), which belonged to the old weights."""
        # named_parameters() lists a tied projection/embedding weight once, by its embedding name
        params = [p for name, p in self.named_parameters() if name.startswith(("decoder.", "projection."))]
        self.init_weights([self.projection, self.decoder])  # the decoder last: a tied weight as the embedding's
        if optimizer is not None:
            for p in params:
                optimizer.state.pop(p, None)

    def load_inference_network(self, directory: str | Path, tokenizer: Any = None) -> None:
        """Copy the inference network of the saved model in ``directory`` over this model's, keeping
        its decoder as drawn: Li et al. (2019) train an autoencoder, then start the VAE from its
        encoder with a fresh decoder (``--load_path AE --reset_dec``). Copied: the encoder, the
        posterior head, and the remedies that transform the posterior (BN-VAE's) when the saved
        model has the same ones; otherwise this model's stay as drawn. ``tokenizer``: the run's,
        which must have the saved model's vocabulary (word ids index both embeddings); a saved
        model without ``tokenizer.json`` is only checked by its shapes."""
        directory = Path(directory)
        if self.is_lm:
            raise TextVAEError("model.encoder_from: a language model (latent_dim 0) has no encoder to load")
        try:
            source = type(self).from_pretrained(directory)
        except TextVAEError as e:
            raise TextVAEError(f"model.encoder_from: {e}") from None
        if source.is_lm:
            raise TextVAEError(f"model.encoder_from: {directory} holds a language model, which has no encoder")
        if tokenizer is not None and (directory / TOKENIZER_FILE).is_file():
            from textvae.data.tokenization import Tokenizer

            if Tokenizer.load(directory / TOKENIZER_FILE).hf.get_vocab() != tokenizer.hf.get_vocab():
                raise TextVAEError(f"model.encoder_from: {directory} was trained with another vocabulary than "
                                   f"this run's data")
        parts = [("encoder", self.encoder, source.encoder), ("posterior head", self.posterior, source.posterior)]
        mine, theirs = self.objective.posterior_remedies(), source.objective.posterior_remedies()
        if [type(r) for r in mine] == [type(r) for r in theirs]:
            parts += [(f"remedy {r.name}", r, t) for r, t in zip(mine, theirs)]
        for part, target, saved in parts:
            state = saved.state_dict()
            if {k: tuple(v.shape) for k, v in target.state_dict().items()} != {k: tuple(v.shape)
                                                                                for k, v in state.items()}:
                raise TextVAEError(f"model.encoder_from: the {part} in {directory} has other parameters than this "
                                   f"model's (its config.json against this run's model settings)")
            target.load_state_dict(state)

    # ---- latent side -------------------------------------------------------------------------
    def encode_hidden(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        """Encoder context h [B, H] and the posterior q(z|x) built from it (after remedies)."""
        h = self.encoder(batch.tokens, batch.lengths).float()
        # The latent side stays fp32 under autocast (it is B x H x 2D FLOPs): in bf16, mu, log sigma²
        # and the KL term of the loss would keep only 3 significant digits.
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.objective.transform_posterior(*self.posterior(h))
            return h, self.posterior.distribution(mu, logvar, h)

    def encode(self, batch: Batch):
        """q(z|x). The language model's latent space is empty (D = 0): its posterior is a
        0-dimensional Gaussian whose log-densities are 0, so every metric reduces to the exact NLL."""
        if self.is_lm:
            empty = batch.tokens.new_zeros((len(batch), 0), dtype=torch.float32)
            return DiagGaussian(empty, empty)
        return self.encode_hidden(batch)[1]

    # ---- decoder side ------------------------------------------------------------------------
    def token_nll(self, batch: Batch, z: Optional[torch.Tensor], inputs: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
        """Per-sentence Σ_t -log p(x_t | x_<t, z) [B]; ``inputs`` overrides the decoder inputs
        (word dropout) while the targets stay the true tokens."""
        hidden, _ = self.decoder(batch.inputs if inputs is None else inputs, z)
        return self.sentence_nll(hidden, batch.targets)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z_s) for z [S, B, D] -> [S, B]: the decoder scores all (sample, sentence) pairs in
        one pass (``forward_samples``, rows sample-major)."""
        s, b, _ = z.shape
        return -self.sentence_nll(self.decoder.forward_samples(batch.inputs, z), batch.targets.repeat(s, 1)).view(s, b)

    def decode_step(self, tokens: torch.Tensor, z: Optional[torch.Tensor], state: Any = None
                    ) -> tuple[torch.Tensor, Any]:
        """One decoding step: tokens [B, 1] -> logits [B, V] and the new state."""
        hidden, state = self.decoder(tokens, z, state)
        return self.projection(hidden[:, -1]), state

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        return self.decoder.reorder_state(state, index)

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.prior.sample(n, generator=generator)

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: Batch, step: int = 0) -> VAEOutput:
        inputs = self.objective.corrupt_inputs(batch.inputs) if self.training else batch.inputs
        if self.is_lm:
            z, extras = None, {}
            kl = batch.tokens.new_zeros((len(batch), 0), dtype=torch.float32)
        else:
            h, q = self.encode_hidden(batch)
            with torch.autocast(h.device.type, enabled=False):  # fp32, as in encode_hidden
                z = q.rsample(1)[0]
                kl, _ = kl_terms(q, self.prior, z)
            extras = self.objective.extra_losses(self, batch, z, h, step)
        decoded = self.objective.decoder_latent(z, h, step) if self.training and z is not None else z
        rec = self.token_nll(batch, decoded, inputs)
        loss, terms = self.objective(rec, kl, step, extras)
        return VAEOutput(rec=rec, kl=kl, n_tokens=batch.n_tokens, loss=loss, terms=terms, z=z)

    # ---- persistence (files: PretrainedMixin) -------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.cfg), "vocab_size": self.vocab_size,
                "objective": dataclasses.asdict(self.objective_cfg)}

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> "TextVAE":
        if cfg.get("model_type") == "kgcvae":  # the dialogue CVAE's folders look the same
            raise TextVAEError("this is a dialogue CVAE, not a sentence VAE: KgCVAE.from_pretrained reads it, and "
                               "textvae.pretrained.load reads either (a CVAE's .respond(context) answers a context)")
        return cls(model_config_from_dict(cfg["model"]), int(cfg["vocab_size"]),
                   ObjectiveConfig(**cfg.get("objective", {})), check=False)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    d["encoder"] = EncoderConfig(**d.get("encoder", {}))
    d["decoder"] = DecoderConfig(**d.get("decoder", {}))
    return ModelConfig(**d)


def check_model_config(cfg: ModelConfig) -> None:
    """One-line errors, before the data is read, for what building the model would refuse (a part's type
    or options, an init scheme, a setting its part would ignore: :func:`refuse_ignored_settings`) and for
    ``model.encoder_from`` naming a run folder rather than the model folder in it."""
    for name, scheme in (("model.init", cfg.init), ("model.encoder_init", cfg.encoder_scheme())):
        if scheme not in INITS:
            raise TextVAEError(f"unknown {name} {scheme!r}; valid: {', '.join(INITS)}")
    source = Path(cfg.encoder_from) if cfg.encoder_from else None
    if source is not None and (source / "config.yaml").is_file() and (source / "model").is_dir():
        raise TextVAEError(f"model.encoder_from {source} is a run folder; give the model folder in it, {source / 'model'}")
    # every part's options, names and types as its registry checks them, and the values a part checks itself
    # (a cnn decoder's z_into, a transformer's num_heads): a throwaway model of a few words, drawing from a
    # random stream of its own
    with torch.random.fork_rng(devices=[]):
        TextVAE(cfg, vocab_size=8)


def refuse_ignored_settings(cfg: ModelConfig) -> None:
    """One-line errors for what building the model would quietly not do: a setting of ``model.encoder`` /
    ``model.decoder`` that its type does not take (``z_concat`` of the ``cnn`` decoder, ``bidirectional`` of the
    ``cnn`` encoder), set away from its default, and a VAE whose decoder reads z neither in its initial state
    nor at its inputs. The language model (``latent_dim: 0``) builds no encoder, posterior or prior: of those
    only the posterior's and prior's names are checked (a recipe shared with VAEs sets the rest)."""
    parts = [("decoder", DECODERS, cfg.decoder)] + ([("encoder", ENCODERS, cfg.encoder)] if cfg.latent_dim else [])
    for part, registry, section in parts:
        default = type(section)()
        read = [f for f in dataclasses.fields(section) if cfg.latent_dim or f.name not in ("z_init", "z_concat")]
        for f in read:  # the language model's decoder reads no z: its z settings are nobody's
            value = getattr(section, f.name)
            if f.name in registry.supplied and not registry.takes(section.type, f.name) \
                    and value != getattr(default, f.name):
                takers = [n for n in registry.names() if registry.takes(n, f.name)]
                raise TextVAEError(f"model.{part}.{f.name}: {value!r} would be ignored, the {section.type} {part} "
                                   f"does not take it; leave it at {getattr(default, f.name)!r}, or choose one of the "
                                   f"{part}s that do: {', '.join(takers)}")
    POSTERIORS.get(cfg.posterior), PRIORS.get(cfg.prior)  # a misspelt name, even where no latent reads it
    dec = cfg.decoder
    if cfg.latent_dim and all(DECODERS.takes(dec.type, s) for s in ("z_init", "z_concat")) \
            and not (dec.z_init or dec.z_concat):
        raise TextVAEError(f"model.decoder: z_init and z_concat both false leave the {dec.type} decoder no path "
                           f"from z, so the latent would be ignored by construction; set one of them (or "
                           f"latent_dim: 0 for the language model)")
