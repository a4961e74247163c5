"""Every registry: ``textvae list`` shows each of its entries with the parameters a recipe may set,
an argument the caller supplies cannot be set from a recipe, and each remedy's summary names its
paper."""
import inspect
import re
from typing import Any, Optional

import numpy as np
import pytest
import torch

import textvae.data.synthetic  # noqa: F401 (registers the synthetic corpus kinds)
import textvae.tasks  # noqa: F401 (imports every registered part)
import textvae.registry as registry
from textvae.cli import main
from textvae.errors import TextVAEError
from textvae.registry import Registry, list_registries
from textvae.remedies import REMEDIES, Remedy, create_remedy, list_remedies, register_remedy
from textvae.schedules import create_schedule
from tests.test_metric_registry import toy_metric  # noqa: F401 (fixture)

REGISTRIES = list_registries()


def list_output(capsys, *argv: str) -> str:
    capsys.readouterr()
    main(["list", *argv])
    return capsys.readouterr().out


def test_list_names_every_registry_and_entry(capsys):
    out = list_output(capsys)
    for r in REGISTRIES:
        line = next(l for l in out.splitlines() if l.startswith(f"{r.key}: "))
        assert line == f"{r.key}: {', '.join(r.names())}"
        assert f"in a recipe: {r.recipe}" in out and r.recipe


@pytest.mark.parametrize("r", REGISTRIES, ids=lambda r: r.key)
def test_list_kind_shows_each_entry_its_summary_and_parameters(r, capsys):
    out = list_output(capsys, r.key)
    for name in r.names():
        assert f"\n{name}: {r.summary(name)}\n" in out
        assert r.summary(name), f"{r.kind} {name!r} has no docstring (nor has its module)"
        factory = r.get(name)
        if callable(factory):  # what a recipe may set: the signature less what the caller supplies
            target = factory.__init__ if inspect.isclass(factory) else factory
            expected = [p for p in inspect.signature(target).parameters
                        if p != "self" and p not in r.supplied and not p.startswith(("args", "kwargs"))]
            assert list(r.parameters(name)) == expected


@pytest.mark.parametrize("plural, kind", [("remedies", "remedy"), ("decoders", "decoder"), ("metrics", "metric")])
def test_list_takes_a_kind_in_the_plural(capsys, plural, kind):
    assert list_output(capsys, plural) == list_output(capsys, kind)


def test_list_one_entry_prints_its_parameters_and_docstrings(capsys):
    out = list_output(capsys, "remedy", "bn_vae")
    assert "parameters: gamma=0.7, momentum=0.1, eps=1e-10" in out and "latent_dim" not in out.split("\n\n")[1]
    assert "BN-VAE (Zhu et al. 2020)" in out  # the class's docstring
    assert "The floor is really gamma² v_d / (v_d + eps)" in out  # and its module's
    assert "parameters: total_steps, n_cycles=4" in list_output(capsys, "kl_schedule", "cyclical")  # no default


def test_a_new_metric_is_listed(toy_metric, capsys):  # noqa: F811
    """Registered for this test only, without a docstring: listed with its stages, and the module that registered
    it (not textvae's)."""
    assert "\ntoy (from tests.test_metric_registry): Stages: periodic, test.\n" in list_output(capsys, "metric")


@pytest.mark.parametrize("argv, message", [
    (["remedi"], "unknown kind 'remedi'; valid: "),
    (["remedy", "bn-vae"], "unknown remedy 'bn-vae'; valid: aggressive, "),
])
def test_list_errors_name_the_valid_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["list", *argv])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and message in err and out == ""  # nothing printed before the error


@pytest.mark.parametrize("name", list_remedies())
def test_each_remedy_summary_names_its_paper(name):
    remedies = next(r for r in REGISTRIES if r.kind == "remedy")
    assert re.search(r"\b[A-Z][a-z]+ (et al\. )?(19|20)\d\d\b", remedies.summary(name)), remedies.summary(name)


def test_a_recipe_cannot_set_what_the_model_supplies():
    with pytest.raises(TextVAEError, match=r"remedy 'bn_vae': \['latent_dim'\] come\(s\) from the model"):
        create_remedy({"name": "bn_vae", "latent_dim": 8}, latent_dim=4)
    with pytest.raises(TextVAEError, match=r"unknown parameter\(s\) \['gama'\]; valid: \['eps', 'gamma', 'momentum'\]"):
        create_remedy({"name": "bn_vae", "gama": 0.5}, latent_dim=4)


