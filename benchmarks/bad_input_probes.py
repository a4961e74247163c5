"""Issue 17 (and the new-user walkthroughs of the twenty-seventh to thirtieth sessions): run every
probe of a new user through the real command line and print, for each, its exit status and the one line
that answers it (the error, or the warning / report line).

    python benchmarks/bad_input_probes.py [--work /tmp/textvae-probes] [--group session28]

Each probe is ``python -m textvae.cli ...`` in a subprocess, on a small generated corpus, so what
is shown is exactly what a user sees. The read-only output folder and the full disk are real
(a read-only tmpfs, and a tmpfs too small for the next checkpoint) when this runs as root where
mounting is allowed; otherwise an output path under a regular file stands in for the read-only
file system, and the full-disk probe is skipped (tests/test_bad_input.py covers it either way).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model.emb_dim", "8", "--model.latent_dim", "4", "--model.encoder.hidden_dim", "8",
        "--model.decoder.hidden_dim", "8", "--train.progress", "false", "--train.tensorboard", "false",
        "--train.iw_samples_final", "4", "--train.threads", "1", "--train.max_steps", "2"]
# the line that answers a probe: an error, else a warning or report line of interest
ANSWER = re.compile(r"^textvae: error: .*|.*(?:warning|is larger than|epochs 0|not trained|glued|looks like|"
                    r"unknown words|not in the model's vocabulary|run saved in|collapsed \(0 active|resuming|evaluating|"
                    r"test report:|training on|made with plugin|seed1 +(?:archived|done)|\t->\t|LATENT_DIM\n(?:.*\n)*?\s+\(type: int|valid -ELBO|results written).*$",
                    re.MULTILINE)


def cli(*argv: str, work: Path, want: str = "", env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit status and the answering line (the first one containing ``want``, when given); ``env``: the
    environment to run in (default: this one's)."""
    env = dict(env or os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "textvae.cli", *argv], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    text = done.stderr + done.stdout
    if "Traceback" in text:
        return done.returncode, "TRACEBACK: " + text.strip().splitlines()[-1]
    errors = [line for line in text.splitlines() if line.startswith("textvae: error:")]
    lines = errors or [" ".join(m.group(0).split()) for m in ANSWER.finditer(text) if want in m.group(0)]
    return done.returncode, lines[0] if lines else "(no line)"


