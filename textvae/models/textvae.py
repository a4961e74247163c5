"""TextVAE: a sentence VAE composed of parts, and the LSTM language model (``latent_dim = 0``).

    encoder(x) -> h [B, H_enc] -> posterior head -> q(z|x) = N(mu, sigma²)
    z ~ q(z|x) -> decoder(<s> w1..wn, z) -> hidden [B, T, H_dec] -> projection -> p(w1..wn </s> | z)

``forward`` returns per-sentence reconstruction NLL, per-dimension KL, token counts and the loss of
the configured objective; the training loop only calls ``backward`` on it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig
from textvae.data.batch import Batch
from textvae.data.special import PAD_ID
from textvae.errors import TextVAEError
from textvae.files import replace_as_new_file
from textvae.models.decoders import DECODERS
from textvae.models.distributions import PRIORS, DiagGaussian, StandardNormal, kl_per_dim
from textvae.models.encoders import ENCODERS
from textvae.models.posteriors import POSTERIORS
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.objective import Objective

WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"

# Tokens per chunk of the fused loss without gradients (evaluation) and in bf16: bounds its fp32
# softmax scratch to 256 x V floats (10 MB at V = 10k) whatever the number of tokens, so
# evaluation memory does not grow with its batch.
LOSS_CHUNK_TOKENS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    """nll_i = logsumexp_v(l_i)_v - l_{i, y_i} with l_i = W h_i + b, fused with its gradient.

    The reference path (``F.linear`` then ``F.cross_entropy(logits.float())``) writes the [N, V]
    logits, an fp32 copy and the fp32 log-softmax, and its backward passes over them again
    (NLL backward, log-softmax backward, cast back). Here each chunk of n tokens makes fp32
    logits [n, V] (the bias-free GEMM in the compute dtype, then the fp32 bias in the same pass
    as the cast: the bias is never rounded to bf16) and turns them into their softmax p in place
    (without gradients, into their log-softmax, and nothing else); the NLL needs no log-softmax:

        log p_y = l_y - lse,  lse = max_v l - log max_v p   (max_v p >= 1/V never underflows),

    and, when gradients are needed, dl = p - onehot(y) is stored in the compute dtype as G [N, V]
    (its target entries formed in fp32, so p_y near 1 keeps its precision). The backward is
    then two GEMMs for any upstream gradient g [N] (db as one more column of the second):

        dh = (G W) * g[:, None],   [dW | db] = G^T [h * g[:, None] | g].

    With gradients in fp32 the whole batch is one chunk (its softmax *is* G, no scratch);
    otherwise chunks bound the fp32 scratch to ``chunk`` x V. fp32 on CPU pads the vocabulary
    to a multiple of 16 with zero rows of W and bias -inf (probability 0, gradient 0): MKL's
    fp32 GEMM h W^T runs at 75-120 GFLOP/s with V = 10002 output columns but 135-165 with 10016
    on this CPU (``benchmarks/throughput.py``); the padded copy of W costs one V x H write.

    It is the exact full-vocabulary cross-entropy (no sampling): only rounding differs.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                targets: torch.Tensor, dtype: torch.dtype, chunk: int, grad_enabled: bool) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.float()  # added to the fp32 logits, never rounded to bf16
            n_tokens, vocab = h.shape[0], w.shape[0]
            pad = -vocab % 16 if dtype == torch.float32 and h.device.type == "cpu" else 0
            if pad:
                w = F.pad(w, (0, 0, 0, pad))
                b = F.pad(w.new_zeros(vocab) if b is None else b, (0, pad), value=-math.inf)
            # (needs_input_grad is set for parameters even under no_grad: evaluation must not pay
            # for a gradient buffer it never uses)
            need_grad = grad_enabled and any(ctx.needs_input_grad[:3])
            if need_grad and dtype == torch.float32:
                chunk = max(n_tokens, 1)
            nll = torch.empty(n_tokens, device=h.device, dtype=torch.float32)
            grad_logits = None  # G [N, V + pad]
            if need_grad and dtype != torch.float32:
                grad_logits = torch.empty(n_tokens, vocab + pad, device=h.device, dtype=dtype)
            for start in range(0, n_tokens, chunk):
                hc, yc = h[start:start + chunk], targets[start:start + chunk]
                rows = torch.arange(hc.shape[0], device=h.device)
                logits = torch.mm(hc, w.t())  # [n, V + pad] in the compute dtype
                # fp32 logits [n, V + pad]; the bias rides in this pass, not in the GEMM (addmm
                # first writes the broadcast bias into its output: ~30 % slower in bf16 at n = 256)
                if logits.dtype == torch.float32:
                    logits = logits if b is None else logits.add_(b)
                else:
                    logits = logits.float() if b is None else torch.add(logits, b)
                if not need_grad:  # evaluation: one pass, in place, nothing kept
                    nll[start:start + chunk] = -torch.log_softmax(logits, -1, out=logits)[rows, yc]
                    continue
                logit_y, logit_max = logits[rows, yc], logits.amax(-1)
                probs = torch.softmax(logits, -1, out=logits)  # in place: the logits are not needed again
                nll[start:start + chunk] = logit_max - probs.amax(-1).log() - logit_y
                probs[rows, yc] -= 1.0
                if grad_logits is None:  # fp32: one chunk, the scratch is G itself
                    grad_logits = probs
                else:
                    grad_logits[start:start + chunk] = probs
        ctx.save_for_backward(h, w, grad_logits)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.vocab = vocab
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_nll: torch.Tensor):
        h, w, grad_logits = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        g = grad_nll.to(grad_logits.dtype)  # [N]
        grad_h = grad_w = grad_b = None
        with torch.autocast(h.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_h = (grad_logits @ w).mul_(g.unsqueeze(1)).to(h_dtype)  # [N, H]
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                n, hid = h.shape
                rhs = h * g.unsqueeze(1)  # [N, H]
                if ctx.needs_input_grad[2]:
                    # db = G^T g rides in dW's GEMM as one more column of its right operand (zero-padded
                    # to 16 columns, aligned): one pass over G instead of a second one for a GEMV
                    rhs = torch.cat([rhs, g.unsqueeze(1), rhs.new_zeros(n, 15)], dim=1)  # [N, H + 16]
                both = grad_logits.t() @ rhs  # [V + pad, H (+ 16)]; padding rows dropped below
                if ctx.needs_input_grad[2]:
                    grad_b = both[:ctx.vocab, hid].to(b_dtype).contiguous()  # [V]
                if ctx.needs_input_grad[1]:
                    grad_w = both[:ctx.vocab, :hid].to(w_dtype).contiguous()  # [V, H]
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         targets: torch.Tensor, chunk: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Per-token NLL [N] of ``targets`` [N] under softmax(hidden [N, H] W^T + b), fused (see
    :class:`_LinearCrossEntropy`). The matmuls run in the autocast dtype when autocast is on (bf16
    on CPU), else in the dtype of ``hidden``; softmax statistics are always fp32."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, chunk, torch.is_grad_enabled())


def set_sparse_embeddings(module: nn.Module, on: bool) -> None:
    """Every ``nn.Embedding`` inside ``module`` back-propagates a sparse gradient (the rows it
    read) when ``on``, a dense [V, E] one otherwise."""
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            sub.sparse = on


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


class PretrainedMixin:
    """Saving and loading a model folder: ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``).

    A model class provides ``config_dict()`` and the classmethod ``from_config_dict(cfg)``; the
    files, atomic writes and load errors are shared here (TextVAE, the dialogue CVAE).
    """

    def save_weights(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (weights and buffers) atomically: a crash mid-write keeps
        the previous file. No pickle: it loads with any torch version, on any device."""
        from safetensors.torch import save_model

        tmp = Path(directory) / (WEIGHTS_FILE + ".tmp")
        try:
            save_model(self, str(tmp))
        except Exception as e:  # OSError, or safetensors' own error type wrapping one (a full disk)
            tmp.unlink(missing_ok=True)
            reason = str(e).splitlines()[0]
            raise TextVAEError(f"cannot write {tmp}: {reason}; any earlier {WEIGHTS_FILE} there is intact; free "
                               f"space (or fix the cause) and save again (a training run: --resume)") from None
        replace_as_new_file(tmp, Path(directory) / WEIGHTS_FILE)

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
        from safetensors.torch import load_model

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
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
        try:
            load_model(model, str(weights_path), device=str(device))
        except Exception as e:  # safetensors raises several types for truncated/garbled files
            raise TextVAEError(f"cannot load weights {weights_path}: {str(e).splitlines()[0]}") from None
        return model.to(device)


class TextVAE(PretrainedMixin, nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, objective: Optional[ObjectiveConfig] = None):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.objective_cfg = objective or ObjectiveConfig()
        # fused projection + cross-entropy in token_nll (same loss; False: the F.linear +
        # F.cross_entropy reference path, kept for tests and A/B benchmarks)
        self.fused_loss = True
        # training-only sampled softmax (train.sampled_softmax; set by the loop, not saved)
        self.sampled_softmax: Optional[SampledSoftmax] = None
        self.sparse_gradients = False  # see set_sparse_gradients
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
        self.objective = Objective(self.objective_cfg, latent_dim=d, vocab_size=vocab_size,
                                   hidden_dim=self.decoder.out_dim, emb_dim=cfg.emb_dim,
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
                self.init_weights([self.encoder, self.posterior], self.cfg.encoder_init or self.cfg.init)
            return
        scheme = scheme or self.cfg.init
        if scheme not in ("he2019", "torch"):
            raise TextVAEError(f"unknown init {scheme!r}; valid: he2019, torch")
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

    def set_sparse_gradients(self, on: bool) -> None:
        """Sparse gradients for row lookups (``train.sparse_gradients``): every ``nn.Embedding``
        of the model, and the sampled softmax's output rows, then back-propagate only the rows
        they read. Only an optimiser that leaves rows without gradient untouched (plain SGD) may
        take them; the loop decides."""
        self.sparse_gradients = on
        set_sparse_embeddings(self, on)

    # ---- latent side -------------------------------------------------------------------------
    def encode_hidden(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        """Encoder context h [B, H] and the posterior q(z|x) built from it (after remedies)."""
        h = self.encoder(batch.tokens, batch.lengths).float()
        # The latent side stays fp32 under autocast (it is B x H x 2D FLOPs): in bf16, mu, log sigma²
        # and the KL term of the loss would keep only 3 significant digits.
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.posterior(h)
            for remedy in self.objective.remedies:
                mu, logvar = remedy.transform_posterior(mu, logvar)
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
        targets = batch.targets
        mask = targets != PAD_ID  # [B, T-1]
        # Project only real positions: padding costs no vocabulary matmul.
        if self.training and self.sampled_softmax is not None:
            nll = self.sampled_softmax(hidden[mask], self.projection.weight, self.projection.bias, targets[mask],
                                       sparse=self.sparse_gradients)
        elif self.fused_loss:
            nll = linear_cross_entropy(hidden[mask], self.projection.weight, self.projection.bias, targets[mask])
        else:  # the plain reference path
            nll = F.cross_entropy(self.projection(hidden[mask]).float(), targets[mask], reduction="none")
        rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[mask]
        return torch.zeros(targets.shape[0], device=nll.device, dtype=nll.dtype).index_add_(0, rows, nll)

    def log_likelihood(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z_s) for z [S, B, D] -> [S, B]; the batch is repeated S times (sample-major) so the
        decoder scores all (sentence, sample) pairs in one pass."""
        s, b, d = z.shape
        repeated = Batch(tokens=batch.tokens.repeat(s, 1), lengths=batch.lengths.repeat(s))
        return -self.token_nll(repeated, z.reshape(s * b, d)).view(s, b)

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
        inputs = batch.inputs
        if self.training:
            for remedy in self.objective.remedies:
                inputs = remedy.corrupt_inputs(inputs)
        if self.is_lm:
            z, extras = None, {}
            kl = batch.tokens.new_zeros((len(batch), 0), dtype=torch.float32)
        else:
            h, q = self.encode_hidden(batch)
            with torch.autocast(h.device.type, enabled=False):  # fp32, as in encode_hidden
                z = q.rsample(1)[0]
                kl = kl_per_dim(q, self.prior, z)
            extras = self.objective.extra_losses(self, batch, z, h)
        rec = self.token_nll(batch, z, inputs)
        loss, terms = self.objective(rec, kl, step, extras)
        return VAEOutput(rec=rec, kl=kl, n_tokens=batch.n_tokens, loss=loss, terms=terms, z=z)

    # ---- persistence (files: PretrainedMixin) -------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.cfg), "vocab_size": self.vocab_size,
                "objective": dataclasses.asdict(self.objective_cfg)}

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> "TextVAE":
        if cfg.get("model_type") == "kgcvae":  # the dialogue CVAE's folders look the same
            raise TextVAEError("this is a dialogue CVAE, which evaluate, sample, reconstruct and interpolate do not "
                               "take (they read sentence VAEs); use `textvae respond RUN --context ...`")
        return cls(model_config_from_dict(cfg["model"]), int(cfg["vocab_size"]),
                   ObjectiveConfig(**cfg.get("objective", {})))


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    d["encoder"] = EncoderConfig(**d.get("encoder", {}))
    d["decoder"] = DecoderConfig(**d.get("decoder", {}))
    return ModelConfig(**d)