def test_a_recipe_value_of_the_wrong_type_names_its_parameter(monkeypatch):
    with pytest.raises(TextVAEError, match=r"^remedy 'bn_vae': gamma must be a number, got 'high'$"):
        create_remedy({"name": "bn_vae", "gamma": "high"}, latent_dim=4)
    create_remedy({"name": "bn_vae", "gamma": 1}, latent_dim=4)  # YAML gives 1 for 1.0: a number all the same
    monkeypatch.setattr(registry, "_REGISTRIES", [])
    parts = Registry("part")

    @parts.register("box")
    def box(width: int = 1, depth: Optional[float] = None, tall: bool = False, label: str = "", shape: Any = None):
        return width

    for params, message in (({"width": 1.5}, "width must be an integer, got 1.5"),
                            ({"width": True}, "width must be an integer, got True"),
                            ({"depth": "deep"}, "depth must be a number or null, got 'deep'"),
                            ({"tall": 1}, "tall must be true or false, got 1"), ({"label": 3}, "label must be a string")):
        with pytest.raises(TextVAEError, match=f"^part 'box': {re.escape(message)}"):
            parts.build("box", params)
    assert parts.build("box", {"width": 2, "depth": None, "tall": True, "label": "a", "shape": [1, "x"]}) == 2
    assert parts.build("box", {"width": 1e4}) == 10000  # a recipe's 1e4 is read as 10000.0


def test_a_caller_passes_only_declared_arguments(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRIES", [])
    parts = Registry("part", recipe="x: NAME", supplied=("size",))
    parts.register("box")(lambda size, depth=1: (size, depth))
    assert parts.build("box", {"depth": 2}, size=3) == (3, 2)
    with pytest.raises(ValueError, match=r"the caller passes \['width'\]"):
        parts.build("box", {}, size=3, width=4)
    with pytest.raises(ValueError, match="a registry of 'part' exists already"):
        Registry("part")


def test_registering_again_replaces_the_same_definition_only(monkeypatch):
    """A notebook cell run twice (or a module reloaded) registers its definition again: that replaces the
    entry; another definition under a name in use, a bare decorator or a non-remedy are errors as they register."""
    monkeypatch.setattr(registry, "_REGISTRIES", [])
    parts = Registry("part")
    for width in (1, 2):  # the same def, run twice
        def box(depth=width):
            return depth
        parts.register("box")(box)
    assert parts.build("box", {}) == 2
    with pytest.raises(ValueError, match=r"^part 'box' is taken by tests\.test_registry\.test_registering_again_"
                                         r"replaces_the_same_definition_only\.<locals>\.box; register this one under "
                                         r"another name$"):
        parts.register("box")(lambda: 0)
    parts.register("lid")(lambda: 1)
    with pytest.raises(ValueError, match="part 'lid' is taken; register this one"):  # every lambda here is <locals>.<lambda>
        parts.register("lid")(lambda: 2)
    with pytest.raises(ValueError, match="part 'crate' is taken; register this one"):  # instances carry no definition
        parts.register("crate")(object())
        parts.register("crate")(object())
    with pytest.raises(TypeError, match="the register decorator takes the entry's name"):
        parts.register(box)
    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))
    with pytest.raises(TypeError, match="register_remedy takes a subclass of Remedy"):
        register_remedy("plain")(type("Plain", (), {}))
    for _ in range(2):
        @register_remedy("mine")
        class Mine(Remedy):
            """A remedy of one's own, defined twice."""

            def corrupt_inputs(self, inputs):
                return inputs
    assert REMEDIES.get("mine") is Mine


def test_a_remedy_whose_hooks_would_do_nothing_is_refused_as_it_registers(monkeypatch):
    """A misspelt hook is a method nobody calls, and a kl_term without replaces_kl (or the other way round) is
    never the KL term: the remedy would train a plain VAE without a word."""
    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))
    with pytest.raises(TypeError, match=r"^remedy 'typo': Typo overrides none of Remedy's hooks: extra_losses \(did "
                                        r"you mean extra_loss\?\); the hooks are corrupt_inputs, "):
        register_remedy("typo")(type("Typo", (Remedy,), {"extra_losses": lambda self, *a: None}))
    with pytest.raises(TypeError, match="sets replaces_kl but overrides no kl_term"):
        register_remedy("no_term")(type("NoTerm", (Remedy,), {"replaces_kl": True, "extra_loss": lambda self, *a: None}))
    with pytest.raises(TypeError, match="overrides kl_term without replaces_kl = True"):
        register_remedy("no_flag")(type("NoFlag", (Remedy,), {"kl_term": lambda self, kl, beta, step: kl.sum(-1)}))
    assert not {"typo", "no_term", "no_flag"} & set(REMEDIES.names())


