"""bf16 working copies (``train.bf16_weight_copies``, :mod:`textvae.training.working_copies`): the same
forward values and gradients as autocast over the fp32 masters, the same SGD update to rounding, and
copies that follow their masters wherever else those change."""
import dataclasses

import pytest
import torch

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, RunConfig
from textvae.models import native
from textvae.models.decoders import DECODERS
from textvae.models.textvae import TextVAE
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.training.train import clip_gradients
from textvae.training.working_copies import (WorkingCopies, clip_scale, working_copies_apply, working_copy_names)
from tests.conftest import kernel_or_torch, needs_cpu_bf16
from tests.test_perf_levers import V, ragged_batch, tiny_model

torch.set_num_threads(1)
CLIP = 5.0


@pytest.fixture(params=[True, False], ids=["kernel", "torch-ops"])
def kernel_on(request):
    with kernel_or_torch("sgd_bf16", request.param) as on:
        yield on


def test_sgd_kernel_against_torch():
    """master + alpha * grad to fp32 rounding (FMA or not), the copy exactly torch's bf16 cast of the new
    master, NaN kept; odd sizes (not a multiple of the vector width) and ties of the rounding."""
    kernel = native.native_kernel("sgd_bf16")
    if kernel is None:
        pytest.skip(f"the sgd_bf16 kernel is not built here ({native.native_status()})")
    g = torch.Generator().manual_seed(0)
    master = torch.randn(1000, 37, generator=g)
    master[0, :4] = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), float("nan")])  # ties
    grad = torch.randn(1000, 37, generator=g).bfloat16()
    grad[0, :3] = 0
    working = torch.empty(1000, 37, dtype=torch.bfloat16)
    exact = master.double() + torch.tensor(-0.37, dtype=torch.float32).double() * grad.double()  # float64
    scale = master.double().abs() + (0.37 * grad.double()).abs()
    kernel.sgd_update(master, grad, working, -0.37)
    error = (master.double() - exact).abs()[1:]
    assert (error <= 2 ** -23 * scale[1:]).all()  # one rounding (FMA) or two, each half an ulp of the operands
    assert master[0, :3].tolist() == [1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8)] and torch.isnan(master[0, 3])
    assert torch.equal(working.view(torch.int16)[1:], master.bfloat16().view(torch.int16)[1:])
    assert working[0, :3].tolist() == [1.0, 1.0 + 4 * 2 ** -8, -1.0] and torch.isnan(working[0, 3])
    with pytest.raises(RuntimeError, match="grad"):
        kernel.sgd_update(master, grad.float(), working, 1.0)


@needs_cpu_bf16
def test_output_copy_is_transposed_and_its_gradient_needs_no_copy(kernel_on):
    """The projection's master (same values) and copy are [V, H] views of contiguous [H, V] tensors, and
    the fused loss hands autograd the copy's gradient in that same layout (kept, not copied)."""
    model, batch = tiny_model(), ragged_batch()
    model.train()
    before = model.projection.weight.detach().clone()
    working = WorkingCopies(model, working_copy_names(model))
    master = model.projection.weight
    assert torch.equal(master, before) and master.t().is_contiguous() and not master.is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        working(model, batch).loss.backward()
    copy = working.copies["projection.weight"]
    assert copy.shape == model.projection.weight.shape and not copy.is_contiguous() and copy.t().is_contiguous()
    assert copy.grad.stride() == copy.stride()
    assert all(c.grad.is_contiguous() for n, c in working.copies.items() if n != "projection.weight")


def test_which_weights_get_copies():
    """Every LSTM weight and the fused loss's output weight; not biases, embeddings, the latent side, a
    GRU, a weight tied to an embedding, or the sampled softmax's rows."""
    model = tiny_model()
    assert working_copy_names(model) == ["encoder.rnn.weight_ih_l0", "encoder.rnn.weight_hh_l0",
                                         "decoder.rnn.weight_ih_l0", "decoder.rnn.weight_hh_l0", "projection.weight"]
    assert working_copy_names(tiny_model(encoder="gru"))[0] == "decoder.rnn.weight_ih_l0"
    model.decoder.embedding.weight = torch.nn.Parameter(torch.zeros(V, 14))  # tied as tie_weights does
    model.projection.weight = model.decoder.embedding.weight
    assert "projection.weight" not in working_copy_names(model)
    model = tiny_model()
    model.sampled_softmax = SampledSoftmax(torch.ones(V), 8)
    assert "projection.weight" not in working_copy_names(model)