def write_corpus(folder: Path, words: list[str], n: int = 60, seed: int = 0, pattern: str = "{}") -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("valid", 20), ("test", 20)):
        lines = [pattern.format(" ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))) for _ in range(count)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_dialogues(folder: Path) -> Path:
    rng = random.Random(0)
    words = "hello hi how are you fine thanks good bad what why yes no okay sure".split()
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("valid", 6), ("test", 6)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                turns = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(3)]
                f.write(json.dumps({"context": turns[:2], "response": turns[2]}) + "\n")
    return folder


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def train(work: Path, name: str, data: Path, *extra: str, out: str = "runs") -> list[str]:
    return ["train", "--name", name, "--out_dir", str(work / out), "--data.name", str(data), *TINY, *extra]


def setup(work: Path) -> dict[str, Path]:
    """A corpus, a finished tiny run, a dialogue run and the odd files the probes read."""
    words = [f"w{i}" for i in range(30)]
    paths = {"corpus": write_corpus(work / "corpus", words),
             "other": write_corpus(work / "other", [f"v{i}" for i in range(30)], seed=1),
             "raw": write_corpus(work / "raw", ["dog", "cat", "tree", "house", "river"], pattern="the {}, again."),
             "yahoo": write_corpus(work / "yahoo", words + ["_UNK"]),
             "dialogues": write_dialogues(work / "dialogues")}
    (work / "blank.txt").write_text("\n" * 5)
    paths["blank"] = work / "blank.txt"
    for argv in (train(work, "vae", paths["corpus"]),
                 ["train", str(REPO / "textvae/recipes/dailydialog/cvae.yaml"), "--name", "cvae",
                  "--out_dir", str(work / "runs"), "--data.name", str(paths["dialogues"]), "--model.emb_dim", "8", "--model.utterance_hidden", "6",
                  "--model.context_hidden", "8", "--model.latent_dim", "3", "--model.prior_hidden", "8",
                  "--model.decoder_hidden", "8", "--train.max_steps", "2", "--train.progress", "false",
                  "--train.tensorboard", "false", "--train.iw_samples_final", "2", "--eval.n_responses", "2",
                  "--eval.max_contexts", "2"]):
        status, line = cli(*argv, work=work)
        if status != 0:
            sys.exit(f"setup failed ({status}): {' '.join(argv)}: {line}")
    return paths


def read_only_probe(work: Path, corpus: Path) -> tuple[str, list[str]]:
    if mount_tmpfs(work / "readonly", "ro"):
        return "an output folder on a read-only file system", train(work, "x", corpus, out="readonly/runs")
    (work / "a-file").write_text("")
    return "an output folder under a regular file (no mount allowed here)", train(work, "x", corpus, out="a-file/runs")


def disk_full_probe(work: Path) -> tuple[str, list[str]] | None:
    """A copy of the tiny run on a tmpfs with room for the files it has, not for a new checkpoint."""
    run = work / "runs" / "vae"
    used = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    size_kb = (used + (run / "checkpoint.safetensors").stat().st_size // 2) // 1024 + 64  # + tmpfs overhead
    if not mount_tmpfs(work / "small", f"size={size_kb}k"):
        return None
    shutil.copytree(run, work / "small" / "vae")
    return ("the disk fills while a checkpoint is written",
            ["train", str(work / "small" / "vae" / "config.yaml"), "--out_dir", str(work / "small"), "--resume",
             "--train.max_steps", "4", "--train.checkpoint_every", "1"])


def probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """(what, argv, text the answering line contains or '' [, the environment to run in])."""
    model, cvae = str(work / "runs/vae/model"), str(work / "runs/cvae")
    latent = [(f"--model.latent_dim 0 with {r}", train(work, "x", p["corpus"], "--model.latent_dim", "0",
                                                        "--objective.remedies", f'[{{"name": "{r}"}}]'), "")
              for r in ("aggressive", "bn_vae", "delta_vae", "bow", "zforcing")]
    return [
        ("--model.latent_dim -4", train(work, "x", p["corpus"], "--model.latent_dim", "-4"), ""),
        *latent[:1],
        ("--data.max_sentences 0", train(work, "x", p["corpus"], "--data.max_sentences", "0"), ""),
        ("--model.decoder.hidden_dim 0", train(work, "x", p["corpus"], "--model.decoder.hidden_dim", "0"), ""),
        ("--model.emb_dim -5", train(work, "x", p["corpus"], "--model.emb_dim", "-5"), ""),
        ("--train.threads -1", train(work, "x", p["corpus"], "--train.threads", "-1"), ""),
        ("sample MODEL --n -3", ["sample", model, "--n", "-3"], ""),
        ("evaluate on a dialogue run", ["evaluate", cvae], ""),
        ("sample on a dialogue run", ["sample", cvae], ""),
        ("reconstruct on a dialogue run", ["reconstruct", cvae, "hi there"], ""),
        ("interpolate on a dialogue run", ["interpolate", cvae, "hi", "fine thanks"], ""),
        (*read_only_probe(work, p["corpus"]), ""),
        *latent[1:],
        ("data.batch_size larger than the corpus", train(work, "big", p["corpus"], "--data.batch_size", "100"),
         "larger than"),
        ("train.epochs 0: the warning", train(work, "e0", p["corpus"], "--train.epochs", "0"), "epochs 0"),
        ("train.epochs 0: the verdict", train(work, "e0b", p["corpus"], "--train.epochs", "0"), "not trained"),
        ("a single file of 5 blank lines", train(work, "x", p["blank"]), ""),
        ("evaluate on text the model cannot read (unk rate row)", ["evaluate", model, "--data", str(p["other"]),
                                                                   "--iw-samples", "2"], "unknown words"),
        ("evaluate: the cost, said first", ["evaluate", str(work / "runs/vae"), "--iw-samples", "500"],
         "evaluating"),
        ("train --help: the latent size a bare run uses", ["train", "--help"], "LATENT_DIM"),
        ("reconstruct with out-of-vocabulary words", ["reconstruct", model, "w1 zebra w2"], "vocabulary"),
        ("a corpus with its own _UNK token", train(work, "yahoo", p["yahoo"]), "looks like"),
        ("untokenised text", train(work, "raw", p["raw"]), "glued"),
        ("end of a collapsed run: where saved", train(work, "end", p["corpus"]), "run saved in"),
        ("end of a collapsed run: the remedy command", train(work, "end2", p["corpus"]), "collapsed"),
        *session27_probes(work, p),
        *session28_probes(work, p),
        *session29_probes(work, p),
        *session30_probes(work, p),
        *session31_probes(work, p),
        *session32_probes(work, p),
        *session33_probes(work, p),
        *session34_probes(work, p),
        *session35_probes(work, p),
        ("a resumed run", ["train", str(work / "runs/vae/config.yaml"), "--resume", "--train.max_steps", "3"],
         "resuming"),
    ]


def session27_probes(work: Path, p: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """What a new user's walkthrough found answered by a traceback, in Python's terms, or not at all."""
    model, run, cvae = str(work / "runs/vae/model"), str(work / "runs/vae"), str(work / "runs/cvae")
    recipes = {"misspelt": "model:\n  latnt_dim: 4\n", "broken": "model: {latent_dim: 4\n", "empty": ""}
    for name, text in recipes.items():
        (work / f"{name}.yaml").write_text(text)
    return [
        ("evaluate --device gpu", ["evaluate", run, "--device", "gpu"], ""),
        ("evaluate --json on a pseudo file system", ["evaluate", run, "--json", "/proc/e.json"], ""),
        ("a recipe with a misspelt key", ["train", str(work / "misspelt.yaml")], ""),
        ("a recipe that is not YAML", ["train", str(work / "broken.yaml")], ""),
        ("an empty recipe", ["train", str(work / "empty.yaml")], ""),
        ("--model.latnt_dim 4", train(work, "x", p["corpus"], "--model.latnt_dim", "4"), ""),
        ("--train.max-steps 3", train(work, "x", p["corpus"], "--train.max-steps", "3"), ""),
        ("--task dialogue on a sentence recipe", train(work, "x", p["corpus"], "--task", "dialogue"), ""),
        ("a cnn decoder with z_concat false", train(work, "x", p["corpus"], "--model.decoder.type", "cnn",
                                                    "--model.decoder.z_concat", "false"), ""),
        ("a decoder with no path from z", train(work, "x", p["corpus"], "--model.decoder.z_init", "false",
                                                "--model.decoder.z_concat", "false"), ""),
        ("a misspelt posterior on the language model", train(work, "x", p["corpus"], "--model.latent_dim", "0",
                                                             "--model.posterior", "vmff"), ""),
        ("a KL schedule without its required parameter",
         train(work, "x", p["corpus"], "--objective.kl_schedule", "{name: cyclical}"), ""),
        ("a finished run resumed with a setting that trains nothing",
         ["train", str(work / "runs/vae/config.yaml"), "--resume", "--optim.lr", "0.5"], ""),
        ("sample --method greedy --top-p 0.5", ["sample", model, "--method", "greedy", "--top-p", "0.5"], ""),
        ("evaluate a dialogue run with --batch-size", ["evaluate", cvae, "--batch-size", "8"], ""),
        ("compare runs of two tasks", ["compare", run, cvae], ""),
        ("list an unknown remedy", ["list", "remedy", "bnvae"], ""),
        ("respond with a sentence model", ["respond", run, "--context", "hi"], ""),
        ("the test report says what it evaluates", train(work, "announced", p["corpus"]), "test report:"),
    ]


def session28_probes(work: Path, p: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """What the twenty-eighth session's walkthrough of dialogue runs and studies found."""
    run, cvae = str(work / "runs/vae"), str(work / "runs/cvae")
    (work / "short.yaml").write_text("train:\n  max_steps: 2\n")
    (work / "one.txt").write_text("w1 w2 w3\n")
    (work / "three.txt").write_text("w1 w2 w3\nw4 w5\nw6 w7 w8 w9\n")
    return [
        ("--name ''", train(work, "", p["corpus"]), ""),
        ("two recipes, the second without --config", ["train", str(work / "short.yaml"), str(work / "short.yaml")], ""),
        ("a dialogue recipe overlaid on a sentence recipe", ["train", "ptb/vae", "--config", "dailydialog/cvae"], ""),
        ("evaluate --data a file of one sentence", ["evaluate", run, "--data", str(work / "one.txt")], ""),
        ("evaluate --data a file: evaluated whole", ["evaluate", run, "--data", str(work / "three.txt"),
                                                     "--no-generation"], "evaluating"),
        ("respond --max-len 0", ["respond", cvae, "--context", "hi", "--max-len", "0"], ""),
        ("respond to words the model never saw", ["respond", cvae, "--context", "xyzzy qwerty"], "vocabulary"),
        ("a finished run resumed with a setting of its test report alone",
         ["train", str(work / "runs/vae/config.yaml"), "--resume", "--train.iw_samples_final", "3"], "test report:"),
    ]


def session29_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """A study whose budget changed since its runs finished, parts of one's own, and the twenty-ninth
    session's walkthrough papercuts."""
    model = str(work / "runs/vae/model")
    study = {"name": "budget", "seeds": [1], "data": {"name": str(p["corpus"])},
             "overrides": {"model": {"emb_dim": 8, "latent_dim": 4, "encoder.hidden_dim": 8, "decoder.hidden_dim": 8},
                           "train": {"progress": False, "tensorboard": False, "iw_samples_final": 4, "threads": 1}},
             "variants": {"vae": {}}}
    budgets = {"epochs1": {"epochs": 1}, "epochs2": {"epochs": 2}, "steps3": {"max_steps": 3}, "steps6": {"max_steps": 6}}
    for name, budget in budgets.items():
        (work / f"{name}.yaml").write_text(json.dumps({**study, "budget": budget}))
    (work / "two.txt").write_text("w3 w4\n")
    (work / "my_parts.py").write_text("import numpyy  # a module of the user's that does not import\n")
    for out, first in (("study", "epochs1"), ("steps", "steps3")):
        status, line = cli("study", str(work / f"{first}.yaml"), "--out", str(work / out), work=work)
        if status != 0:
            sys.exit(f"setup of the budget probes failed ({status}): {line}")
    plugins = dict(os.environ, TEXTVAE_PLUGINS="my_parts")
    return [
        ("a study given a larger budget", ["study", str(work / "epochs2.yaml"), "--out", str(work / "study")],
         "training on"),
        ("a study given a budget its runs trained past", ["study", str(work / "epochs1.yaml"), "--out",
                                                          str(work / "study")], ""),
        ("a study given more steps than stopped its runs within an epoch", ["study", str(work / "steps6.yaml"),
                                                                            "--out", str(work / "steps")], ""),
        ("reconstruct: sentences after --file F", ["reconstruct", model, "w1 w2", "--file", str(work / "two.txt"),
                                                   "w5 w6"], "w5 w6"),
        ("plot of a study's folder", ["plot", str(work / "study")], ""),
        ("a data.data_dir that does not exist", train(work, "x", "ptb", "--data.data_dir", str(work / "nowhere")), ""),
        ("evaluate --data a file that does not exist", ["evaluate", str(work / "runs/vae"), "--data",
                                                        str(work / "no.txt")], ""),
        ("a remedy of one's own not loaded", train(work, "x", p["corpus"], "--objective.remedies",
                                                   "[{name: my_remedy}]"), ""),
        ("TEXTVAE_PLUGINS naming a module that fails", ["list"], "", plugins),
    ]


def newer_checkpoint(run: Path, copy: Path) -> None:
    """A copy of ``run`` whose checkpoint's loop state has a key this textvae does not know, as one written by
    a newer version."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from textvae.training.checkpoint import META_KEY

    shutil.copytree(run, copy)
    path = copy / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    document = json.loads(metadata[META_KEY])
    document["meta"]["loop"]["a_later_field"] = 0
    save_file(tensors, str(path), metadata={**metadata, META_KEY: json.dumps(document)})


def session30_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirtieth session's answers: a dialogue run's precision, a newer textvae's checkpoint."""
    newer_checkpoint(work / "runs/vae", work / "runs/newer")
    return [
        ("evaluate --precision bf16 of a dialogue run trained in fp32", ["evaluate", str(work / "runs/cvae"),
                                                                         "--precision", "bf16"], ""),
        ("--resume of a run whose checkpoint a newer textvae wrote", train(work, "newer", p["corpus"],
                                                                           "--train.max_steps", "9", "--resume"), ""),
    ]


def session31_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-first session's walkthrough of studies: where a study writes, and a file of the other kind."""
    (work / "a_file").write_text("")
    recipe = work / "recipe.yaml"
    recipe.write_text("model: {latent_dim: 4}\ntrain: {max_steps: 3}\n")
    study = work / "study.yaml"
    study.write_text("base: synthetic\nvariants: {plain: {}}\n")
    out = str(work / "study_out")
    return [
        ("a study's --out that is a file", ["study", str(study), "--out", str(work / "a_file"), "--report"], ""),
        ("a study's --archive that is a folder", ["study", str(study), "--out", out, "--report", "--archive",
                                                 str(work)], ""),
        ("a study's --archive under a file", ["study", str(study), "--out", out, "--report", "--archive",
                                             str(work / "a_file" / "archive.json")], ""),
        ("a recipe given to study", ["study", str(recipe), "--status"], ""),
        ("a study given to train", ["train", str(study)], ""),
        ("the study named after --only", ["study", "--only", "plain", str(study), "--status"], ""),
        ("--status of a study whose runs would be refused", ["study", str(study), "--out", out, "--status",
                                                             "--set", "data.batch_size=0"], ""),
    ]


def session32_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-second session's rough edges: a bad value in an overlay recipe, a misspelt section, the other
    task's setting, a blank sentence, and what a run without progress bars logs each epoch."""
    overlay = work / "overlay.yaml"
    overlay.write_text("data:\n  batch_size: 0\n")
    model = str(work / "runs/vae/model")
    return [
        ("a bad value in an overlay recipe", train(work, "x", p["corpus"], "--config", str(overlay)), ""),
        ("--model.encodr.hidden_dim 8", train(work, "x", p["corpus"], "--model.encodr.hidden_dim", "8"), ""),
        ("--data.max_pairs 8 on a sentence run", train(work, "x", p["corpus"], "--data.max_pairs", "8"), ""),
        ("reconstruct a blank sentence", ["reconstruct", model, "w1 w2", " "], ""),
        ("interpolate from a blank sentence", ["interpolate", model, "", "w1 w2"], ""),
        ("an epoch's line without progress bars", train(work, "quiet", p["corpus"]), "epoch 1: valid"),
    ]


def session33_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-third session's walkthrough of the dialogue task: its report's settings checked before training,
    evaluate's --eval.KEY VALUE, a CVAE's model folder alone, respond on a sentence model, a remedy that needs
    N(0, I), and a sentence setting in a dialogue study."""
    cvae = [str(REPO / "textvae/recipes/dailydialog/cvae.yaml"), "--out_dir", str(work / "runs"),
            "--data.name", str(p["dialogues"])]
    study = work / "dialogue_study.yaml"
    study.write_text(f"base: {REPO / 'textvae/recipes/dailydialog/cvae.yaml'}\nvariants: {{plain: {{}}}}\n")
    alone = work / "cvae_model"  # outside its run folder, which a run's own model/ is not
    shutil.copytree(work / "runs/cvae/model", alone, dirs_exist_ok=True)
    return [
        ("a misspelt eval.method", ["train", *cvae, "--name", "y", "--eval.method", "nucleus"], ""),
        ("eval.temperature with greedy decoding", ["train", *cvae, "--name", "y", "--eval.temperature", "0.5"], ""),
        ("delta_vae on the dialogue CVAE", ["train", *cvae, "--name", "y", "--objective.remedies",
                                           '[{"name": "delta_vae", "delta": 0.1}]'], ""),
        ("evaluate a dialogue run with its eval section changed", [
            "evaluate", str(work / "runs/cvae"), "--eval.max_pairs", "2", "--iw-samples", "0"], "results written"),
        ("evaluate a CVAE's model folder alone (a copy)", ["evaluate", str(alone)], ""),
        ("respond with a sentence model", ["respond", str(work / "runs/vae"), "--context", "w1 w2"], ""),
        ("a sentence setting in a dialogue study's --set", ["study", str(study), "--status", "--set",
                                                            "data.max_sentences=9"], ""),
    ]


def session34_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-fourth session's: one check of the responses' settings, a model made with a KL schedule of one's
    own, sampled where that plugin is not loaded, and a data.data_dir that the corpus would not read."""
    (work / "my_schedule.py").write_text(
        "from textvae.schedules import register_schedule\n\n\n@register_schedule('halfway')\n"
        "def halfway():\n    return lambda step: 0.5\n")
    status, line = cli(*train(work, "own_schedule", p["corpus"], "--objective.kl_schedule", "{name: halfway}"),
                       work=work, env=dict(os.environ, TEXTVAE_PLUGINS="my_schedule"))
    if status != 0:
        raise SystemExit(f"the run with its own KL schedule did not train: {line}")
    return [
        ("respond --temperature with greedy decoding", ["respond", str(work / "runs/cvae"), "--context", "hi",
                                                        "--temperature", "0.5"], ""),
        ("sample a model made with a KL schedule of one's own, the plugin not loaded",
         ["sample", str(work / "runs/own_schedule"), "--n", "2"], "made with plugin"),
        ("a data.data_dir with the synthetic corpus", train(work, "x", "synthetic", "--data.data_dir", str(work)), ""),
    ]


def session35_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-fifth session's: a dialogue run's data.data_dir beside a folder of pairs, and a study given a larger
    budget whose archive holds a run that its plateau schedule ended (its folder gone)."""
    cvae = [str(REPO / "textvae/recipes/dailydialog/cvae.yaml"), "--out_dir", str(work / "runs"),
            "--data.name", str(p["dialogues"])]
    study, out, archive = work / "plateau_study.yaml", work / "plateau_runs", work / "plateau_archive.json"
    # lr 1e-30 leaves the weights as they were: the second epoch is a bad one, and max_decays 0 ends the run there
    study.write_text(f"data: {{name: {p['corpus']}, batch_size: 20}}\nbudget: {{epochs: 3}}\noverrides:\n"
                     "  model: {emb_dim: 8, latent_dim: 2, encoder: {hidden_dim: 8}, decoder: {hidden_dim: 8}}\n"
                     "  train: {iw_samples_final: 4, threads: 1, progress: false, tensorboard: false}\n"
                     "  optim: {lr: 1.0e-30, decay_start_epoch: 0, decay_patience: 1, max_decays: 0}\n"
                     "variants: {plain: {}}\n")
    status, line = cli("study", str(study), "--out", str(out), "--archive", str(archive), work=work)
    if status != 0:
        raise SystemExit(f"the plateau study did not train: {line}")
    shutil.rmtree(out)
    return [
        ("a dialogue run's data.data_dir beside a folder of pairs", ["train", *cvae, "--name", "y", "--data.data_dir",
                                                                     str(work)], ""),
        ("a larger budget, the archived run ended by its plateau schedule", [
            "study", str(study), "--out", str(out), "--archive", str(archive), "--status", "--set", "train.epochs=10"],
         "plain/seed1"),
    ]


def session36_probes(work: Path, p: dict[str, Path]) -> list[tuple]:
    """The thirty-sixth session's: a remedy of the user's own that fails at the run's first step, then the same
    command once it is mended (it used to answer "already holds a run; pass --resume" for a run that trained
    nothing); a study's --status of runs whose KL and MI round to a negative zero (it printed "KL -0.00")."""
    remedy = ("import torch\nfrom textvae.remedies import Remedy, register_remedy\n\n\n"
              "@register_remedy('my_kl')\nclass MyKL(Remedy):\n    replaces_kl = True\n\n"
              "    def kl_term(self, kl, beta, step):\n        return {body}\n")
    (work / "crashing_parts.py").write_text(remedy.format(body="beta * kl.sum(-1, keepdims=True)  # [B, 1]: a bug"))
    (work / "mended_parts.py").write_text(remedy.format(body="beta * kl.sum(-1)"))
    mine = train(work, "mine", p["corpus"], "--objective.remedies", "[{name: my_kl}]")
    study, out = work / "zero_study.yaml", work / "zero_runs"
    # lr 1e-30 leaves the weights as they were: KL and MI of an untrained encoder, estimates around zero
    study.write_text(f"data: {{name: {p['corpus']}, batch_size: 20}}\nbudget: {{epochs: 1}}\noverrides:\n"
                     "  model: {emb_dim: 8, latent_dim: 2, encoder: {hidden_dim: 8}, decoder: {hidden_dim: 8}}\n"
                     "  train: {iw_samples_final: 4, threads: 1, progress: false, tensorboard: false}\n"
                     "  optim: {lr: 1.0e-30}\nvariants: {plain: {}}\n")
    status, line = cli("study", str(study), "--out", str(out), work=work)
    if status != 0:
        raise SystemExit(f"the study of an untrained model did not train: {line}")
    return [
        ("a remedy of one's own that fails at the first step", mine, "",
         dict(os.environ, TEXTVAE_PLUGINS="crashing_parts")),
        ("the same command, the remedy mended", mine, "test report:", dict(os.environ, TEXTVAE_PLUGINS="mended_parts")),
        ("--status of a run whose KL and MI round to zero", ["study", str(study), "--out", str(out), "--status"],
         "plain/seed1"),
    ]


GROUPS = {"session27": session27_probes, "session28": session28_probes, "session29": session29_probes,
          "session30": session30_probes, "session31": session31_probes, "session32": session32_probes,
          "session33": session33_probes, "session34": session34_probes, "session35": session35_probes,
          "session36": session36_probes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/textvae-probes")
    ap.add_argument("--group", choices=sorted(GROUPS), help="only the probes one session added (default: all)")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = setup(work)
    cases = GROUPS[args.group](work, paths) if args.group else probes(work, paths)
    full = disk_full_probe(work) if not args.group else None
    if not args.group:
        cases.append((*full, "") if full else ("the disk fills while a checkpoint is written", [], "skipped"))
    try:
        for what, argv, want, *env in cases:
            status, line = cli(*argv, work=work, want=want, env=env[0] if env else None) if argv else \
                ("-", "skipped: cannot mount a tmpfs here")
            print(f"{what}\n    exit {status}: {line}")
    finally:
        for mount in ("readonly", "small"):
            subprocess.run(["umount", str(work / mount)], capture_output=True)


if __name__ == "__main__":
    main()