def test_a_schedule_factory_that_returns_a_value_is_an_error(monkeypatch):
    from textvae.schedules import SCHEDULES, create_schedule, register_schedule

    monkeypatch.setattr(SCHEDULES, "_entries", dict(SCHEDULES._entries))

    @register_schedule("flat")
    def flat(value: float = 0.5):
        """A factory that forgot to return its step -> value function."""
        return value

    with pytest.raises(TextVAEError, match="^KL schedule 'flat' built float, not a function of the step$"):
        create_schedule({"name": "flat"})


def test_a_model_made_with_a_plugin_schedule_loads_and_samples_without_the_plugin(monkeypatch, tmp_path):
    """The KL schedule is read only by training: a model shared without its schedule's plugin still loads and
    samples, and only reading beta names the missing schedule."""
    from textvae.config import ModelConfig, ObjectiveConfig
    from textvae.models.decoding import greedy
    from textvae.models.textvae import TextVAE
    from textvae.schedules import SCHEDULES, register_schedule

    monkeypatch.setattr(SCHEDULES, "_entries", dict(SCHEDULES._entries))

    @register_schedule("halfway")
    def halfway():
        return lambda step: 0.5

    cfg = ModelConfig(emb_dim=8, latent_dim=2)
    model = TextVAE(cfg, vocab_size=9, objective=ObjectiveConfig(kl_schedule={"name": "halfway"}))
    assert model.objective.beta(3) == 0.5
    model.save_pretrained(tmp_path / "model")
    SCHEDULES._entries.pop("halfway")  # the plugin is not loaded here
    loaded = TextVAE.from_pretrained(tmp_path / "model")
    z = loaded.sample_prior(3, generator=torch.Generator().manual_seed(0))
    assert greedy(loaded, z, 6) == greedy(model.eval(), z, 6)
    with pytest.raises(TextVAEError, match="halfway"):
        loaded.objective.beta(0)


@pytest.mark.parametrize("hook", ["kl_term", "extra_loss"])
def test_a_remedy_term_that_is_not_per_sentence_is_an_error(hook, monkeypatch):
    """A scalar would broadcast over the batch: the term's weight silently multiplied by B."""
    from textvae.config import ObjectiveConfig
    from textvae.objective import Objective, per_sentence_term

    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))

    # the mistake: a term summed over the batch, by a remedy that replaces the KL term or adds a loss
    hooks = ({"replaces_kl": True, "kl_term": lambda self, kl, beta, step: kl.sum()} if hook == "kl_term" else
             {"extra_loss": lambda self, model, batch, z, h, step: z.sum()})
    register_remedy("summed")(type("Summed", (Remedy,), hooks))
    objective = Objective(ObjectiveConfig(remedies=[{"name": "summed"}]))
    kl, z = torch.ones(3, 2), torch.ones(3, 2)
    with pytest.raises(TextVAEError, match=rf"^remedy 'summed': {hook} gave \(\), not the per-sentence "
                                           rf"\[B\] = \[3\]$"):  # the objective checks what its remedies give
        extras = objective.extra_losses(None, None, z, None, 0)
        objective(torch.ones(3), kl, 0, extras)
    term = torch.ones(4)
    assert per_sentence_term(term, 4, "mine", hook) is term and per_sentence_term(None, 4, "mine", hook) is None
    for wrong, shown in ((torch.tensor(2.0), r"\(\)"), (torch.ones(4, 1), r"\(4, 1\)"), (2.0, "float")):
        with pytest.raises(TextVAEError, match=rf"^remedy 'mine': {hook} gave {shown}, not the per-sentence "
                                               rf"\[B\] = \[4\]$"):
            per_sentence_term(wrong, 4, "mine", hook)


@pytest.mark.parametrize("module, kind, registry_name", [
    ("textvae.schedules", "schedule", "SCHEDULES"), ("textvae.models.decoders", "decoder", "DECODERS"),
    ("textvae.models.encoders", "encoder", "ENCODERS"), ("textvae.models.posteriors", "posterior", "POSTERIORS"),
    ("textvae.models.distributions", "prior", "PRIORS")])
def test_each_swappable_part_has_its_register_and_list_functions(monkeypatch, module, kind, registry_name):
    """timm's register_* / list_*: a part of one's own is one decorated definition."""
    import importlib

    found = importlib.import_module(module)
    register, listed, target = getattr(found, f"register_{kind}"), getattr(found, f"list_{kind}s"), \
        getattr(found, registry_name)
    monkeypatch.setattr(target, "_entries", dict(target._entries))

    def mine(latent_dim=None):
        """A part of one's own."""

    assert register("mine")(mine) is mine and "mine" in listed() and target.get("mine") is mine


