"""Dialogue CVAE: pairing without leaks, the Gaussian KL, a prior that conditions on the context,
remedies inside the CVAE, likelihood and BLEU metrics against brute force, training end to end."""
import dataclasses
import json
import math
import re
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch

import textvae.remedies  # noqa: F401  (registration)
from textvae.cli import main
from textvae.config import ObjectiveConfig, TrainConfig
from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.data.tokenization import create_tokenizer
from textvae.dialogue.config import (CVAEConfig, CVAERunConfig, DialogueDataConfig, DialogueEvalConfig,
                                     DialogueOptimConfig)
from textvae.dialogue.data import (collate_dialogues, encode_split, load_dialogue_data, normalize_utterance,
                                   read_dialogue_lines, read_jsonl_pairs)
from textvae.dialogue.generation import ContextDecoder, generate_responses
from textvae.dialogue.metrics import respond_to_split
from textvae.dialogue.model import KgCVAE
from textvae.dialogue.respond import respond
from textvae.tasks import run_training as train_cvae
from textvae.tasks.runconfig import parse_run_config, recipe_task
from textvae.errors import TextVAEError
from textvae.metrics._common import eval_mode, seeded
from textvae.metrics.likelihood import ElboAccumulator, elbo_batch, iw_log_marginal
from textvae.metrics import GeneratedTexts, bleu_precision_recall, score_texts
from textvae.models.distributions import DiagGaussian, StandardNormal
from textvae.models.textvae import TextVAE
from textvae.pretrained import PretrainedCVAE, load
from textvae.rng import numbered_streams
from textvae.reduction import CorpusAccumulator
from textvae.tasks import create_task
from textvae.training.logger import read_jsonl
from textvae.training.train import EVAL_SEED
from tests.test_train import state_of

V = 40
RECIPES = sorted((Path(__file__).parent.parent / "textvae" / "recipes" / "dailydialog").glob("*.yaml"))


def tiny(remedies=(), use_acts=False, latent=3, decoder="gru", **kw) -> KgCVAE:
    cfg = CVAEConfig(emb_dim=8, utterance_hidden=6, context_hidden=10, latent_dim=latent, prior_hidden=12,
                     decoder_type=decoder, decoder_hidden=9, use_acts=use_acts, act_emb_dim=4, act_hidden=7, **kw)
    return KgCVAE(cfg, V, ObjectiveConfig(remedies=list(remedies)), ["a", "b", "c"] if use_acts else [],
                  {"context_turns": 3, "max_turn_words": 10})


def sentence(g: torch.Generator, max_words: int = 6) -> list[int]:
    n = int(torch.randint(0, max_words + 1, (1,), generator=g))
    return [BOS_ID] + torch.randint(4, V, (n,), generator=g).tolist() + [EOS_ID]


def random_batch(n: int = 6, seed: int = 0, acts: bool = False):
    g = torch.Generator().manual_seed(seed)
    contexts = [[sentence(g) for _ in range(int(torch.randint(1, 4, (1,), generator=g)))] for _ in range(n)]
    responses = [sentence(g) for _ in range(n)]
    labels = torch.randint(0, 3, (n,), generator=g).tolist() if acts else None
    return collate_dialogues(contexts, responses, labels, list(range(n)))


# ---- data ----------------------------------------------------------------------------------------
def test_normalize_utterance():
    assert normalize_utterance("I’m fine.But “really” — Let ' s go…") == "i'm fine . but \" really \" - let's go ..."
    assert normalize_utterance("It costs 3.5 dollars , at 10:30。") == "it costs 3.5 dollars , at 10:30 ."
    text = "Don't do push-ups , OK ? ‘Sure’ !"
    assert normalize_utterance(normalize_utterance(text)) == normalize_utterance(text)


DIALOGUES = [
    "Alpha one ? __eou__ Alpha two . __eou__ Alpha three ! __eou__ Alpha four . __eou__",
    "Beta one __eou__ Beta two __eou__",
    "Gamma one __eou__ Gamma two __eou__ Gamma three __eou__",  # 2 acts for 3 turns: malformed
    "Delta one __eou__",  # a single turn gives no pair
]
ACTS = ["2 1 3 4", "1 2", "1 2", "1"]


def test_dailydialog_pairs_have_no_leak():
    text = read_dialogue_lines(DIALOGUES, ACTS, "fixture", context_turns=2, max_turn_words=40)
    expected = []  # brute force: response i of each well-formed dialogue with the 2 turns before it
    for line, acts in zip(DIALOGUES[:2], ACTS[:2]):
        turns = [normalize_utterance(t) for t in line.split("__eou__") if t.strip()]
        labels = [int(a) - 1 for a in acts.split()]
        expected += [(turns[max(0, i - 2):i], turns[i], labels[i]) for i in range(1, len(turns))]
    got = [(text.turns[a:b], text.turns[r], int(y)) for (a, b), r, y in zip(text.spans, text.responses, text.acts)]
    assert got == expected
    assert text.stats.malformed == 1 and text.stats.pairs == 4
    for (a, b), r in zip(text.spans, text.responses):
        assert a < b == r, "the context must be the turns strictly before the response"
        assert text.turns[r] not in text.turns[a:b]

    tokenizer = create_tokenizer("word", text.turns)
    split = encode_split("train", text, tokenizer)
    batch = split.batch([0, 2, 3])
    assert batch.n_turns.tolist() == [1, 2, 1]
    for row, pair in enumerate([0, 2, 3]):
        n = int(batch.n_turns[row])
        turns = [tokenizer.decode(batch.context[row, k].tolist()) for k in range(n)]
        assert turns == split.context_texts(pair)
        assert (batch.turn_lengths[row, n:] == 0).all() and (batch.context[row, n:] == PAD_ID).all()
        assert tokenizer.decode(batch.response.tokens[row].tolist()) == split.response_text(pair)
    assert batch.acts.tolist() == [0, 3, 1]  # acts of "alpha two", "alpha four", "beta two", minus 1
    assert batch.n_tokens.tolist() == [len(split.response_text(p).split()) + 1 for p in (0, 2, 3)]