@needs_cpu_bf16
@pytest.mark.parametrize("decoder", DECODERS.names())
def test_every_decoder_trains_through_its_copies(decoder):
    """Each registered decoder: the forward through the copies gives autocast's loss over the masters
    bit for bit, and every copy gets its gradient."""
    cfg = ModelConfig(emb_dim=12, latent_dim=4, encoder=EncoderConfig(hidden_dim=10),
                      decoder=DecoderConfig(type=decoder, hidden_dim=12, input_dropout=0.0, output_dropout=0.0),
                      init="torch")
    torch.manual_seed(0)
    model, batch = TextVAE(cfg, V).train(), ragged_batch()
    working = WorkingCopies(model, working_copy_names(model))
    losses = []
    for through_copies in (False, True):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = working(model, batch) if through_copies else model(batch)
        losses.append(out.loss.detach())
    out.loss.backward()
    assert "projection.weight" in working.copies and torch.equal(losses[0], losses[1])
    assert all(c.grad is not None and c.grad.dtype == torch.bfloat16 for c in working.copies.values())


@pytest.mark.parametrize("change, applies", [
    ({}, True), ({"train.precision": "fp32"}, False), ({"train.bf16_weight_copies": False}, False),
    ({"optim.name": "adam"}, False), ({"optim.momentum": 0.9}, False), ({"optim.weight_decay": 1e-4}, False)])
def test_where_copies_apply(change, applies):
    cfg = RunConfig()
    cfg.train.precision = "bf16"
    for key, value in change.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    assert working_copies_apply(cfg, 1, torch.device("cpu")) is applies
    assert not working_copies_apply(cfg, 2, torch.device("cpu"))  # DDP
    assert not working_copies_apply(cfg, 1, torch.device("meta"))  # not a CPU


def autocast_step(model, batch, optimizer, seed):
    """The loop's step without copies: autocast over the masters, clip, SGD."""
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    clip_gradients(model, CLIP)
    optimizer.step()
    return out.loss.detach(), grads


def copies_step(model, batch, optimizer, working, seed):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = working(model, batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = {**{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
             **{n: c.grad.float() for n, c in working.copies.items()}}
    norm = clip_gradients(model, CLIP, working)
    optimizer.step()
    working.step(optimizer, clip_scale(float(norm), CLIP))
    return out.loss.detach(), grads


@needs_cpu_bf16
def test_copies_give_autocasts_loss_gradients_and_updates(kernel_on):
    """Step 1 from the same weights: the same loss and the same gradients bit for bit (the copies'
    bf16 gradients are autocast's before it widens them); the masters after the update equal to
    fp32 rounding; five more steps stay as close as bf16 training from masters that far apart can."""
    batch = ragged_batch(n=9)
    runs = []
    for use_copies in (False, True):
        model = tiny_model()
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        working = WorkingCopies(model, working_copy_names(model)) if use_copies else None
        steps = [copies_step(model, batch, optimizer, working, s) if use_copies
                 else autocast_step(model, batch, optimizer, s) for s in range(6)]
        runs.append((steps, {n: p.detach().clone() for n, p in model.named_parameters()}, working))
    (ref_steps, ref_params, _), (steps, params, working) = runs
    (loss_a, grads_a), (loss_b, grads_b) = ref_steps[0], steps[0]
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=2e-2, atol=2e-3)
    assert all(torch.equal(c, params[n].bfloat16()) for n, c in working.copies.items())  # copies current
    assert all(c.grad is None for c in working.copies.values())
    torch.testing.assert_close(torch.stack([s[0] for s in steps]), torch.stack([s[0] for s in ref_steps]),
                               rtol=2e-3, atol=0)


@needs_cpu_bf16
def test_first_update_equals_autocasts_to_rounding(kernel_on):
    """One step, clipped (tiny max norm) and not: masters within a few fp32 ulps of autocast's SGD."""
    batch = ragged_batch(n=9)
    for clip in (1e-3, 1e6):
        results = []
        for use_copies in (False, True):
            model = tiny_model()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(batch) if not use_copies else (working := WorkingCopies(
                    model, working_copy_names(model)))(model, batch)
            out.loss.backward()
            norm = clip_gradients(model, clip, working if use_copies else None)
            optimizer.step()
            if use_copies:
                working.step(optimizer, clip_scale(float(norm), clip))
            results.append((float(norm), {n: p.detach().clone() for n, p in model.named_parameters()}))
        (norm_a, a), (norm_b, b) = results
        assert norm_b == pytest.approx(norm_a, rel=1e-6)
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=1e-6, atol=1e-9)


