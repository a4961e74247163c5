"""kgCVAE: a conditional VAE of the response given the dialogue context (Zhao et al. 2017).

    utterance encoder (bi-GRU)  u_k = Enc(turn_k),   x = Enc(response)
    context encoder (GRU)       c   = GRU([u_1; f_1] .. [u_n; f_n]),  f_k = 1 if turn k is the responder's
    recognition network         q(z | x, c, y) = N(mu, sigma²),  [mu, log sigma²] = W [x; c; tanh(A e_y)]
    prior network               p(z | c)       = N(mu', sigma'²), [mu', log sigma'²] = MLP(c)
    act network (kgCVAE)        p(y | z, c)    = softmax(MLP([c; z]))
    decoder                     p(x | z, c, y): initial state W [c; z; e_y] + b, e_y at every input

with y the response's dialogue act (kgCVAE only; e_y its embedding). As in Zhao et al.'s code z reaches
the decoder through its initial state only (``model.decoder_z: every_input``, the wiring textvae had
before, also concatenates it to every input and puts a tanh on the initial state: a stronger coupling
than theirs). Training uses the true y in the decoder; generation, and by default every likelihood
figure, use the predicted soft label e_ŷ = softmax(.) @ E, so p(x | z, c) needs nothing but the context.
Zhao et al.'s code reports its validation and test ELBO with the true act (only generation uses the
predicted one): those figures condition on more than the context, and ``eval.likelihood_act: true``
gives them (:meth:`KgCVAE.likelihood_acts`).

The KL between the two diagonal Gaussians is in closed form (:meth:`DiagGaussian.kl`). The loss comes
from the same :class:`~textvae.objective.Objective` as every sentence VAE, so KL schedules and the
registered remedies are configuration; the act cross-entropy joins as one more per-sentence extra.
Remedies see the CVAE through the sentence-VAE protocol: the batch they get is the response
:class:`Batch` carrying its context vector in ``extras["context_vector"]``, so
``model.token_nll(batch, z)`` decodes it given its context; ``h`` is the recognition network's
input [x; c (; act features)], of ``encoder_dim`` units.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import replace
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from textvae.config import ObjectiveConfig
from textvae.data.batch import Batch
from textvae.dialogue.config import CVAEConfig
from textvae.dialogue.data import DialogueBatch
from textvae.errors import TextVAEError
from textvae.models.decoders import DECODERS
from textvae.models.distributions import DiagGaussian, kl_terms
from textvae.models.encoders import ENCODERS, last_layer_final_state
from textvae.models.output_head import OutputHead
from textvae.models.textvae import PretrainedMixin, VAEOutput
from textvae.objective import Objective

RECURRENT_DECODERS = ("gru", "lstm")  # the decoders with the `rnn`, `num_layers`, `hidden_dim` the CVAE's state needs
DECODER_Z = ("initial_state", "every_input")  # where z enters the decoder: CVAEConfig.decoder_z
LIKELIHOOD_ACTS = ("predicted", "true")  # what evaluation conditions on: DialogueEvalConfig.likelihood_act


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 where autocast left it in a lower precision (a float64 model stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_likelihood_act(which: str) -> None:
    if which not in LIKELIHOOD_ACTS:
        raise TextVAEError(f"eval.likelihood_act {which!r}; valid: {', '.join(LIKELIHOOD_ACTS)}")


class HierarchicalContextEncoder(nn.Module):
    """c [B, H_c] = final state of a GRU over the turn vectors [Enc(turn_k); f_k] (Serban et al. 2016;
    Zhao et al. 2017). f_k = 1 when turn k was said by the speaker of the response, assuming the two
    speakers alternate (Zhao et al. feed the same "floor" bit)."""

    def __init__(self, utterance_encoder: nn.Module, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.utterance = utterance_encoder
        self.rnn = nn.GRU(utterance_encoder.out_dim + 1, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden_dim

    def forward(self, context: torch.Tensor, turn_lengths: torch.Tensor, n_turns: torch.Tensor) -> torch.Tensor:
        b, n, _ = context.shape
        real = turn_lengths > 0  # [B, N]; padding turns are never encoded (packing rejects length 0)
        turns = self.utterance(context[real], turn_lengths[real])  # [M, U], M real turns
        vectors = turns.new_zeros(b, n, turns.shape[-1]).masked_scatter(real.unsqueeze(-1), turns)
        distance = n_turns.unsqueeze(1) - torch.arange(n, device=context.device)  # turns back from the response
        own_turn = (distance % 2 == 0).to(vectors.dtype).unsqueeze(-1)  # [B, N, 1]
        packed = pack_padded_sequence(torch.cat([self.dropout(vectors), own_turn], -1), n_turns.cpu(),
                                      batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return last_layer_final_state(h_n, 1, 1)


class KgCVAE(OutputHead, PretrainedMixin, nn.Module):
    """The CVAE / kgCVAE of Zhao et al. (2017); see the module docstring.

    ``act_names`` are the dialogue-act classes of the data (kgCVAE needs them, ``cfg.use_acts``);
    ``text`` records how contexts were prepared (``context_turns``, ``max_turn_words``) so a saved
    model prepares new contexts the same way.
    """

    # the prior's own remedy instances (BN-CVAE's) were the model's until the objective owned them
    MOVED_STATE = {"prior_transforms.": "objective.prior_transforms."}

    def __init__(self, cfg: CVAEConfig, vocab_size: int, objective: Optional[ObjectiveConfig] = None,
                 act_names: Optional[list[str]] = None, text: Optional[dict[str, int]] = None):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.objective_cfg = objective or ObjectiveConfig()
        self.act_names = list(act_names or [])
        self.text = dict(text or {})
        self.likelihood_act = "predicted"  # what evaluation's likelihoods condition on (likelihood_acts)
        if cfg.use_acts and not self.act_names:
            raise TextVAEError("model.use_acts (kgCVAE) needs dialogue-act labels, and the data has none")
        d = cfg.latent_dim
        self.utterance_encoder = ENCODERS.build(cfg.utterance_encoder, {}, vocab_size=vocab_size,
                                                emb_dim=cfg.emb_dim, hidden_dim=cfg.utterance_hidden,
                                                num_layers=1, bidirectional=True)
        self.context_encoder = HierarchicalContextEncoder(self.utterance_encoder, cfg.context_hidden,
                                                          cfg.context_dropout)
        u, c = self.utterance_encoder.out_dim, cfg.context_hidden
        y = cfg.act_emb_dim if cfg.use_acts else 0
        if cfg.use_acts:
            n_acts = len(self.act_names)
            self.act_embedding = nn.Embedding(n_acts, cfg.act_emb_dim)
            self.act_features = nn.Sequential(nn.Linear(cfg.act_emb_dim, cfg.act_emb_dim), nn.Tanh())
            self.act_classifier = nn.Sequential(nn.Linear(c + d, cfg.act_hidden), nn.Tanh(),
                                                nn.Linear(cfg.act_hidden, n_acts))
        self.recognition = nn.Linear(u + c + y, 2 * d)
        self.prior_net = nn.Sequential(nn.Linear(c, cfg.prior_hidden), nn.Tanh(), nn.Linear(cfg.prior_hidden, 2 * d))
        # The decoder's per-input conditioning is e_y ([z; e_y] with every_input); [c; z; e_y] sets its state.
        if cfg.decoder_z not in DECODER_Z:
            raise TextVAEError(f"model.decoder_z {cfg.decoder_z!r}; valid: {', '.join(DECODER_Z)}")
        every_input = cfg.decoder_z == "every_input"
        if cfg.decoder_type not in RECURRENT_DECODERS:  # the initial state below is an RNN's, layer by layer
            raise TextVAEError(f"model.decoder_type {cfg.decoder_type!r}: the dialogue CVAE starts its decoder "
                               f"from [c; z] as a recurrent state; valid: {', '.join(RECURRENT_DECODERS)}")
        self.decoder = DECODERS.build(cfg.decoder_type, {}, vocab_size=vocab_size, emb_dim=cfg.emb_dim,
                                      hidden_dim=cfg.decoder_hidden, latent_dim=(d if every_input else 0) + y,
                                      num_layers=cfg.decoder_layers,
                                      input_dropout=cfg.input_dropout, output_dropout=cfg.output_dropout,
                                      z_init=False, z_concat=True)
        if cfg.share_embeddings:
            self.decoder.embedding = self.utterance_encoder.embedding
        self.init_state = nn.Linear(c + d + y, cfg.decoder_layers * cfg.decoder_hidden)
        self.projection = nn.Linear(self.decoder.out_dim, vocab_size)
        # The reference loss, with which the CVAE's published runs were trained: the fused one gives
        # the same loss rounded differently, so switching would change every recorded result.
        self.fused_loss = False
        facts = dict(latent_dim=d, vocab_size=vocab_size, hidden_dim=self.decoder.out_dim, emb_dim=cfg.emb_dim,
                     encoder_dim=u + c + y, condition_dim=c)
        self.objective = Objective(self.objective_cfg, posterior=cfg.latent_family()["posterior"],
                                   prior_remedies=cfg.prior_remedies, **facts)
        self._register_load_state_dict_pre_hook(self._load_moved_state)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @contextlib.contextmanager
    def likelihood_acts(self, which: str) -> Iterator[None]:
        """Inside the block, likelihoods in evaluation condition on the ``which`` act: ``predicted``
        (the default) or ``true`` (the labelled one, as Zhao et al.'s reported ELBO)."""
        check_likelihood_act(which)
        before, self.likelihood_act = self.likelihood_act, which
        try:
            yield
        finally:
            self.likelihood_act = before

    @property
    def use_acts(self) -> bool:
        return self.cfg.use_acts

    # ---- latent side -------------------------------------------------------------------------
    def encode_context(self, batch: DialogueBatch) -> torch.Tensor:
        """c [B, H_c]."""
        return self.context_encoder(batch.context, batch.turn_lengths, batch.n_turns)

    def prior(self, c: torch.Tensor) -> DiagGaussian:
        """p(z|c) after the prior transforms (BN on its mean for BN-CVAE); fp32 under autocast, as the
        posterior (:meth:`posterior`)."""
        with torch.autocast(c.device.type, enabled=False):
            return DiagGaussian(*self.objective.transform_prior(*self.prior_net(at_least_fp32(c)).chunk(2, dim=-1)))

    def posterior(self, batch: DialogueBatch, c: torch.Tensor) -> tuple[DiagGaussian, torch.Tensor]:
        """q(z|x,c[,y]) after the remedies' posterior transforms, and its input h = [x; c (; act
        features)] [B, encoder_dim], x the response vector."""
        x = self.utterance_encoder(batch.response.tokens, batch.response.lengths)
        parts = [x, c]
        if self.use_acts:
            parts.append(self.act_features(self.act_embedding(self._true_acts(batch))))
        h = at_least_fp32(torch.cat(parts, -1))
        # The latent side stays fp32 under autocast, as the sentence VAE's (TextVAE.encode_hidden): in bf16,
        # mu, log sigma² and the KL term would keep only 3 significant digits.
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.objective.transform_posterior(*self.recognition(h).chunk(2, dim=-1))
        return DiagGaussian(mu, logvar), h

    def prior_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of p(z|c): the prior network and its transforms (BN-CVAE's), which
        only the KL term reaches."""
        return [p for m in (self.prior_net, self.objective.prior_transforms) for p in m.parameters() if p.requires_grad]

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of q(z|x,c): encoders, recognition network (and act features), and
        remedies that transform the posterior (what aggressive training updates in its inner loop)."""
        modules: list[nn.Module] = [self.context_encoder, self.recognition]  # the context encoder holds the utterance one
        if self.use_acts:
            modules += [self.act_embedding, self.act_features]
        modules += self.objective.posterior_remedies()
        return list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())

    def reinit_decoder(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        raise TextVAEError("re-initialising the decoder (remedy 'encoder_pretraining') is not supported for the "
                           "dialogue CVAE: its decoder shares the embedding with the utterance encoder")

    def _true_acts(self, batch: DialogueBatch) -> torch.Tensor:
        if batch.acts is None:
            raise TextVAEError("this kgCVAE needs the responses' dialogue acts, and the batch has none")
        return batch.acts

    def act_logits(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """p(y | z, c) as logits [B, n_acts]."""
        return self.act_classifier(torch.cat([c, z], -1))

    def latent_code(self, c: torch.Tensor, z: torch.Tensor, acts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoder's conditioning [z; e_y] [B, D (+ A)]: the true act's embedding when ``acts`` is
        given, else the predicted soft one softmax(logits) @ E; just z without acts. The initial state
        reads all of it, every input :meth:`step_code`'s part."""
        if not self.use_acts:
            return z
        if acts is not None:
            e_y = self.act_embedding(acts)
        else:
            e_y = self.act_logits(c, z).softmax(-1) @ self.act_embedding.weight
        return torch.cat([z, e_y], -1)

    def step_code(self, code: torch.Tensor) -> torch.Tensor:
        """What joins every decoder input: e_y [B, A] (nothing, [B, 0], without acts), or the whole
        [z; e_y] with ``decoder_z: every_input``."""
        return code if self.cfg.decoder_z == "every_input" else code[:, self.latent_dim:]

    # ---- decoder side ------------------------------------------------------------------------
    def initial_state(self, c: torch.Tensor, code: torch.Tensor) -> Any:
        """Decoder state from [c; z; e_y], linear as in Zhao et al.'s code: h0 = W [c; code] + b per
        layer (LSTMs: c0 = h0); with ``decoder_z: every_input`` h0 = tanh(W [c; code] + b) (LSTMs:
        c0 = W [..] + b), as textvae's decoders do with z."""
        dec = self.decoder
        pre = self.init_state(torch.cat([c, code], -1))
        pre = pre.view(c.shape[0], dec.num_layers, dec.hidden_dim).transpose(0, 1).contiguous()
        h0 = torch.tanh(pre) if self.cfg.decoder_z == "every_input" else pre
        return (h0, pre) if isinstance(dec.rnn, nn.LSTM) else h0

    @staticmethod
    def with_context(response: Batch, c: torch.Tensor) -> Batch:
        """The response batch carrying its context vectors c [B, H_c] (what :meth:`token_nll` reads)."""
        return replace(response, extras={**response.extras, "context_vector": c})

    def token_nll(self, response: Batch, z: torch.Tensor, inputs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-response Σ_t −log p(x_t | x_<t, z, c) [B], c from ``response.extras["context_vector"]``
        (:meth:`with_context`). In training, or inside :meth:`likelihood_acts` ``"true"``, a kgCVAE
        decodes with the true act of the response (``extras["labels"]``), otherwise with the predicted
        one. ``inputs`` overrides the decoder inputs (word dropout) while the targets stay the true tokens."""
        c = response.extras.get("context_vector")
        if c is None:
            raise TextVAEError("KgCVAE.token_nll: the response batch carries no context vector (see with_context)")
        true_act = self.use_acts and (self.training or self.likelihood_act == "true")
        code = self.latent_code(c, z, response.extras.get("labels") if true_act else None)
        hidden, _ = self.decoder(response.inputs if inputs is None else inputs, self.step_code(code),
                                 self.initial_state(c, code))
        return self.sentence_nll(hidden, response.targets)

    def log_likelihood(self, batch: DialogueBatch, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(x | z_s, c) for z [S, B, D] -> [S, B] (predicted soft act); the batch is repeated S
        times, sample-major, so all (response, sample) pairs go through the decoder in one pass."""
        s, b, d = z.shape
        c = self.encode_context(batch) if c is None else c
        r = batch.response
        extras = {"context_vector": c.repeat(s, 1)}
        if self.use_acts and self.likelihood_act == "true":
            extras["labels"] = self._true_acts(batch).repeat(s)
        repeated = Batch(tokens=r.tokens.repeat(s, 1), lengths=r.lengths.repeat(s), extras=extras)
        return -self.token_nll(repeated, z.reshape(s * b, d)).view(s, b)

    def given(self, batch: DialogueBatch) -> tuple["GivenContext", Batch]:
        """The model protocol of ``docs/design.md`` for the pairs of ``batch`` given their contexts,
        and the responses it scores: how the registered metrics see a conditional model."""
        return GivenContext(self, batch), batch.response

    def decode_step(self, tokens: torch.Tensor, c: torch.Tensor, z: torch.Tensor, state: Any = None
                    ) -> tuple[torch.Tensor, Any]:
        """One step for rows with context vectors c [B, H_c] and latents z [B, D]; the state carries
        the decoder's conditioning, computed at the first step."""
        if state is None:
            code = self.latent_code(c, z)
            rnn_state = self.initial_state(c, code)
        else:
            rnn_state, code = state
        hidden, rnn_state = self.decoder(tokens, self.step_code(code), rnn_state)
        return self.projection(hidden[:, -1]), (rnn_state, code)

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        rnn_state, code = state
        return self.decoder.reorder_state(rnn_state, index), code.index_select(0, index)

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: DialogueBatch, step: int = 0) -> VAEOutput:
        """rec [B], KL(q(z|x,c) || p(z|c)) [B, D], n_tokens [B] and the objective's loss."""
        c = self.encode_context(batch)
        response = self.with_context(batch.response, c)
        inputs = self.objective.corrupt_inputs(response.inputs) if self.training else response.inputs
        q, h = self.posterior(batch, c)
        with torch.autocast(h.device.type, enabled=False):  # fp32, as in posterior
            z = q.rsample(1)[0]
            kl, _ = kl_terms(q, self.prior(c), z)
        extras: dict[str, torch.Tensor] = {}
        if self.use_acts:
            extras["act"] = F.cross_entropy(self.act_logits(c, z), self._true_acts(batch), reduction="none")
        extras.update(self.objective.extra_losses(self, response, z, h, step))
        rec = self.token_nll(response, self.objective.decoder_latent(z, h, step) if self.training else z, inputs)
        loss, terms = self.objective(rec, kl, step, extras)
        return VAEOutput(rec=rec, kl=kl, n_tokens=response.n_tokens, loss=loss, terms=terms, z=z)

    # ---- persistence (files: PretrainedMixin) ----
    def config_dict(self) -> dict[str, Any]:
        return {"model_type": "kgcvae", "model": dataclasses.asdict(self.cfg), "vocab_size": self.vocab_size,
                "objective": dataclasses.asdict(self.objective_cfg), "act_names": self.act_names,
                "text": self.text}

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> "KgCVAE":
        if cfg.get("model_type") != "kgcvae":
            raise TextVAEError("not a saved dialogue CVAE (its config.json has no model_type: kgcvae): a sentence "
                               "VAE or language model, which `textvae sample`, `reconstruct` and `evaluate` read")
        model = {"decoder_z": "every_input", **cfg["model"]}  # saved before decoder_z existed: the former wiring
        return cls(CVAEConfig(**model), int(cfg["vocab_size"]), ObjectiveConfig(**cfg.get("objective", {})),
                   cfg.get("act_names"), cfg.get("text"))


class GivenContext:
    """The model protocol of ``docs/design.md`` for a batch of pairs with fixed contexts c: ``encode``
    gives q(z|x,c), ``prior`` is p(z|c) (a Gaussian per pair, so ``prior.log_prob(z [S, B, D]) ->
    [S, B]``) and ``log_likelihood`` is log p(x | z, c), so every registered metric applies unchanged
    (Zhao et al. 2017's likelihood of the response given its context)."""

    def __init__(self, model: KgCVAE, batch: DialogueBatch):
        self.model, self.batch = model, batch
        self.latent_dim = model.latent_dim
        self.c = model.encode_context(batch)
        self.prior = model.prior(self.c)

    def encode(self, response: Batch) -> DiagGaussian:
        """q(z|x,c) of the batch's responses (``response`` is that batch's, as :meth:`KgCVAE.given` returns it)."""
        return self.model.posterior(self.batch, self.c)[0]

    def log_likelihood(self, response: Batch, z: torch.Tensor) -> torch.Tensor:
        return self.model.log_likelihood(self.batch, z, self.c)
