"""The ``textvae`` command line.

    textvae train [RECIPE] [--section.key value ...] [--resume]    RECIPE: a YAML file or a packaged name (ptb/vae)
    textvae evaluate RUN_OR_MODEL [--data NAME] [--split test] [--iw-samples 500]
    textvae sample MODEL [--n 10] [--method sample] [--temperature 1.0]
    textvae reconstruct MODEL "a sentence" ... [--file FILE]
    textvae interpolate MODEL "first sentence" "second sentence" [--steps 5]
    textvae respond RUN --context "hi , how are you ?" [--context ...] [--n 5]   (dialogue CVAE)
    textvae study STUDY [--jobs N]  STUDY: a YAML file or a packaged name (cpu_smoke)
    textvae list [KIND [NAME]]      every registered part (remedies, decoders, metrics, ...), recipes, studies
    textvae plot RUN [RUN ...] [--out curves.png]   validation KL, MI, AU and -ELBO during training
    textvae compare RUN [RUN ...]   test figures side by side, with the settings that differ

    textvae --version

Errors in the input are printed as one line (``textvae: error: ...``) with exit status 2;
``textvae COMMAND --help`` lists a command's options.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from textvae.config import COUNT, NON_NEGATIVE, POSITIVE, SEED, Range, check_flags
from textvae.errors import CommandParser, TextVAEError
from textvae.packaged import FOLDERS, find_yaml, packaged_file, packaged_folder, packaged_names, summary
from textvae.plugins import load_plugins
from textvae.pretrained import is_dialogue, load, load_folder, locate, warn_missing_plugins
from textvae.rng import numbered_streams
from textvae.training.signals import PARENT_ENV, take_last_signal

COMMANDS = ("train", "evaluate", "sample", "reconstruct", "interpolate", "respond", "study", "list", "plot", "compare")


def cmd_train(argv: list[str]) -> None:
    from textvae.tasks import run_training
    from textvae.tasks.runconfig import parse_run_config, traced
    from textvae.training.epilogue import run_epilogue
    from textvae.training.signals import stop_with_parent

    stop_with_parent()  # a study's subprocess run: stop (with a checkpoint) when the study dies

    try:  # an error about one setting says which recipe or argument set it
        cfg, resume = parse_run_config(argv)
        if resume and (Path(cfg.out_dir) / cfg.name / "metrics.jsonl").is_file():
            warn_missing_plugins(Path(cfg.out_dir) / cfg.name)
        report = run_training(cfg, resume=resume)
    except TextVAEError as e:
        raise traced(e, argv) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the report; one prints it
        print(format_report(report))
        print(run_epilogue(Path(cfg.out_dir) / cfg.name, report, cfg))


def format_report(report: dict[str, Any]) -> str:
    from textvae.metrics import format_table

    return format_table(report)


def folder_argument(path: str) -> str:
    """A run or model folder as a command takes it; its settings file (``config.yaml``, ``config.json``)
    names the folder it is in."""
    p = Path(path)
    return str(p.parent) if p.is_file() and p.name in ("config.yaml", "config.json") else path


def evaluate_parser() -> argparse.ArgumentParser:
    from textvae.config import TrainConfig
    from textvae.metrics.likelihood import DEFAULT_MAX_TOKENS

    ap = CommandParser(prog="textvae evaluate", description="Evaluate a trained model on a split.",
                       epilog=f"A dialogue run is evaluated by its task's own report, as its test report was: of "
                              f"these options it takes --split, --iw-samples, --device, --precision (its own) and "
                              f"--json; --{REPORT_SECTION}.KEY VALUE changes a setting of its recipe's "
                              f"{REPORT_SECTION} section (e.g. --{REPORT_SECTION}.max_pairs 300, "
                              f"--{REPORT_SECTION}.method sample).")
    ap.add_argument("model", type=folder_argument, help="run folder or saved model folder (or its config file)")
    ap.add_argument("--data", help="corpus name or folder, read whole (default: the run's corpus, as the run read "
                                   "it), or one text file, evaluated whole")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--iw-samples", type=int, default=None,
                    help="importance samples K for IW-NLL (0 = skip); default: the run's train.iw_samples_final, as "
                         f"its test report ({TrainConfig.iw_samples_final} for a model folder)")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="IW decoder budget: samples x sentences x length per decoder call "
                         f"(default: {DEFAULT_MAX_TOKENS['cpu']} on the CPU, {DEFAULT_MAX_TOKENS['cuda']} on a GPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help=f"sentences per batch; default: the run's data.eval_batch_size, as its test report "
                         f"({_MODEL_FOLDER_BATCH} for a model folder)")
    ap.add_argument("--max-sentences", type=int, default=None, help="evaluate this many, spread over the split")
    ap.add_argument("--gen-sentences", type=int, default=500,
                    help="sentences reconstructed, and prior samples drawn, for the generation metrics")
    ap.add_argument("--no-generation", action="store_true", help="skip the generation metrics")
    ap.add_argument("--max-len", type=int, default=None,
                    help="decoding steps, </s> included (default: the split's longest sentence)")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="latent probe with N labelled train sentences per class (labelled data only)")
    ap.add_argument("--probe-draws", type=int, default=5, help="random labelled subsets the probe averages")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prior samples and the probe's draws")
    ap.add_argument("--json", help="write the results here (default: <run or model folder>/eval_<split>.json, with "
                                   "--data CORPUS and --max-sentences eval_<data>_<split>_n<N>.json, with --data FILE "
                                   "eval_<file name>.json); "
                                   "until then the IW pass keeps its finished batches beside it "
                                   "(<name>.iw_progress.safetensors), so the same command resumes a stopped one")
    ap.add_argument("--device", help="cpu, cuda, cuda:N or auto (a GPU where there is one); default: the run's "
                                     "train.device, so that its test report is reproduced (cpu for a model folder)")
    ap.add_argument("--precision", choices=["fp32", "bf16"],
                    help="bf16: figures under bfloat16 autocast (recurrent and output GEMMs in bf16; posterior "
                         "head, KL and softmax statistics in fp32; faster IW-NLL on a CPU with bf16 units); "
                         "default: the run's train.precision, so that its test report is reproduced (fp32 for a "
                         "model folder); recorded in the results")
    return ap


def cmd_evaluate(argv: list[str]) -> None:
    """One table and one JSON file of every figure of a model on a split: ELBO terms with the KL
    per dimension, IW-NLL / IW-PPL, both MI estimators, active units and the collapse diagnosis,
    the registered text metrics of generated texts (reconstruction BLEU; distinct-1/2, self-BLEU and
    length of prior samples) and, with
    ``--probe N``, the latent probe (BN-VAE). ``--max-sentences`` evaluates an evenly spread
    subset of the split (the first sentences would be the shortest in evaluation order)."""
    from textvae.config import TrainConfig
    from textvae.metrics import check_text_metrics
    from textvae.models.native import native_kernels
    from textvae.training.denormals import denormals_flushed
    from textvae.training.train import freed_memory_kept
    from textvae.tasks.runconfig import DEFAULT_TASK
    from textvae.tasks.sentences import split_figures, truth_figures

    argv, overrides = report_overrides(argv)
    args = evaluate_parser().parse_args(argv)
    check_flags(args, {"iw_samples": NON_NEGATIVE, "probe": NON_NEGATIVE, "max_tokens": COUNT, "batch_size": COUNT,
                       "probe_draws": COUNT, "max_sentences": COUNT, "max_len": COUNT, "seed": SEED})
    if not args.no_generation and args.gen_sentences < 2:
        raise TextVAEError("--gen-sentences must be >= 2 (self-BLEU compares samples with each other)")
    folder, run_dir, run_cfg = locate(args.model)
    device = evaluation_device(args.device, run_cfg or {})
    task = (run_cfg or {}).get("task", DEFAULT_TASK)
    if run_dir is not None and task != DEFAULT_TASK:  # the other tasks' own test report; the sentence VAE's below
        return evaluate_task_run(args, task, device, run_dir, run_cfg, overrides)
    check_sentence_model(folder, overrides)
    as_the_report(args, run_cfg, device)
    warn_if_training(run_dir)
    model, tokenizer = load_folder(folder)
    data_cfg, data = evaluation_data(args, run_cfg, tokenizer)
    if args.probe:  # before the evaluation pass, which can take long, not after it
        check_probe(model, data, args.probe)
    if not args.no_generation:
        check_text_metrics(instead="or --no-generation")
    split = data.splits[args.split]
    model.to(device)
    n_eval = evaluated_count(args, len(split), model.is_lm, data_cfg.name)
    unknown = announce_evaluation(args, split, n_eval, model)
    out = results_file(args, run_dir or Path(args.model))
    progress = evaluation_progress(args, folder, data_cfg, out, device)

    def batches(limit: int) -> Any:
        """A fresh iterator over ``limit`` sentences of the split, in evaluation order, on the device."""
        return lambda: (b.to(device) for b in split.batches(args.batch_size, limit=limit))

    # freed memory kept, as in the training loop: the IW pass makes and frees the same logits chunks
    # thousands of times, which are then not page-faulted in afresh each time; denormals as the run's
    # own test report computed them (train.flush_denormals), and its C++ kernels or not (train.native_kernels)
    run_train = (run_cfg or {}).get("train") or {}
    flush = run_train.get("flush_denormals", TrainConfig.flush_denormals)
    native = run_train.get("native_kernels", TrainConfig.native_kernels)
    with freed_memory_kept(), denormals_flushed(flush), native_kernels(native):
        results = split_figures(model, split, device, args.batch_size, args.iw_samples, args.precision,
                                f"evaluate {args.split}", limit=n_eval, max_tokens=args.max_tokens, per_dim=True,
                                iw_progress=progress)
    results["unk_rate"] = unknown
    steps = run_steps(run_dir) if run_dir is not None else None
    if steps is not None:  # the table's verdict: an untrained model's posterior says nothing about collapse
        results["train_steps"] = float(steps)
    if data.truth is not None:
        results.update(truth_figures(data.truth, split, split.subset(n_eval)))
    examples: dict[str, Any] = {}
    if not args.no_generation:
        examples = generation_figures(args, model, tokenizer, batches(min(args.gen_sentences, n_eval)),
                                      int(split.lengths.max()) - 1, results)
    if args.probe:
        results.update(_probe_figures(model, data, args, batches(n_eval), device))
    print(format_report(results))
    record = {"model": str(args.model), "data": data_cfg.name, "split": args.split, "precision": args.precision,
              **results, "examples": examples}
    out.write_text(json.dumps(record, indent=2))
    print(f"results written to {out}")
    if progress is not None:
        progress.path.unlink(missing_ok=True)


def evaluated_count(args: argparse.Namespace, n_split: int, is_lm: bool, data_name: str) -> int:
    """The sentences ``evaluate`` reads of a split of ``n_split``: ``--max-sentences`` (dropped where it asks for
    the whole split, so that the results file is named as the whole split's), at least 2 for a latent model,
    whose AU and MI need them (said before the IW pass, not after it)."""
    n_eval = min(args.max_sentences or n_split, n_split)
    if args.max_sentences is not None and args.max_sentences >= n_split:
        args.max_sentences = None
    if n_eval < 2 and not is_lm:
        raise TextVAEError(f"{n_eval} sentence(s) to evaluate ({args.split} of {data_name}): the latent figures "
                           f"(AU, MI) need at least 2")
    return n_eval


def warn_if_training(run_dir: Optional[Path]) -> None:
    """A warning where another process trains the run: evaluate then reads its best model so far."""
    from textvae.files import lock_holder

    training = lock_holder(run_dir) if run_dir is not None else None
    if training is not None:
        logging.getLogger("textvae").warning(
            "%s is training (pid %s): this evaluates its best model so far, saved at an epoch's end, not the model "
            "its test report will evaluate", run_dir, training)


def generation_figures(args: argparse.Namespace, model: Any, tokenizer: Any, batches: Any, longest: int,
                       results: dict[str, Any]) -> dict[str, Any]:
    """The registered text metrics of the model's reconstructions of ``batches`` and of its prior samples, added to
    ``results``; returns the first texts of each, for the JSON. Decoding runs to ``--max-len`` steps, else
    ``longest`` (the split's longest sentence, ``</s>`` included)."""
    from textvae.metrics import generate_texts, score_texts

    texts = generate_texts(model, tokenizer, batches, args.gen_sentences, args.max_len or longest, seed=args.seed,
                           batch_size=args.batch_size)
    results.update(score_texts(texts))
    return {"reconstructions": [list(p) for p in texts.reconstructions[:_EXAMPLES]],
            "samples": texts.samples[:_EXAMPLES]}


_MODEL_FOLDER_BATCH = 64  # evaluate's batch for a model folder, which has no run settings


def as_the_report(args: argparse.Namespace, run_cfg: Optional[dict], device: torch.device) -> None:
    """``--iw-samples``, ``--batch-size`` and ``--precision`` not given: the run's (``train.iw_samples_final``,
    ``data.eval_batch_size``, ``train.precision``), with which its test report drew and rounded the same
    numbers; a model folder's defaults without a run. A one-line error for a precision ``device`` lacks."""
    from textvae.config import DataConfig, TrainConfig
    from textvae.training.train import bf16_supported, check_precision

    run_cfg = run_cfg or {}
    if args.iw_samples is None:
        args.iw_samples = (run_cfg.get("train") or {}).get("iw_samples_final", TrainConfig.iw_samples_final)
    if args.precision is None:
        args.precision = (run_cfg.get("train") or {}).get("precision", TrainConfig.precision)
        if args.precision == "bf16" and not bf16_supported(device):
            raise TextVAEError(f"{args.model} trained in bf16 (train.precision), which {device} here cannot compute "
                               f"(no bfloat16 arithmetic); evaluate it with --precision fp32 (figures that differ "
                               f"from its test report by rounding)")
    check_precision(device, args.precision, "--precision")
    if args.batch_size is None:
        args.batch_size = ((run_cfg.get("data") or {}).get("eval_batch_size", DataConfig.eval_batch_size) if run_cfg
                           else _MODEL_FOLDER_BATCH)


def evaluation_device(given: Optional[str], run_cfg: dict[str, Any]) -> torch.device:
    """``--device``, else the run's ``train.device`` (its test report's device, which evaluate reproduces), else
    the CPU; a one-line error for one this machine lacks."""
    from textvae.training.train import resolve_device

    try:
        return resolve_device(given or (run_cfg.get("train") or {}).get("device", "cpu"),
                              "--device" if given else "the run's train.device")
    except TextVAEError as e:
        raise TextVAEError(f"{e}{'' if given else '; choose another with --device'}") from None


REPORT_SECTION = "eval"  # the section of a task's configuration that its test report reads (the dialogue task's)


def report_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(evaluate's own arguments, the ``--eval.KEY VALUE`` / ``--eval.KEY=VALUE`` overrides of a task run's report
    settings, as ``eval.KEY=VALUE``) of ``argv``, taken apart before argparse reads it: a value of one would
    otherwise be read as the model's folder. A key without its value (last, or before another option) stays
    ``eval.KEY``, for the run's parser to refuse."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith(f"--{REPORT_SECTION}."):
            own.append(arg)
        elif "=" in arg or i + 1 == len(argv) or argv[i + 1].startswith("--"):
            overrides.append(arg[2:])
        else:
            overrides.append(f"{arg[2:]}={argv[i + 1]}")
            i += 1
        i += 1
    return own, overrides


def check_sentence_model(folder: Path, overrides: list[str]) -> None:
    """What a sentence model's evaluation refuses: a dialogue CVAE's model folder without its run (whose recipe
    decides its report), and the overrides of a task run's report section."""
    if is_dialogue(folder):
        raise TextVAEError(f"{folder}: a dialogue CVAE's model folder on its own; `textvae evaluate` takes its run "
                           f"folder, whose recipe's eval section decides the report (`textvae respond` answers a "
                           f"context with the model folder alone)")
    if overrides:
        raise TextVAEError(f"--{overrides[0].split('=')[0]}: a setting of a dialogue run's report (its recipe's "
                           f"{REPORT_SECTION} section); a sentence model's evaluation takes the options that "
                           f"textvae evaluate --help lists")


def evaluate_task_run(args: argparse.Namespace, task_name: str, device: torch.device, run_dir: Path,
                      run_cfg: dict[str, Any], overrides: list[str]) -> None:
    """``evaluate`` of a run of another task (the dialogue CVAE): its task's own report (its registered
    metrics and text metrics, with its recipe's evaluation settings changed by ``overrides``, ``--eval.KEY VALUE``,
    in its train.precision) on ``--split``, with K = ``--iw-samples``; the options of a sentence model's evaluation
    are refused rather than ignored."""
    from textvae.config import TrainConfig, check_ranges
    from textvae.tasks import create_task
    from textvae.tasks.runconfig import parse_run_config
    from textvae.training.train import evaluation_rng

    # what the task's report takes from the command line: the run, the split, K, the device, the results file
    own = {"model", "split", "iw_samples", "device", "json"}
    precision = (run_cfg.get("train") or {}).get("precision", TrainConfig.precision)
    if args.precision not in (None, precision):
        raise TextVAEError(f"--precision {args.precision}: a {task_name} run is evaluated in its own train.precision "
                           f"({precision}), as its test report was")
    defaults = evaluate_parser().parse_args([args.model])
    given = [name for name, value in vars(args).items()
             if name not in own | {"precision"} and value != getattr(defaults, name)]
    if given:
        raise TextVAEError(f"--{given[0].replace('_', '-')}: an option of a sentence model's evaluation; a {task_name} "
                           f"run is evaluated with its recipe's settings (its {REPORT_SECTION} section), which "
                           f"--{REPORT_SECTION}.KEY VALUE changes")
    cfg, _ = parse_run_config([str(run_dir / "config.yaml"), *(f"--{o}" for o in overrides)])
    check_ranges(cfg)  # an override's value, as train checks the recipe's
    if args.iw_samples is not None:  # else the run's, as its test report
        cfg.train.iw_samples_final = args.iw_samples
    cfg.train.device = str(device)  # where the report runs, whatever device the run trained on
    task = create_task(cfg)
    task.check()  # the packages its text metrics need, before any work
    out = results_file(args, run_dir, overrides)
    progress = progress_file(out)  # a stopped pass resumes there
    kept = task.iw_progress(progress, run_dir / "model", device, args.split)
    with evaluation_rng(device):  # as the run's own report drew its numbers
        results = task.test_report(task.load_data(), run_dir / "model", device, kept, split=args.split)
    print(format_report(results))
    changed = {"overrides": overrides} if overrides else {}
    out.write_text(json.dumps({"model": str(args.model), "task": task_name, "split": args.split, **changed, **results},
                              indent=2))
    print(f"results written to {out}")
    progress.unlink(missing_ok=True)


def evaluation_data(args: argparse.Namespace, run_cfg: Optional[dict], tokenizer: Any) -> tuple[Any, Any]:
    """(data settings, data) of ``evaluate``, read with the model's tokenizer: the run's corpus as the run read
    it (its ``data.max_sentences`` cap included, so that its test report is reproduced), or ``--data``, another
    corpus (or the same one, each split whole), or one text file, evaluated whole (``--split`` other than test refused)."""
    from textvae.config import DataConfig, from_dict
    from textvae.data.datasets import is_text_file, load_dataset, load_text_file

    data_cfg = from_dict(DataConfig, run_cfg["data"]) if run_cfg else DataConfig()
    if args.data is None and run_cfg is None:
        raise TextVAEError("--data is needed when evaluating a model folder rather than a run folder")
    if args.data is not None:
        data_cfg.name, data_cfg.max_sentences = args.data, None
    if args.data is not None and is_text_file(args.data):
        if args.split != "test":  # the default: a file stands as the test split
            raise TextVAEError(f"--split {args.split}: --data {args.data} is one text file, evaluated whole; --split "
                               f"chooses a split of a corpus")
        return data_cfg, load_text_file(data_cfg, tokenizer, args.split)
    if data_cfg.data_dir and not Path(data_cfg.data_dir).expanduser().is_dir():  # a run made on another machine
        logging.getLogger("textvae").warning("the run's data.data_dir %s is not here; the corpus is looked for as "
                                             "without it (TEXTVAE_DATA_DIR, the cache)", data_cfg.data_dir)
        data_cfg.data_dir = None
    try:
        data = load_dataset(data_cfg, tokenizer=tokenizer)
    except TextVAEError as e:
        if args.data is None:
            raise
        # the reader names the setting, data.name; the user gave --data
        raise TextVAEError(str(e).replace(f"data.name {args.data!r}", f"--data {args.data}", 1)) from None
    if data_cfg.max_sentences is not None:
        logging.getLogger("textvae").info(
            "the run read at most %d sentences of each split (data.max_sentences), and so does this evaluation, as "
            "its test report did (--data %s reads each split whole)", data_cfg.max_sentences, data_cfg.name)
    return data_cfg, data


def results_file(args: argparse.Namespace, folder: Path, overrides: Sequence[str] = ()) -> Path:
    """Where ``evaluate`` writes its results (``--json``, default :func:`default_results_name` in ``folder``: the
    run's, or the model folder given), its folder made and checked before the pass, a long one, rather than
    after it."""
    out = Path(args.json) if args.json else folder / default_results_name(args, overrides)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError where a file stands in the way, whose strerror would mislead
        reason = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise TextVAEError(f"cannot write the results file {out}: {reason}; choose another --json") from None
    try:  # written to once now: a read-only or pseudo file system refuses it here, not after the pass
        if out.exists():  # as it is, without creating anything (a FIFO does not block)
            os.close(os.open(out, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        else:  # a file of its own beside it, so that nothing of the user's is made or removed
            tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.").close()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise TextVAEError(f"cannot write the results file {out}: {reason}; choose another --json") from None
    return out


def progress_file(out: Path) -> Path:
    """Where an evaluation whose results go to ``out`` keeps its IW pass's finished batches until they do."""
    return out.with_name(f"{out.stem}.iw_progress.safetensors")


def default_results_name(args: argparse.Namespace, overrides: Sequence[str] = ()) -> str:
    """``eval_<split>.json`` for the run's own corpus as it read it; another corpus (``--data``), a subset
    (``--max-sentences``) or a dialogue run's report settings (``overrides``, ``eval.KEY=VALUE``) are named in it,
    ``eval_<data>_<split>_n<N>.json``, ``eval_<split>_<KEY>-<VALUE>.json``, so that evaluating them
    does not overwrite the figures of the whole split as the run reports it; a text file, evaluated whole, by its
    file name alone (``eval_<name>.txt.json``: a file named test.txt is not the test split)."""
    from textvae.data.datasets import is_text_file

    text_file = bool(args.data) and is_text_file(args.data)
    given = (Path(args.data).name or args.data) if args.data else None
    data = [re.sub(r"[^\w.-]+", "_", given)] if given else []
    subset = [f"n{args.max_sentences}"] if args.max_sentences else []
    settings = [re.sub(r"[^\w.-]+", "_", o.removeprefix(f"{REPORT_SECTION}.").replace("=", "-")) for o in overrides]
    return "_".join(["eval", *data, *([] if text_file else [args.split]), *subset, *settings]) + ".json"


def evaluation_progress(args: argparse.Namespace, folder: Path, data_cfg: Any, out: Path,
                        device: torch.device) -> Any:
    """Where the IW pass of the model saved in ``folder`` keeps the batches it has finished: beside the
    results file ``out`` (``eval_test.iw_progress.safetensors``), removed once the results are written. An evaluation
    stopped part-way (at K = 500 a long pass on a CPU) resumes there when the same command runs
    again, with the figures of a pass never stopped (:class:`textvae.metrics.IWProgress`); the key
    (weights, K, precision, device type, data, split, batch size, subset, decoder budget) keeps a file
    left by other settings from being used. None when there is no IW pass."""
    import dataclasses

    from textvae.metrics import IWProgress
    from textvae.models.textvae import WEIGHTS_FILE

    if args.iw_samples == 0:
        return None
    key = IWProgress.key_of(folder / WEIGHTS_FILE, samples=args.iw_samples,
                            precision=args.precision, device=device.type,
                            data=dataclasses.asdict(data_cfg), split=args.split, batch_size=args.batch_size,
                            max_sentences=args.max_sentences, max_tokens=args.max_tokens)
    progress = IWProgress(progress_file(out), key)
    if progress.batches:
        print(f"resuming the IW pass from {progress.path}: {len(progress.batches)} batches done")
    return progress


_EXAMPLES = 20  # reconstructions and samples kept in the JSON
_UNK_WARNING = 0.05  # an <unk> rate above which PPL and BLEU describe another text than the one given


def announce_evaluation(args: argparse.Namespace, split: Any, n_eval: int, model: Any) -> float:
    """Say before the work starts what it will cost (sentences, tokens, importance samples K) and
    how much of the text the model cannot read; returns that <unk> rate."""
    from textvae.data.datasets import is_text_file
    from textvae.data.tokenization import unk_rate
    from textvae.metrics import iw_description, iw_samples_for
    from textvae.reduction import token_counts

    positions = split.subset(n_eval)
    n_tokens = int(token_counts(split.lengths[positions]).sum())
    k = iw_samples_for(model, args.iw_samples)
    cost = (f"{iw_description(model, args.iw_samples)} decodes {k * n_tokens:,} tokens" if k
            else "no IW-NLL (--iw-samples 0)")
    log = logging.getLogger("textvae")
    source = f"sentences of {args.data}" if args.data is not None and is_text_file(args.data) else \
        f"{args.split} sentences"
    log.info("evaluating %d of %d %s (%d tokens) in %s: %s%s", n_eval, len(split), source, n_tokens,
             args.precision, cost,
             "" if args.no_generation else f", then {min(args.gen_sentences, n_eval)} reconstructions and "
                                           f"{args.gen_sentences} prior samples")
    unknown = unk_rate(split.ids[i] for i in positions)
    if unknown > _UNK_WARNING:
        log.warning("%.2f%% of the words of the %s are <unk> (outside the model's vocabulary): NLL, PPL and BLEU "
                    "score predicting <unk>, not those words", 100 * unknown, source)
    return unknown


def run_steps(run_dir: Path) -> Optional[int]:
    """The training steps of a run as its log records them (the last record's step); ``None``
    when the run has no log."""
    from textvae.training.logger import read_jsonl

    records = read_jsonl(run_dir / "metrics.jsonl")
    return max(int(r["step"]) for r in records) if records else None


def check_probe(model: Any, data: Any, n_per_class: int = 1) -> None:
    """The latent probe needs a latent space, scikit-learn and ``n_per_class`` labelled training sentences
    of every class: checked before the evaluation pass, a long one, not after it."""
    if model.is_lm:
        raise TextVAEError("--probe: this model is a language model: it has no latent space")
    if "train" not in data.splits or data.splits["train"].labels is None:
        raise TextVAEError(f"--probe needs a labelled corpus such as yelp_short; {data.name} has no labels")
    if importlib.util.find_spec("sklearn") is None:
        raise TextVAEError("--probe needs scikit-learn: pip install 'textvae[eval]'")
    counts = Counter(np.asarray(data.splits["train"].labels).tolist())  # Python values: as a user writes them
    label, fewest = min(counts.items(), key=lambda item: item[1])
    if n_per_class > fewest:
        raise TextVAEError(f"--probe {n_per_class}: class {label!r} has only {fewest} labelled training sentences; "
                           f"use --probe {fewest} or fewer")


def _probe_figures(model: Any, data: Any, args: argparse.Namespace, test_batches: Any,
                   device: torch.device) -> dict[str, Any]:
    """Latent probe: ``args.probe`` labelled train sentences per class, ``args.probe_draws`` draws,
    tested on the evaluated sentences (:func:`check_probe` has vetted model and data)."""
    import numpy as np

    from textvae.metrics.probe import probe_model

    train = data.splits["train"]

    def train_batches(positions: np.ndarray) -> Any:
        positions = positions[np.argsort(train.lengths[positions], kind="stable")]  # less padding
        for i in range(0, len(positions), args.batch_size):
            yield train.batch(positions[i:i + args.batch_size]).to(device)

    result = probe_model(model, train.labels, train_batches, test_batches, args.probe, args.probe_draws, args.seed)
    return {"probe_acc": result.mean, "probe_acc_std": result.std, "probe_n_per_class": float(args.probe),
            "probe_draws": float(args.probe_draws), "probe_accuracies": result.accuracies}


DECODING_RANGES = {"seed": SEED, "temperature": POSITIVE, "top_k": NON_NEGATIVE, "top_p": Range(above=0, most=1),
                   "beam_size": COUNT, "max_len": COUNT}
# each method's own options and their defaults; given to another method they are an error, not ignored
METHOD_OPTIONS = {"sample": {"temperature": 1.0, "top_k": 0, "top_p": 1.0}, "beam": {"beam_size": 5}}


def decoding_args(ap: argparse.ArgumentParser, method: str = "greedy") -> None:
    ap.add_argument("--method", default=method, choices=["greedy", "sample", "beam"], help=f"(default: {method})")
    ap.add_argument("--temperature", type=float, help="softmax temperature, --method sample (default: 1)")
    ap.add_argument("--top-k", type=int, help="sample among the k likeliest words, --method sample (default: 0, all)")
    ap.add_argument("--top-p", type=float, help="nucleus sampling mass, --method sample (default: 1, all)")
    ap.add_argument("--beam-size", type=int, help="--method beam (default: 5)")
    ap.add_argument("--max-len", type=int, default=50, help="decoding steps, </s> included (default: 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")


def check_decoding(args: argparse.Namespace, ranges: Optional[dict[str, Range]] = None) -> None:
    """The decoding flags' one-line errors (out of range, or another method's), before a model is loaded."""
    check_flags(args, {**(ranges or {}), **DECODING_RANGES})
    method_options(args)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.method`` (their defaults where not given); an option of another method given
    is a one-line error, since that method would ignore it."""
    for method, options in METHOD_OPTIONS.items():
        given = [name for name in options if getattr(args, name) is not None]
        if given and method != args.method:
            flag = "--" + given[0].replace("_", "-")
            raise TextVAEError(f"{flag} is an option of --method {method}, and --method {args.method} would ignore it")
    own = METHOD_OPTIONS.get(args.method, {})
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in own.items()}


def decode(model: Any, tokenizer: Any, z: Optional[torch.Tensor], args: argparse.Namespace, n: int,
           streams: Optional[list[torch.Generator]] = None) -> list[str]:
    """The sentences of ``z``'s rows (``n`` from nothing for the language model); a sampled one's words drawn
    from ``streams`` (one per sentence), else from one stream seeded with ``--seed``."""
    from textvae.models.decoding import decode_sentences

    kw: dict[str, Any] = {"max_len": args.max_len, **method_options(args)}
    if z is None:  # the language model: n sentences from nothing
        kw["batch_size"] = n
    if args.method == "sample":
        kw["generator"] = streams if streams is not None else torch.Generator().manual_seed(args.seed)
    return decode_sentences(model, tokenizer, z, method=args.method, **kw)


def load_sentence_model(path: str) -> Any:
    """The sentence VAE or language model in ``path`` (:func:`textvae.pretrained.load`) for sample, reconstruct
    and interpolate; a dialogue CVAE is refused before its weights are read."""
    from textvae.models.textvae import locate_model

    folder, _ = locate_model(path)
    if is_dialogue(folder):
        raise TextVAEError(f"{folder}: this is a dialogue CVAE, which sample, reconstruct and interpolate do not "
                           f"take (they read sentence VAEs); use `textvae respond RUN --context ...`, and "
                           f"`textvae evaluate RUN` with its run folder")
    return load(path)


def cmd_sample(argv: list[str]) -> None:
    ap = CommandParser(prog="textvae sample", description="Sentences from z ~ p(z) (or from the LM).")
    ap.add_argument("model", type=folder_argument, help="run folder or saved model folder (or its config file)")
    ap.add_argument("--n", type=int, default=10)
    decoding_args(ap, method="sample")  # prior samples decoded greedily would repeat the same few sentences
    args = ap.parse_args(argv)
    check_decoding(args, {"n": COUNT})
    vae = load_sentence_model(args.model)
    model, tokenizer = vae.model, vae.tokenizer
    streams = numbered_streams(args.seed, args.n)  # --n 5 prints --n 3's sentences, then two more
    z = None if model.is_lm else torch.cat([model.sample_prior(1, generator=stream) for stream in streams])
    for line in decode(model, tokenizer, z, args, args.n, streams):
        print(line)


def read_sentences(args: argparse.Namespace) -> list[str]:
    from textvae.data.reading import read_corpus

    sentences = nonblank(args.sentences)
    if args.file:
        sentences += read_corpus(args.file, max_length=10_000)[0]
    if not sentences:
        raise TextVAEError("give sentences as arguments or with --file")
    return sentences


def nonblank(sentences: list[str]) -> list[str]:
    """The sentences given as arguments, refusing a blank one (an unset shell variable, a stray ""): it would
    encode as ``<s> </s>`` and look like a result."""
    for i, sentence in enumerate(sentences, 1):
        if not sentence.strip():
            raise TextVAEError(f"sentence {i} of the arguments is blank; give words (or drop the empty argument)")
    return list(sentences)


def cmd_reconstruct(argv: list[str]) -> None:
    ap = CommandParser(prog="textvae reconstruct", description="Decode the posterior mean of each input.")
    ap.add_argument("model", type=folder_argument, help="run folder or saved model folder (or its config file)")
    ap.add_argument("sentences", nargs="*")
    ap.add_argument("--file")
    decoding_args(ap)
    args = ap.parse_intermixed_args(argv)  # sentences before and after --file F
    check_decoding(args)
    sentences = read_sentences(args)  # a blank one, a missing file: refused before the model is loaded
    vae = load_sentence_model(args.model)
    outputs = decode(vae.model, vae.tokenizer, vae.encode(sentences), args, len(sentences))
    for src, out in zip(sentences, outputs):
        print(f"{src}\t->\t{out}")


def cmd_interpolate(argv: list[str]) -> None:
    from textvae.models.decoding import interpolate

    ap = CommandParser(prog="textvae interpolate",
                                 description="Decode points on the line between two posterior means.")
    ap.add_argument("model", type=folder_argument, help="run folder or saved model folder (or its config file)")
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--steps", type=int, default=5)
    decoding_args(ap)
    args = ap.parse_args(argv)
    check_decoding(args, {"steps": Range(least=2)})
    ends = nonblank([args.first, args.second])
    vae = load_sentence_model(args.model)
    mu = vae.encode(ends)
    path = interpolate(mu[0], mu[1], args.steps)
    for t, line in zip(torch.linspace(0, 1, args.steps).tolist(), decode(vae.model, vae.tokenizer, path, args,
                                                                      args.steps)):
        print(f"{t:.2f}\t{line}")


def cmd_respond(argv: list[str]) -> None:
    from textvae.dialogue.respond import cmd_respond as respond

    respond(argv)


def cmd_study(argv: list[str]) -> None:
    from textvae.study import main as study

    study(argv)


def cmd_list(argv: list[str]) -> None:
    """``textvae list``: every kind with its names; ``list KIND``: each entry's summary and the
    parameters a recipe may set; ``list KIND NAME``: one entry's parameters and whole docstring."""
    ap = CommandParser(prog="textvae list", description=cmd_list.__doc__)
    ap.add_argument("kind", nargs="?", help="a registry, e.g. remedy, decoder, metric (textvae list shows them)")
    ap.add_argument("name", nargs="?", help="one entry of that registry")
    args = ap.parse_args(argv)
    registries = _all_registries()
    if args.kind is None:
        for key, registry in registries.items():
            print(f"{key}: {', '.join(registry.names())}\n    in a recipe: {registry.recipe}")
        for kind in FOLDERS:
            print(f"{kind}: {', '.join(packaged_names(kind))}\n    packaged: textvae list {kind} NAME shows one")
        return
    kind = args.kind.lower().replace(" ", "_")
    if kind in FOLDERS or kind in FOLDERS.values():
        return _list_packaged(next(k for k, v in FOLDERS.items() if kind in (k, v)), args.name)
    singular = kind[:-3] + "y" if kind.endswith("ies") else kind[:-1] if kind.endswith("s") else kind
    registry = registries.get(kind, registries.get(singular))  # "remedies", "decoders" too
    if registry is None:
        raise TextVAEError(f"unknown kind {args.kind!r}; valid: {', '.join([*registries, *FOLDERS])}")
    names = registry.names() if args.name is None else [args.name]
    if args.name is not None:
        registry.get(args.name)  # an unknown name: the registry's error listing the valid ones, before any output
    print(f"{registry.kind} (in a recipe: {registry.recipe})")
    for name in names:
        summary = registry.summary(name)
        own = registry.own_module(name)  # a part of one's own, said so beside textvae's
        label = f"{name} (from {own})" if own else name
        print(f"\n{label}: {summary}" if args.name is None else f"\n{label}")
        if callable(registry.get(name)):  # corpora and metrics are settings-free objects
            params = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}"
                               for k, v in registry.parameters(name).items())
            print(f"    parameters: {params or 'none'}")
        if args.name is not None:
            for text in registry.doc(name):
                if text:
                    print("\n" + text)


def _list_packaged(kind: str, name: Optional[str]) -> None:
    """The packaged recipes or studies, each with its first comment line; one of them whole."""
    if name is None:
        print(f"packaged {FOLDERS[kind]} ({packaged_folder(kind)}): give the name, as textvae "
              f"{'train' if kind == 'recipe' else 'study'} NAME")
        for entry in packaged_names(kind):
            print(f"\n{entry}: {summary(packaged_file(kind, entry))}")
        return
    path = find_yaml(kind, name)
    print(f"# {path}\n{path.read_text()}", end="")


def cmd_plot(argv: list[str]) -> None:
    """``textvae plot RUN [RUN ...]``: KL, MI, active units and -ELBO on validation data during
    training, one line per run, in one PNG (RUN/curves.png for one run, ./curves.png for several)."""
    from textvae.plots import runs_plot

    ap = CommandParser(prog="textvae plot", description=cmd_plot.__doc__)
    ap.add_argument("runs", nargs="+", type=Path,
                    help="run folders (each with its metrics.jsonl), or a study's variant folder (its seeds)")
    ap.add_argument("--out", type=Path, help="the PNG to write")
    args = ap.parse_args(argv)
    out = args.out or (args.runs[0] / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    out = out if out.suffix else out.with_suffix(".png")  # what matplotlib writes for a name without one
    try:
        runs_plot(args.runs, out)
    except OSError as e:
        raise TextVAEError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    print(f"wrote {out}")


def cmd_compare(argv: list[str]) -> None:
    """``textvae compare RUN [RUN ...]``: the test figures of finished runs as a study's table (IW-NLL,
    KL, MI, AU, ...), one row per run, with the settings in which each differs from the first."""
    from textvae.study import compare_runs

    ap = CommandParser(prog="textvae compare", description=cmd_compare.__doc__)
    ap.add_argument("runs", nargs="+", type=Path,
                    help="run folders (runs/NAME), or a study's variant folder (its seeds)")
    print(compare_runs(ap.parse_args(argv).runs))


def _all_registries() -> dict[str, Any]:
    """Every registry by its command-line key (:attr:`Registry.key`); importing the
    tasks imports every part they build, and the synthetic corpora register their kinds."""
    import textvae.data.synthetic  # noqa: F401
    import textvae.tasks  # noqa: F401
    from textvae.registry import list_registries

    return {r.key: r for r in list_registries()}


# what a command stopped part-way (Ctrl-C, SIGTERM) keeps, and how to go on from it
_RESUME_HINTS = {"train": "continue with --resume",  # a run stopped part-way gives its own command
                 "evaluate": "the same command resumes its IW pass from the batches it finished",
                 "study": "the same command resumes it (finished runs are kept, stopped ones resume)"}


def _interrupted_hint(command: str, stop: KeyboardInterrupt) -> Optional[str]:
    """How to go on after ``command`` was stopped part-way."""
    if command == "train" and os.environ.get(PARENT_ENV):  # a study's run: its log is read beside the study's
        return "the study resumes it: run the same textvae study command again"
    # a run stopped in its loop carries its own hint (its resume command, or that it has no checkpoint yet);
    # the table's is for a stop before the loop
    return (getattr(stop, "hint", None) if command == "train" else None) or _RESUME_HINTS.get(command)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return
        if argv and argv[0] == "--version":
            from textvae import __version__

            print(f"textvae {__version__}")
            return
        given = f"unknown command {argv[0]!r}; " if argv else ""
        print(f"textvae: error: {given}choose a command: {', '.join(COMMANDS)} (see textvae --help)", file=sys.stderr)
        sys.exit(2)
    handler = globals()[f"cmd_{argv[0]}"]
    take_last_signal()  # one of an earlier command in this process is not this one's
    try:
        load_plugins()  # parts of the user's own, registered before any name is looked up
        handler(argv[1:])
    except BrokenPipeError:  # the reader stopped early (`| head`): no traceback, the status of a SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        sys.exit(141)
    except TextVAEError as e:
        print(f"textvae: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        hint = _interrupted_hint(argv[0], stop)
        print(f"textvae: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        sys.exit(128 + (take_last_signal() or signal.SIGINT))  # 130 for Ctrl-C, 143 for SIGTERM


if __name__ == "__main__":
    main()