@needs_cpu_bf16
def test_copies_follow_masters_changed_elsewhere():
    """A master changed outside the copies' update (a remedy's own step, a best-model reload) is cast
    anew before the next forward, which then equals autocast's over the masters."""
    model, batch = tiny_model(), ragged_batch()
    model.eval()
    working = WorkingCopies(model, working_copy_names(model))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        working(model, batch)
        other = tiny_model()
        torch.nn.init.normal_(other.decoder.rnn.weight_hh_l0)
        other.projection.weight.mul_(3)
        model.load_state_dict(other.state_dict())
        torch.manual_seed(1)
        with_copies = working(model, batch).rec
        torch.manual_seed(1)
        direct = model(batch).rec
    assert torch.equal(with_copies, direct)
    assert torch.equal(working.copies["projection.weight"], model.projection.weight.bfloat16())


@needs_cpu_bf16
def test_dropped_masters_are_not_updated(kernel_on):
    """``drop`` (a remedy restricting the update, like aggressive training's decoder-only steps)
    leaves those masters and their copies as they were; the others move."""
    model, batch = tiny_model(), ragged_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    working = WorkingCopies(model, working_copy_names(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = working(model, batch)
    out.loss.backward()
    encoder = list(model.inference_parameters())
    for p in encoder:
        p.grad = None
    working.drop(encoder)
    optimizer.step()
    working.step(optimizer, 1.0)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("encoder."))
    assert not torch.equal(after["decoder.rnn.weight_hh_l0"], before["decoder.rnn.weight_hh_l0"])
    assert torch.equal(working.copies["encoder.rnn.weight_hh_l0"], before["encoder.rnn.weight_hh_l0"].bfloat16())


def test_run_config_key_round_trips(tmp_path):
    """train.bf16_weight_copies defaults to on, and a run's saved config.yaml gives back the value set."""
    import yaml

    from textvae.tasks.runconfig import parse_run_config

    assert dataclasses.asdict(RunConfig())["train"]["bf16_weight_copies"] is True
    cfg, _ = parse_run_config(["--train.bf16_weight_copies", "false"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    again, _ = parse_run_config([str(tmp_path / "config.yaml")])
    assert again.train.bf16_weight_copies is False and again == cfg


@needs_cpu_bf16
def test_a_remedy_that_drops_gradients_keeps_its_masters_in_the_loop(tmp_path, monkeypatch):
    """Through the training loop (bf16, plain SGD: copies on): aggressive training's outer update drops
    the encoder's gradients (``Trainer.drop_gradients``), so with its inner encoder steps switched off
    the encoder's masters, copied ones included, stay as they were while the decoder's move."""
    from textvae.cli import main
    from textvae.remedies.aggressive import Aggressive
    from tests.test_train import state_of, tiny_args, write_corpus

    monkeypatch.setattr(Aggressive, "before_update", lambda self, trainer, batch: None)
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    args = tiny_args(tmp_path / "runs", "agg", corpus, "--train.iw_samples_final", "0", "--optim.name", "sgd",
                     "--optim.lr", "1.0", "--train.precision", "bf16",
                     "--objective.remedies", '[{"name": "aggressive"}]', "--train.metrics_every", "0")
    main(["train", *args, "--train.max_steps", "1"])
    before = state_of(tmp_path / "runs" / "agg" / "checkpoint.safetensors")
    main(["train", *args, "--train.max_steps", "3", "--resume"])
    after = state_of(tmp_path / "runs" / "agg" / "checkpoint.safetensors")
    assert "model.encoder.rnn.weight_hh_l0" in before
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("model.encoder."))
    assert not torch.equal(after["model.decoder.rnn.weight_hh_l0"], before["model.decoder.rnn.weight_hh_l0"])


@needs_cpu_bf16
def test_aggressive_inner_steps_update_copied_encoder_weights_in_the_loop(tmp_path):
    """Aggressive training in the loop with copies on: its inner steps (the trainer's ``forward`` and
    ``optimizer_step``) move the encoder's copied LSTM weights (the outer steps' leaving them alone is
    the test above's)."""
    from textvae.cli import main
    from tests.test_train import state_of, tiny_args, write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    args = tiny_args(tmp_path / "runs", "agg", corpus, "--train.iw_samples_final", "0", "--optim.name", "sgd",
                     "--optim.lr", "1.0", "--train.precision", "bf16", "--train.metrics_every", "0",
                     "--objective.remedies", '[{"name": "aggressive", "max_inner_steps": 2, "check_every": 1}]')
    main(["train", *args, "--train.max_steps", "1"])
    before = state_of(tmp_path / "runs" / "agg" / "checkpoint.safetensors")
    main(["train", *args, "--train.max_steps", "2", "--resume"])
    after = state_of(tmp_path / "runs" / "agg" / "checkpoint.safetensors")
    for name in ("model.encoder.rnn.weight_hh_l0", "model.decoder.rnn.weight_hh_l0"):
        assert not torch.equal(after[name], before[name]), name