def test_a_metric_s_options_are_checked_as_it_registers(monkeypatch):
    """A single Row or stage is taken as one; rows that are not Rows, an unknown option, and a figure that
    another metric gives otherwise are one-line errors, at registration or at the pass that meets them."""
    from textvae.metrics import METRICS, Row, evaluate_model, register_metric
    from tests.test_metrics import make_models, split

    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))
    one = register_metric("one", rows=Row("one", "one"), stages="test")(lambda p: {"one": 1.0})
    assert one.rows == (Row("one", "one"),) and one.stages == ("test",)
    for options, message in (({"rows": (("x", "x", "{:.2f}"),)}, "rows must be Row(figure, label, format) entries"),
                             ({"stage": ("test",)}, "unknown option(s) ['stage']"),
                             ({"stages": ("tests",)}, "unknown stages ['tests']")):
        with pytest.raises(TextVAEError, match=re.escape(message)):
            register_metric("bad", **options)
    register_metric("clash")(lambda p: {"au": -1.0})
    model, _, x = make_models(n=8)
    with pytest.raises(TextVAEError, match="metric 'clash' gives the figure 'au', which 'au' gives as"):
        evaluate_model(model, split(x, 4), metrics=["au", "clash"])
    # what a report and its JSON log could not read: an error naming the metric, not a traceback later
    register_metric("number")(lambda p: 1.0)
    register_metric("tensor")(lambda p: {"t": torch.tensor(1.0)})
    register_metric("numpy32")(lambda p: {"f": np.float32(1.0)})
    for name, message in (("number", "metric 'number' returned float, not a dict of figures"),
                          ("tensor", "metric 'tensor': figure 't' is a Tensor, which a report cannot write; give a"),
                          ("numpy32", "metric 'numpy32': figure 'f' is a float32, which a report cannot write")):
        with pytest.raises(TextVAEError, match=re.escape(message)):
            evaluate_model(model, split(x, 4), metrics=[name])
    assert evaluate_model(model, split(x, 4), metrics="au")["au"] >= 0  # one name as a string