def test_jsonl_pairs(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [{"context": ["Hi there!", "Hello."], "response": "How are you?", "act": 1},
             {"context": [], "response": "First words.", "act": 0}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    text = read_jsonl_pairs(path, context_turns=1, max_turn_words=2)
    pairs = [(text.turns[a:b], text.turns[r]) for (a, b), r in zip(text.spans, text.responses)]
    assert pairs == [(["hello ."], "how are"), ([""], "first words")]
    assert text.acts.tolist() == [1, 0] and text.stats.truncated_turns == 2
    path.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(TextVAEError, match="line 2"):
        read_jsonl_pairs(path, 3, 40)
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"context": ["x"], "response": "y"}) + "\n")
    with pytest.raises(TextVAEError, match="every line or on none"):
        read_jsonl_pairs(path, 3, 40)


# ---- KL and the prior network --------------------------------------------------------------------
def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mu_q, mu_p = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    lv_q, lv_p = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    q, p = DiagGaussian(mu_q, lv_q), DiagGaussian(mu_p, lv_p)
    z = q.rsample(200_000, generator=g)  # [S, B, D]
    log_ratio = q.log_prob(z) - p.log_prob(z)  # [S, B]
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    kl = q.kl(p)
    assert kl.shape == (4, 3)
    assert (kl.sum(-1) - mc).abs().max() < 5 * se.max()
    torch.testing.assert_close(q.kl(DiagGaussian(mu_q, lv_q)), torch.zeros(4, 3, dtype=torch.float64))
    standard = DiagGaussian(mu_q, lv_q).kl(StandardNormal(3))
    torch.testing.assert_close(q.kl(StandardNormal(3)), standard)
    torch.testing.assert_close(q.kl(DiagGaussian(torch.zeros_like(mu_q), torch.zeros_like(lv_q))), standard)