def test_a_missing_parameter_is_named_not_a_python_signature(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRIES", [])
    parts = Registry("part", supplied=("size",))
    parts.register("box")(lambda lr, size, depth, width=1: (lr, size, depth, width))
    with pytest.raises(TextVAEError, match=r"^part 'box': missing parameter\(s\) \['depth'\]; valid: \['depth', 'width'\]$"):
        parts.build("box", {"width": 2}, 0.1, size=3)  # lr by position, size supplied: only depth is the recipe's
    assert parts.build("box", {"depth": 4}, 0.1, size=3) == (0.1, 3, 4, 1)
    with pytest.raises(TextVAEError, match=r"KL schedule 'cyclical': missing parameter\(s\) \['total_steps'\]"):
        create_schedule({"name": "cyclical"})


PLUGIN = '''
import torch

from textvae.remedies import Remedy, register_remedy


@register_remedy("half_kl")
class HalfKL(Remedy):
    """A remedy of the user's own: half the KL term (a test's)."""

    replaces_kl = True

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        return 0.5 * beta * kl.sum(-1)
'''


def test_a_plugin_registers_parts_for_every_command(tmp_path):
    """TEXTVAE_PLUGINS names a module of the user's (here in the current directory, as the console script
    finds it too), which the command imports first: its remedy is listed, and a run trains with it."""
    import json
    import os
    import subprocess
    import sys

    from tests.test_train import REPO

    (tmp_path / "my_parts.py").write_text(PLUGIN)
    env = dict(os.environ, TEXTVAE_PLUGINS="my_parts", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # -P (Python 3.11): the current directory not on sys.path, as under the console script
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    listed = subprocess.run([sys.executable, *safe_path, "-m", "textvae.cli", "list", "remedy", "half_kl"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "A remedy of the user's own: half the KL term" in listed.stdout, listed.stderr
    assert "\nhalf_kl (from my_parts)\n" in listed.stdout  # a part of one's own, told apart from textvae's
    tiny = ["--model.emb_dim", "8", "--model.latent_dim", "2", "--model.encoder.hidden_dim", "8",
            "--model.decoder.hidden_dim", "8", "--data.max_sentences", "60", "--train.max_steps", "2",
            "--train.iw_samples_final", "2", "--train.progress", "false", "--train.tensorboard", "false",
            "--objective.remedies", "[{name: half_kl}]", "--out_dir", str(tmp_path / "runs"), "--name", "half"]
    trained = subprocess.run([sys.executable, "-m", "textvae.cli", "train", *tiny], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert trained.returncode == 0 and (tmp_path / "runs" / "half" / "model").is_dir(), trained.stderr[-2000:]
    (source,) = [json.loads(line) for line in (tmp_path / "runs" / "half" / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "source"]
    assert source["plugins"] == ["my_parts"]  # what the run's code was, beside textvae's commit
    import hashlib

    digest = hashlib.sha256((tmp_path / "my_parts.py").read_bytes()).hexdigest()[:16]
    assert source["plugin_files"] == {"my_parts": {"file": str((tmp_path / "my_parts.py").resolve()), "sha256": digest}}
    without = {k: v for k, v in env.items() if k != "TEXTVAE_PLUGINS"}
    evaluated = subprocess.run([sys.executable, "-m", "textvae.cli", "evaluate", str(tmp_path / "runs" / "half"),
                                "--no-generation"], cwd=tmp_path, env=without, capture_output=True, text=True)
    # the run says which plugin it needs before its part is found unknown
    assert evaluated.returncode == 2 and (f"{tmp_path / 'runs' / 'half'} was made with plugin(s) not loaded here: "
                                          f"my_parts; the parts they register are unknown without them "
                                          f"(TEXTVAE_PLUGINS=my_parts)") in evaluated.stderr, evaluated.stderr
    assert "unknown remedy 'half_kl'" in evaluated.stderr
    elsewhere = subprocess.run([sys.executable, *safe_path, "-m", "textvae.cli", "evaluate",
                                str(tmp_path / "runs" / "half"), "--no-generation"], cwd=tmp_path / "runs", env=without,
                               capture_output=True, text=True)
    # from a folder where the module cannot be imported by name: where its file was, for PYTHONPATH
    assert f"(TEXTVAE_PLUGINS=my_parts PYTHONPATH={tmp_path.resolve()})" in elsewhere.stderr, elsewhere.stderr
    resumed = subprocess.run([sys.executable, "-m", "textvae.cli", "train", *tiny, "--resume"], cwd=tmp_path,
                             env=without, capture_output=True, text=True)
    assert resumed.returncode == 2 and "was made with plugin(s) not loaded here: my_parts" in resumed.stderr, \
        resumed.stderr
    missing = subprocess.run([sys.executable, "-m", "textvae.cli", "list"], cwd=tmp_path, capture_output=True,
                             text=True, env=dict(env, TEXTVAE_PLUGINS="my_parts, no_such_parts"))
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "textvae: error: TEXTVAE_PLUGINS: module 'no_such_parts' cannot be imported: No module named 'no_such_parts'")


def test_a_run_trained_from_python_records_the_modules_of_its_own_parts(tmp_path, monkeypatch):
    """A script that imports its parts (no TEXTVAE_PLUGINS) trains a run that names their module, so that the
    commands, which have not imported it, say what to load before the part is found unknown."""
    import importlib
    import json
    import os
    import subprocess
    import sys

    from textvae.remedies import REMEDIES
    from tests.test_train import REPO, tiny_args, write_corpus

    (tmp_path / "script_parts.py").write_text(PLUGIN.replace("half_kl", "script_half_kl"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))
    monkeypatch.delitem(sys.modules, "script_parts", raising=False)
    importlib.import_module("script_parts")  # as a script's own import: registers script_half_kl

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path / "runs", "half", corpus, "--train.max_steps", "2", "--objective.remedies",
                              "[{name: script_half_kl}]")])
    (source,) = [r for r in map(json.loads, (tmp_path / "runs/half/metrics.jsonl").read_text().splitlines())
                 if r["split"] == "source"]
    assert "script_parts" in source["plugins"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    evaluated = subprocess.run([sys.executable, "-m", "textvae.cli", "evaluate", str(tmp_path / "runs/half"),
                                "--no-generation"], cwd=REPO, env=env, capture_output=True, text=True)
    assert evaluated.returncode == 2 and re.search(r"was made with plugin\(s\) not loaded here: .*script_parts",
                                                   evaluated.stderr), evaluated.stderr


def test_an_unknown_part_s_error_says_where_one_s_own_come_from(capsys):
    with pytest.raises(TextVAEError, match=r"unknown remedy 'half_kl'; valid: .* \(a part of your own: name the module "
                                           r"that registers it in TEXTVAE_PLUGINS\)$"):
        create_remedy({"name": "half_kl"}, latent_dim=4)