def test_prior_conditions_on_context_and_not_on_response():
    model = tiny().train()
    batch = random_batch(6, seed=0)
    other_context = random_batch(6, seed=1)
    swapped = collate_dialogues([[t[t > PAD_ID].tolist() for t in row[:n]] for row, n in
                                 zip(other_context.context, other_context.n_turns)],
                                [r[r > PAD_ID].tolist() for r in batch.response.tokens])
    other_response = random_batch(6, seed=2)
    same_context = collate_dialogues([[t[t > PAD_ID].tolist() for t in row[:n]] for row, n in
                                      zip(batch.context, batch.n_turns)],
                                     [r[r > PAD_ID].tolist() for r in other_response.response.tokens])
    p = model.prior(model.encode_context(batch))
    assert not torch.allclose(p.mu, model.prior(model.encode_context(swapped)).mu)
    torch.testing.assert_close(p.mu, model.prior(model.encode_context(same_context)).mu)  # no response leak
    c = model.encode_context(batch)
    assert not torch.allclose(model.posterior(batch, c)[0].mu, model.posterior(same_context, c)[0].mu)

    out = model(batch)
    out.kl.sum().backward()  # the KL alone must train the context encoder through p(z|c)
    for name in ("context_encoder.rnn.weight_ih_l0", "utterance_encoder.rnn.weight_ih_l0", "prior_net.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_context_encoding_ignores_padding_and_batch_mates():
    model = tiny().eval()
    batch = random_batch(5, seed=3)
    with torch.no_grad():
        together = model.encode_context(batch)
        for b in range(len(batch)):
            alone = model.encode_context(batch.select(torch.tensor([b])))
            torch.testing.assert_close(alone[0], together[b], rtol=0, atol=1e-6)


@pytest.mark.parametrize("decoder", ["skip_lstm", "cnn", "transformer"])
def test_the_cvae_takes_recurrent_decoders_only(decoder):
    """Its decoder starts from [c; z] as a recurrent state, layer by layer: another decoder is a one-line
    error, not an AttributeError."""
    with pytest.raises(TextVAEError, match=f"decoder_type '{decoder}'.*valid: gru, lstm"):
        tiny(decoder=decoder)


@pytest.mark.parametrize("decoder,use_acts", [("gru", False), ("lstm", True)])
def test_z_reaches_the_decoder_through_its_initial_state_only_unless_asked(decoder, use_acts, monkeypatch):
    """Zhao et al.'s code: [c; z; e_y] sets the decoder's state linearly, e_y alone joins every input;
    ``decoder_z: every_input`` adds z to every input. With the initial state (and the predicted act) held fixed,
    z changes nothing in the first case and changes the likelihood in the second."""
    batch = random_batch(4, seed=5, acts=use_acts)
    for every, inputs in ((False, 8 + 4 * use_acts), (True, 8 + 3 + 4 * use_acts)):
        torch.manual_seed(0)
        model = tiny(use_acts=use_acts, decoder=decoder, decoder_z="every_input" if every else "initial_state").eval()
        assert model.decoder.rnn.input_size == inputs
        with torch.no_grad():
            c = model.encode_context(batch)
            code = model.latent_code(c, torch.randn(4, 3))
            pre = model.init_state(torch.cat([c, code], -1)).view(4, 1, 9).transpose(0, 1)
            state = model.initial_state(c, code)
            h0 = torch.tanh(pre) if every else pre  # linear (LSTMs c0 = h0); the former wiring: tanh
            torch.testing.assert_close(state, (h0, pre) if decoder == "lstm" else h0)
            fixed = model.initial_state(c, code)
            monkeypatch.setattr(model, "initial_state", lambda *_: fixed)
            logits = torch.randn(4, 3)  # the predicted act reads z too: held fixed as well
            monkeypatch.setattr(model, "act_logits", lambda *_: logits)
            a, b = (model.log_likelihood(batch, torch.randn(1, 4, 3), c) for _ in range(2))
        assert torch.equal(a, b) != every
        monkeypatch.undo()


def test_the_cvae_refuses_a_remedy_bounded_against_a_fixed_prior_and_a_misspelt_prior_remedy():
    """p(z|c) is learned: delta-VAE's committed rate does not hold against it. A prior remedy that is
    not a posterior transform would leave p(z|c) as it is without a word."""
    from textvae.training.train import check_config

    cfg = CVAERunConfig(objective=ObjectiveConfig(remedies=[{"name": "delta_vae"}]))
    with pytest.raises(TextVAEError,
                       match=r"remedy 'delta_vae' bounds the KL .* the dialogue CVAE's prior is its learned p\(z\|c\)"):
        check_config(cfg)
    cfg = CVAERunConfig(model=CVAEConfig(prior_remedies=["bnvae"]))
    with pytest.raises(TextVAEError, match=r"model.prior_remedies \['bnvae'\]: .* valid: bn_vae"):
        create_task(cfg).check()


# ---- decoding and likelihood ---------------------------------------------------------------------
@pytest.mark.parametrize("decoder,use_acts", [("gru", False), ("lstm", True)])
def test_decode_steps_match_teacher_forced_likelihood(decoder, use_acts):
    model = tiny(use_acts=use_acts, decoder=decoder).eval()
    batch = random_batch(4, seed=4, acts=use_acts)
    with torch.no_grad():
        c = model.encode_context(batch)
        z = torch.randn(len(batch), 3)
        full = model.log_likelihood(batch, z[None], c)[0]
        view, state, total = ContextDecoder(model, c), None, torch.zeros(len(batch))
        tokens = batch.response.tokens
        for t in range(tokens.shape[1] - 1):
            logits, state = view.decode_step(tokens[:, t:t + 1], z, state)
            lp = logits.log_softmax(-1).gather(1, tokens[:, t + 1:t + 2])[:, 0]
            total += torch.where(tokens[:, t + 1] != PAD_ID, lp, torch.zeros_like(lp))
    torch.testing.assert_close(total, full, rtol=0, atol=1e-5)


def test_iw_nll_matches_quadrature():
    """With one latent dimension, log p(x|c) = log ∫ p(x|z,c) p(z|c) dz by the trapezoid rule on a
    fine grid; the importance-sampling estimate with q(z|x,c) as proposal must agree."""
    torch.manual_seed(5)
    model = tiny(latent=1).double().eval()
    batch = random_batch(3, seed=5)
    with torch.no_grad():
        model.prior_net[2].bias.copy_(torch.tensor([1.5, -1.0]))  # p(z|c) far from N(0, 1)
        model.init_state.weight.mul_(20)  # and a decoder that depends on z
        view, response = model.given(batch)
        iw = iw_log_marginal(view, response, view.encode(response), n_samples=50_000)
        mu, sd = view.prior.mu[:, 0], view.prior.std[:, 0]
        u = torch.linspace(-10, 10, 2001, dtype=torch.float64)
        z = (mu + u[:, None] * sd)[:, :, None]  # [S, B, 1], per-pair grid over the prior's mass
        log_f = view.log_likelihood(response, z) + view.prior.log_prob(z)  # [S, B]
        step = (u[1] - u[0]) * sd  # [B]
        weights = torch.full_like(u, 1.0)
        weights[[0, -1]] = 0.5
        exact = torch.logsumexp(log_f + weights.log()[:, None], 0) + step.log()
    torch.testing.assert_close(iw, exact, rtol=0, atol=3e-2)  # IW noise at K = 50k: ~0.01


def test_generate_responses():
    model = tiny(use_acts=True)
    batch = random_batch(3, seed=6, acts=True)
    out = generate_responses(model, batch, n=4, max_len=7, generator=torch.Generator().manual_seed(0))
    assert [len(r) for r in out] == [4, 4, 4]
    for ids in (i for rs in out for i in rs):
        assert len(ids) <= 7 and not set(ids) & {PAD_ID, BOS_ID, EOS_ID, UNK_ID}
    again = generate_responses(model, batch, n=4, max_len=7, generator=torch.Generator().manual_seed(0))
    assert out == again
    beams = generate_responses(model, batch, n=2, method="beam", max_len=7, beam_size=3)
    assert [len(r) for r in beams] == [2, 2, 2]
    assert model.training, "generation must restore the training mode"


# ---- remedies inside the CVAE --------------------------------------------------------------------
def test_remedies_run_inside_cvae():
    remedies = [{"name": "bow", "mlp_dim": 5}, {"name": "bn_vae", "gamma": 0.6, "eps": 1e-10},
                {"name": "word_dropout", "p": 0.3}, {"name": "free_bits_li2019", "target_kl": 1.0}]
    model = tiny(remedies, use_acts=True).train()
    batch = random_batch(16, seed=7, acts=True)
    out = model(batch, step=3)
    assert torch.isfinite(out.loss) and set(out.terms) >= {"bow", "act", "kl_term"}
    # loss = mean_b [rec + K_b + bow_b + act_b]; terms hold the batch means of the last three
    expected = out.rec.mean() + out.terms["kl_term"] + out.terms["bow"] + out.terms["act"]
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    bn_post, bn_prior = model.objective.remedies[1], model.objective.prior_transforms[0]
    assert bn_post is not bn_prior
    for module in (model.objective.remedies[0], bn_post, bn_prior):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # BN-CVAE: in training, both the posterior and the prior means have batch mean = shift (0 at
    # init) and batch std = gamma in every dimension.
    c = model.encode_context(batch)
    for mu in (model.posterior(batch, c)[0].mu, model.prior(c).mu):
        torch.testing.assert_close(mu.mean(0), torch.zeros(3), rtol=0, atol=1e-5)
        torch.testing.assert_close(mu.std(0, unbiased=False), torch.full((3,), 0.6), rtol=0, atol=1e-3)
    assert not torch.equal(bn_post.running_mean, bn_prior.running_mean)


def test_collaborative_training_decodes_through_the_cvae():
    """The auxiliary autoencoder (Shen et al. 2018) reconstructs the response from its code e(h)
    with the CVAE's own decoder, given the context: at r = 0 the reconstruction decodes the code, so
    it trains the decoder and the code."""
    model = tiny([{"name": "aux_autoencoder", "mix_steps": 100}], use_acts=True).train()
    out = model(random_batch(8, seed=10, acts=True))
    assert torch.isfinite(out.terms["aux_autoencoder"])
    out.loss.backward()
    remedy = model.objective.remedies[0]
    assert remedy.code.weight.grad.abs().sum() > 0 and model.init_state.weight.grad.abs().sum() > 0


def test_save_and_load_roundtrip(tmp_path):
    model = tiny([{"name": "bn_vae"}], use_acts=True)
    model(random_batch(8, seed=8, acts=True)).loss.backward()  # moves the BN running statistics
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = KgCVAE.from_pretrained(tmp_path).eval()
    assert loaded.act_names == ["a", "b", "c"] and loaded.text == model.text
    assert loaded.decoder.embedding is loaded.utterance_encoder.embedding
    batch = random_batch(4, seed=9, acts=True)
    z = torch.randn(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_likelihood(batch, z), model.log_likelihood(batch, z))
        torch.testing.assert_close(loaded.prior(loaded.encode_context(batch)).mu,
                                   model.prior(model.encode_context(batch)).mu)


def test_the_latent_side_stays_fp32_under_bf16_autocast():
    """As the sentence VAE's: q(z|x,c) and p(z|c) are computed in fp32 under autocast (in bf16, mu and
    log sigma² keep 3 significant digits); p(z|c), whose input c is given, to the same numbers as without
    it (q's input passes the response encoder, which autocast runs in bf16)."""
    model = tiny([{"name": "bn_vae"}], use_acts=True).eval()
    batch = random_batch(8, seed=1, acts=True)
    with torch.no_grad():
        c = model.encode_context(batch)
        plain = model.posterior(batch, c)[0], model.prior(c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = model.posterior(batch, c)[0], model.prior(c)
    for a, b in zip(plain, cast):
        assert b.mu.dtype == b.logvar.dtype == torch.float32
    assert torch.equal(plain[1].mu, cast[1].mu) and torch.equal(plain[1].logvar, cast[1].logvar)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out.z.dtype == out.kl.dtype == torch.float32


def test_a_model_saved_with_the_prior_transforms_outside_the_objective_loads(tmp_path):
    """BN-CVAE's prior instance of bn_vae was the model's (``prior_transforms.*``) until the objective
    owned it (``objective.prior_transforms.*``): such a saved model, or checkpoint, still loads."""
    from safetensors.torch import load_file, save_file

    model = tiny([{"name": "bn_vae"}], use_acts=True)
    model(random_batch(8, seed=8, acts=True))  # moves the BN running statistics
    model.eval().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    moved = {k: k.replace("objective.prior_transforms.", "prior_transforms.") for k in state}
    assert sum(k != v for k, v in moved.items()) >= 3  # BN's shift and its running statistics
    save_file({moved[k]: v for k, v in state.items()}, tmp_path / "model.safetensors")
    loaded = KgCVAE.from_pretrained(tmp_path).eval()
    assert loaded.state_now({v: None for v in moved.values()}).keys() == state.keys()  # as a checkpoint restores them
    batch = random_batch(4, seed=9, acts=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.prior(loaded.encode_context(batch)).mu,
                                   model.prior(model.encode_context(batch)).mu, rtol=0, atol=0)
    for name, tensor in model.objective.prior_transforms.state_dict().items():
        assert torch.equal(loaded.objective.prior_transforms.state_dict()[name], tensor)


def test_a_model_saved_before_decoder_z_loads_with_the_wiring_it_was_trained_with(tmp_path):
    """Models saved before model.decoder_z existed fed z to every decoder input: their config.json,
    without the key, is read as decoder_z: every_input (the weights' shapes say so too)."""
    model = tiny(use_acts=True, decoder_z="every_input").eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["model"]["decoder_z"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = KgCVAE.from_pretrained(tmp_path).eval()
    assert loaded.cfg.decoder_z == "every_input"
    batch, z = random_batch(4, seed=9, acts=True), torch.randn(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_likelihood(batch, z), model.log_likelihood(batch, z))
    with pytest.raises(TextVAEError, match="model.decoder_z 'both'; valid: initial_state, every_input"):
        tiny(decoder_z="both")


# ---- generation metrics ---------------------------------------------------------------------------
def test_bleu_precision_recall_against_brute_force():
    from sacrebleu.metrics import BLEU

    def bleu(h, r):
        return BLEU(tokenize="none", smooth_method="exp", effective_order=True).sentence_score(h, [r]).score / 100

    refs = ["i am fine , thanks .", "not bad at all ."]
    hyps = ["i am fine .", "not bad .", "what ?"]
    matrix = [[bleu(h, r) for r in refs] for h in hyps]
    precision, recall = bleu_precision_recall(hyps, refs, order=4)
    assert precision == pytest.approx(sum(max(row) for row in matrix) / 3)
    assert recall == pytest.approx(sum(max(matrix[i][j] for i in range(3)) for j in range(2)) / 2)
    assert bleu_precision_recall([refs[0], "what ?"], [refs[0]]) == pytest.approx(
        ((1 + bleu("what ?", refs[0])) / 2, 1.0))
    assert bleu_precision_recall([""], [refs[0]]) == (0.0, 0.0)


def test_the_text_metrics_of_responses():
    hyps = [["a b a", "a b"], ["c d", "c d"]]
    texts = GeneratedTexts(responses=[(["a b"], hyps[0]), (["c d"], hyps[1])], samples=[h for hs in hyps for h in hs])
    res = score_texts(texts)
    assert res["distinct_1"] == pytest.approx(4 / 9) and res["distinct_2"] == pytest.approx(3 / 5)  # inter-context
    assert res["intra_dist1"] == pytest.approx((2 / 5 + 2 / 4) / 2)
    assert res["bleu1_recall"] == pytest.approx(1.0) and res["n_contexts"] == 2 and res["gen_sentences"] == 4
    assert res["sample_words"] == pytest.approx(9 / 4) and "recon_bleu" not in res  # no reconstructions


# ---- training and responding ---------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_parse(recipe):
    cfg, resume = parse_run_config([str(recipe), "--train.epochs", "1"])
    assert isinstance(cfg, CVAERunConfig) and cfg.train.epochs == 1 and not resume
    assert isinstance(parse_run_config(["--resume", "--config", str(recipe)])[0], CVAERunConfig)
    assert recipe_task(str(recipe)) == "dialogue"
    assert recipe_task(str(recipe.parent.parent / "ptb" / "vae.yaml")) == "sentences"
    with pytest.raises(TextVAEError, match=r"--task sentences: the task is the recipe.s \(its task key\), and this "
                                           r"recipe.s is dialogue"):
        parse_run_config([str(recipe), "--task", "sentences"])
    assert isinstance(parse_run_config([f"--config={recipe}"])[0], CVAERunConfig)  # not the synthetic default


def test_a_sentence_recipe_may_name_its_task(tmp_path):
    """``task: sentences`` in a recipe is the default said out loud; ``--config=FILE`` is ``--config FILE``
    (the embedded synthetic recipe is not loaded under it)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: sentences\ndata: {name: ptb}\nmodel: {latent_dim: 5}\n")
    for argv in ([str(recipe)], [f"--config={recipe}"], ["--config", str(recipe)]):
        cfg, _ = parse_run_config(argv)
        assert cfg.data.name == "ptb" and cfg.model.latent_dim == 5 and cfg.optim.name == "sgd", argv
    with pytest.raises(TextVAEError, match="task"):
        parse_run_config([str(recipe), "--task", "dialogue"])


def write_dialogues(folder: Path) -> None:
    """``train/valid/test.jsonl`` of random three-turn dialogues (40 / 6 / 6) with a dialogue act."""
    g = torch.Generator().manual_seed(0)
    words = "hello hi how are you fine thanks good bad what why yes no okay sure".split()
    for split, n in (("train", 40), ("valid", 6), ("test", 6)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                turns = [" ".join(words[i] for i in torch.randint(0, len(words), (3,), generator=g)) for _ in range(3)]
                f.write(json.dumps({"context": turns[:2], "response": turns[2] + " ?", "act": int(turns[2][0] < "m")}) + "\n")


def former_likelihood_figures(model, split, batch_size, iw_samples):
    """The CVAE's likelihood figures as ``likelihood_metrics`` (``dialogue/metrics.py``, commit 077a130)
    computed them before they went through the metric registry: per pair one z ~ q(z|x,c), the
    closed-form KL against p(z|c), IW-NLL with q(z|x,c) as proposal; one fork of the RNG seeded from
    a generator seeded with ``EVAL_SEED``."""
    elbo, iw = ElboAccumulator(), CorpusAccumulator()
    with eval_mode(model), seeded(torch.Generator().manual_seed(EVAL_SEED)):
        for batch in split.batches(batch_size, shuffle=False):
            c = model.encode_context(batch)
            view = SimpleNamespace(prior=model.prior(c), latent_dim=model.latent_dim,
                                   log_likelihood=lambda response, z, batch=batch, c=c: model.log_likelihood(batch, z, c))
            q = model.posterior(batch, c)[0]
            elbo.add(batch.n_tokens, *elbo_batch(view, batch.response, q, q.rsample(1)))
            if iw_samples > 0:
                iw.add(batch.n_tokens, nll=-iw_log_marginal(view, batch.response, q, iw_samples))
    figures = {**elbo.result().summary(), "n_pairs": float(elbo.corpus.n_sentences)}
    if iw_samples > 0:
        figures.update(iw_nll=iw.mean("nll"), iw_ppl=iw.ppl("nll"), iw_samples=float(iw_samples))
    return figures


def test_the_cvae_figures_through_the_metric_registry_are_those_computed_before(tmp_path):
    """Validation and test figures of the dialogue task come from the registered metrics now; the
    likelihood figures the CVAE reported before keep their values exactly."""
    write_dialogues(tmp_path)
    cfg = CVAERunConfig(data=DialogueDataConfig(name=str(tmp_path), context_turns=2, eval_batch_size=4),
                        model=tiny(use_acts=True).cfg, train=TrainConfig(iw_samples_final=3),
                        eval=DialogueEvalConfig(n_responses=1, max_contexts=2, max_len=3))
    task = create_task(cfg)
    data = task.load_data()
    torch.manual_seed(3)
    model = task.build_model(data)
    model.save_pretrained(tmp_path / "best")
    cpu = torch.device("cpu")
    for figures, iw_samples in ((task.validate(model, data.splits["valid"], cpu), 0),
                                (task.test_report(data, tmp_path / "best", cpu), 3)):
        split = data.splits["valid" if iw_samples == 0 else "test"]
        former = former_likelihood_figures(model, split, 4, iw_samples)
        assert {key: figures[key] for key in former} == former


def test_likelihoods_condition_on_the_true_act_when_asked(tmp_path):
    """eval.likelihood_act: true gives Zhao et al.'s reported ELBO, log p(x | z, c, y) with the labelled
    act; the default conditions on the act predicted from (c, z). The test report says which."""
    model = tiny(use_acts=True).eval()
    batch, z = random_batch(4, seed=11, acts=True), torch.randn(2, 4, 3)
    with torch.no_grad():
        c = model.encode_context(batch)
        predicted = model.log_likelihood(batch, z, c)
        with model.likelihood_acts("true"):
            true = model.log_likelihood(batch, z, c)
        assert model.likelihood_act == "predicted"  # restored after the block
        for s in range(2):  # by hand: the decoder conditioned on [z; e_y] of the labelled act
            code = torch.cat([z[s], model.act_embedding(batch.acts)], -1)
            hidden, _ = model.decoder(batch.response.inputs, model.step_code(code), model.initial_state(c, code))
            torch.testing.assert_close(true[s], -model.sentence_nll(hidden, batch.response.targets))
    assert not torch.allclose(true, predicted)
    with pytest.raises(TextVAEError, match="eval.likelihood_act 'both'; valid: predicted, true"):
        with model.likelihood_acts("both"):
            pass

    write_dialogues(tmp_path)
    reports = {}
    for act in ("predicted", "true"):
        cfg = CVAERunConfig(data=DialogueDataConfig(name=str(tmp_path), context_turns=2, eval_batch_size=4),
                            model=tiny(use_acts=True).cfg, train=TrainConfig(iw_samples_final=2),
                            eval=DialogueEvalConfig(n_responses=1, max_contexts=2, max_len=3, likelihood_act=act))
        task = create_task(cfg)
        data = task.load_data()
        torch.manual_seed(3)
        task.build_model(data).save_pretrained(tmp_path / "best")
        reports[act] = task.test_report(data, tmp_path / "best", torch.device("cpu"))
    assert reports["true"]["likelihood_act"] == "true" and reports["predicted"]["likelihood_act"] == "predicted"
    assert reports["true"]["neg_elbo"] != reports["predicted"]["neg_elbo"]
    assert reports["true"]["kl"] == reports["predicted"]["kl"]  # q(z|x,c,y) and p(z|c) are the same


def test_a_dialogue_run_checks_its_report_s_packages_first(tmp_path, monkeypatch):
    """The test report scores responses with BLEU: without sacrebleu the run fails before it starts."""
    from tests.test_bad_input import without

    write_dialogues(tmp_path)
    without(monkeypatch, "sacrebleu")
    cfg = CVAERunConfig(name="run", out_dir=str(tmp_path / "runs"),
                        data=DialogueDataConfig(name=str(tmp_path), context_turns=2, batch_size=8, eval_batch_size=4),
                        model=tiny().cfg, train=TrainConfig(epochs=1, progress=False, tensorboard=False))
    with pytest.raises(TextVAEError, match=r"^the text metrics need sacrebleu: pip install 'textvae\[eval\]' \(the "
                                           r"test report scores the responses with them\)$"):
        train_cvae(cfg)
    assert not (tmp_path / "runs").exists()


def test_train_cvae_and_respond(tmp_path, capsys, caplog):
    write_dialogues(tmp_path)
    cfg = CVAERunConfig(
        name="run", out_dir=str(tmp_path / "runs"),
        data=DialogueDataConfig(name=str(tmp_path), context_turns=2, batch_size=8, eval_batch_size=4),
        model=tiny(use_acts=True).cfg,
        objective=ObjectiveConfig(remedies=[{"name": "bow", "mlp_dim": 5}, {"name": "bn_vae"}]),
        train=TrainConfig(epochs=1, progress=False, tensorboard=False, log_every=1, metrics_every=0,
                          iw_samples_final=3),
        eval=DialogueEvalConfig(n_responses=2, max_contexts=3, max_len=5))
    train_cvae(cfg)
    with pytest.raises(TextVAEError, match="already holds a run"):
        train_cvae(cfg)
    cfg.train.epochs = 2
    report = train_cvae(cfg, resume=True)  # continues from the end of epoch 1
    for key in ("neg_elbo", "kl", "iw_nll", "bleu2_precision", "bleu2_recall", "distinct_2", "self_bleu"):
        assert math.isfinite(report[key]), key
    assert report["n_pairs"] == 6 and report["n_contexts"] == 3
    run = tmp_path / "runs" / "run"
    data = load_dialogue_data(cfg.data)
    test = data.splits["test"]  # the 3 contexts scored are spread over its 6 pairs
    texts = respond_to_split(KgCVAE.from_pretrained(run / "model", torch.device("cpu")),
                             data.tokenizer, test, 2, max_contexts=3, max_len=5)
    assert [refs for refs, _ in texts.responses] == [[test.response_text(p)] for p in (0, 2, 4)]
    assert texts.samples == [h for _, hyps in texts.responses for h in hyps] and len(texts.samples) == 6
    assert parse_run_config([str(run / "config.yaml"), "--resume"]) == (cfg, True)  # textvae train <run>/config.yaml
    # textvae evaluate of the run: its task's own report, the same figures as the run's test record
    main(["evaluate", str(run), "--iw-samples", "3", "--json", str(tmp_path / "eval.json")])
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for key in ("neg_elbo", "kl", "iw_nll", "mi_dataset", "bleu2_precision", "distinct_2", "intra_dist2", "n_pairs"):
        assert evaluated[key] == pytest.approx(report[key], rel=1e-6), key
    assert evaluated["task"] == "dialogue" and not list(tmp_path.glob("*.iw_progress.safetensors"))
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--max-sentences", "3"])
    assert "--max-sentences: an option of a sentence model's evaluation" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one the run's eval section sets (data.eval_batch_size): refused, not ignored
        main(["evaluate", str(run), "--batch-size", "8"])
    assert "--batch-size: an option of a sentence model's evaluation" in capsys.readouterr().err
    # the report's own settings are the run's eval section, changed with --eval.KEY VALUE (before the run too)
    main(["evaluate", "--eval.max_pairs", "2", str(run), "--split", "valid", "--iw-samples", "0", "--eval.max_contexts=1"])
    two = json.loads((run / "eval_valid_max_pairs-2_max_contexts-1.json").read_text())  # not the whole split's file
    assert (two["n_pairs"], two["n_contexts"], two["split"]) == (2, 1, "valid")
    assert two["overrides"] == ["eval.max_pairs=2", "eval.max_contexts=1"]
    # a run saved with a data.data_dir beside its folder of pairs, which training refuses since, is evaluated as it
    # was made: the folder is read, as it was, and the data_dir never was
    saved = (run / "config.yaml").read_text()
    assert saved.count("data_dir: null") == 1
    (run / "config.yaml").write_text(saved.replace("data_dir: null", f"data_dir: {tmp_path / 'elsewhere'}"))
    main(["evaluate", str(run), "--split", "valid", "--iw-samples", "0", "--eval.max_pairs", "2",
          "--eval.max_contexts=1", "--json", str(tmp_path / "made_before.json")])
    assert json.loads((tmp_path / "made_before.json").read_text())["n_pairs"] == 2
    with pytest.raises(TextVAEError, match="data.data_dir .*elsewhere: not read for data.name"):
        train_cvae(parse_run_config([str(run / "config.yaml")])[0], resume=True)  # training refuses it
    (run / "config.yaml").write_text(saved)
    for argv, error in ((["--eval.method", "nucleus"], "eval.method 'nucleus': unknown decoding method; valid: greedy"),
                        (["--eval.max_pairs", "0"], "eval.max_pairs must be at least 1, got 0"),
                        (["--eval.max_pairs", "--split", "valid"], "--eval.max_pairs: expected one argument")):
        with pytest.raises(SystemExit):  # checked as train checks it, before any work
            main(["evaluate", str(run), *argv])
        assert error in capsys.readouterr().err
    # its own precision may be named (the report computes in it); another is refused
    main(["evaluate", str(run), "--iw-samples", "3", "--precision", "fp32", "--json", str(tmp_path / "fp32.json")])
    assert json.loads((tmp_path / "fp32.json").read_text())["iw_nll"] == evaluated["iw_nll"]
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--precision", "bf16"])
    assert ("--precision bf16: a dialogue run is evaluated in its own train.precision (fp32), as its test report "
            "was") in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "valid"] == [1, 2]
    assert max(r["step"] for r in records if r["split"] == "train") == 10  # 5 batches per epoch
    lines = respond(run, ["hello how are you __eou__ fine thanks"], n=3)
    assert len(lines) == 3 and capsys.readouterr().out.count("\n") == 3
    assert "not in the model's vocabulary" not in caplog.text
    respond(run, ["xyzzy how are you"], n=1)  # a word the model never saw is named, as reconstruct names it
    assert "1 word(s) are not in the model's vocabulary and are read as <unk>: xyzzy" in caplog.text
    # from Python: the same responses; response i from its own stream, so n = 5 begins with n = 3's
    cvae = load(run)
    assert isinstance(cvae, PretrainedCVAE) and not cvae.model.training and cvae.run_config["task"] == "dialogue"
    context = ["hello how are you", "fine thanks"]
    assert cvae.respond(context, n=3) == lines
    batch = collate_dialogues([[data.tokenizer.encode(t) for t in context]], [[]])
    by_hand = [generate_responses(cvae.model, batch, 1, "greedy", 40, stream)[0][0] for stream in numbered_streams(0, 3)]
    assert lines == [data.tokenizer.decode(ids) for ids in by_hand]  # response i from stream (seed, i)
    sampled = cvae.respond(context, n=5, method="sample", max_len=5, seed=4)
    assert sampled[:3] == cvae.respond(context, n=3, method="sample", max_len=5, seed=4)
    assert len(set(sampled)) > 1  # distinct streams, not one draw repeated
    with pytest.raises(TextVAEError, match="give the context as a list of turns, not one string"):
        cvae.respond("hello how are you")
    with pytest.raises(TextVAEError, match="^temperature is an option of method sample, and method greedy would ignore"):
        cvae.respond(context, temperature=0.5)
    with pytest.raises(TextVAEError, match="^seed must be at least 0, got -1$"):
        cvae.respond(context, seed=-1)
    with pytest.raises(TextVAEError, match=r"^" + re.escape(f"{run / 'model'}: this is a dialogue CVAE, not a "
                                                           f"sentence VAE: KgCVAE.from_pretrained reads it")):
        TextVAE.from_pretrained(run / "model")


def test_cvae_trains_with_sparse_gradients_like_dense_and_with_the_sampled_softmax(tmp_path):
    """The loop's levers reach the CVAE: three SGD steps at lr 1 with clipping active give the same
    weights with sparse embedding gradients as with dense ones (and the loop really switched them
    on), and the sampled softmax trains it (to other weights than the full softmax's)."""
    write_dialogues(tmp_path)
    states = {}
    for name, sparse, sampled in (("dense", False, 0), ("sparse", True, 0), ("sampled", False, 8)):
        cfg = CVAERunConfig(
            name=name, out_dir=str(tmp_path / "runs"),
            data=DialogueDataConfig(name=str(tmp_path), context_turns=2, batch_size=8, eval_batch_size=4),
            model=tiny(use_acts=True).cfg, optim=DialogueOptimConfig(name="sgd", lr=1.0, clip=0.5),
            train=TrainConfig(epochs=1, max_steps=3, progress=False, tensorboard=False, metrics_every=0,
                              iw_samples_final=0, sparse_gradients=sparse, sampled_softmax=sampled),
            eval=DialogueEvalConfig(n_responses=1, max_contexts=1, max_len=3))
        report = train_cvae(cfg)
        assert math.isfinite(report["neg_elbo"])
        states[name] = state_of(tmp_path / "runs" / name / "checkpoint.safetensors")
        (data,) = [r for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl") if r["split"] == "data"]
        assert data["sparse_gradients"] == sparse
    for key, value in states["dense"].items():
        torch.testing.assert_close(states["sparse"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert not torch.equal(states["sampled"]["model.projection.weight"], states["dense"]["model.projection.weight"])

def test_bag_of_words_reads_z_and_the_context():
    """Zhao et al.'s bag-of-words loss predicts the response's words from MLP([z; c]): at the same z, two
    contexts give two losses, and the MLP takes the context's units (10) besides z's (3)."""
    model = tiny([{"name": "bow"}]).eval()
    bow = model.objective.remedies[0]
    assert bow.mlp[0].in_features == 3 + 10
    assert tiny([{"name": "bow", "use_context": False}]).objective.remedies[0].mlp[0].in_features == 3  # z alone
    batch = random_batch()
    response = model.with_context(batch.response, model.encode_context(batch))
    z = torch.randn(len(response), 3, generator=torch.Generator().manual_seed(0))
    other = dataclasses.replace(response, extras={"context_vector": torch.randn_like(response.extras["context_vector"])})
    with torch.no_grad():
        assert not torch.allclose(bow.extra_loss(model, response, z, None, 0), bow.extra_loss(model, other, z, None, 0))


def test_a_capped_evaluation_spreads_its_pairs_over_the_split(tmp_path):
    """eval.max_pairs and the periodic metrics' limit take pairs spread evenly over the split, as the
    sentence task does, not the first dialogues' alone."""
    from textvae.dialogue.config import DialogueDataConfig
    from textvae.dialogue.data import load_dialogue_data

    write_dialogues(tmp_path)
    split = load_dialogue_data(DialogueDataConfig(name=str(tmp_path), context_turns=2)).splits["train"]
    n = len(split.lengths)
    assert split.subset(4).tolist() == [0, n // 4, n // 2, 3 * n // 4] and split.subset(None).tolist() == list(range(n))
    seen = sorted(i for b in split.batches(3, limit=4) for i in b.response.index.tolist())
    assert seen == split.subset(4).tolist()
