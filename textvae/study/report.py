"""A study's outputs: the figures of each run, aggregated over seeds into results.csv, results.json
and report.md (with the plots of :mod:`textvae.plots`); and ``textvae compare`` for runs made by hand."""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

from textvae.config import INCIDENTAL_KEYS, RunConfig, setting_changes
from textvae.errors import TextVAEError
from textvae.files import lock_holder, run_folders, write_text_whole, write_whole
from textvae.metrics import (TEXT_METRICS, format_figure, get_metric, he2019_noise_sd, list_metrics,
                             list_text_metrics)
from textvae.pretrained import warn_missing_plugins
from textvae.study.archive import finite_or_null, load_archive, write_archive
from textvae.study.folders import finished_report, run_state, saved_config, study_report
from textvae.study.spec import Run, Study
from textvae.tasks.base import TASKS

log = logging.getLogger("textvae.study")


# (figure, column label, format): the table of report.md, in order.
COLUMNS = [("nll", "IW-NLL", "{:.2f}"), ("kl", "KL", "{:.2f}"), ("mi", "MI", "{:.2f}"), ("au", "AU", "{:.1f}"),
           ("ppl", "IW-PPL", "{:.2f}"), ("rec", "Rec.", "{:.2f}"), ("neg_elbo", "-ELBO", "{:.2f}"),
           ("train_minutes", "train (min)", "{:.1f}"), ("tokens_per_s", "tok/s", "{:.0f}")]
# Report keys carried into results.csv / results.json besides the table's figures and the registered metrics'
# (:func:`figure_keys`): a synthetic corpus's ground truth, which the training run adds to its report.
EXTRA = ("true_nll", "true_mi")


def columns() -> list[tuple[str, str, str]]:
    """The table's columns: the figures above, then those of the registered metrics and text metrics (their
    ``study_columns``)."""
    return (COLUMNS + [column for name in list_metrics() for column in get_metric(name).study_columns]
            + [column for name in list_text_metrics() for column in TEXT_METRICS.get(name).study_columns])


def shown_columns(has: Callable[[str], bool]) -> list[tuple[str, str, str]]:
    """The columns a table shows: the figures above always, a metric's only where some row ``has`` it
    (a sentence study has no BLEU of responses)."""
    return [c for c in columns() if c in COLUMNS or has(c[0])]


def results_columns(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """:func:`shown_columns` of results.json's content: a metric's where some variant has a run with it."""
    return shown_columns(lambda key: any(v["figures"][key]["n"] for v in results["variants"]))


def figure_keys() -> list[str]:
    """Every figure of results.csv / results.json: the table's, then every figure a registered metric or text
    metric declares (its rows: a new metric's figures reach results.csv without a line here), then :data:`EXTRA`."""
    keys = [key for key, _, _ in columns()]
    declared = ([row.figure for name in list_metrics() for row in get_metric(name).rows]
                + [row.figure for name in list_text_metrics() for row in TEXT_METRICS.get(name).rows])
    return list(dict.fromkeys(keys + declared + list(EXTRA)))


def run_figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures of one test report. A language model's IW-NLL is its exact NLL with one sample; one
    reported before it had it (before 2026-12-07) falls back to its -ELBO / ELBO-PPL, the same exact
    figure (KL = 0); a VAE evaluated without importance
    samples (``train.iw_samples_final 0``) has no NLL, only its bound (-ELBO). MI is the whole-set
    estimator."""
    nan = math.nan
    exact = "latent_dim" not in report  # the language model: no latent figures in its report
    figs = {"nll": report.get("iw_nll", report.get("neg_elbo", nan) if exact else nan),
            "ppl": report.get("iw_ppl", report.get("elbo_ppl", nan) if exact else nan),
            "kl": report.get("kl", nan), "mi": report.get("mi_dataset", nan), "au": report.get("au", nan),
            "rec": report.get("rec", nan), "neg_elbo": report.get("neg_elbo", nan),
            "train_minutes": report.get("train_seconds", nan) / 60.0,
            "tokens_per_s": report.get("train_tokens_per_s", nan)}
    figs.update({k: report.get(k, nan) for k in figure_keys() if k not in figs})
    # a per-dimension list (kl_per_dim, where a report has one) is no figure of a table, nor an archive's null
    return {k: nan if v is None or isinstance(v, (list, tuple)) else float(v) for k, v in figs.items()}


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1) of the finite values; std is NaN for n < 2."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return mean, std, len(xs)


def aggregate(study: Study, runs: list[Run]) -> dict[str, Any]:
    """results.json's content: per variant mean / std / n of every figure, and every run's report."""
    per_run, variants = [], []
    for vname in study.variants:
        mine = [r for r in runs if r.variant == vname]
        # (run, its report, whether only the archive has it)
        reports = [(r, rep, False) if (rep := study_report(r)) is not None
                   else (r, (r.archived or {}).get("report"), r.archived is not None) for r in mine]
        done = [(r, rep) for r, rep, _ in reports if rep is not None]
        figs = [run_figures(rep) for _, rep in done]
        stats = {}
        for key in figure_keys():
            mean, std, n = mean_std([f[key] for f in figs])
            stats[key] = {"mean": mean, "std": std, "n": n}
        variants.append({"variant": vname, "runs": len(done), "planned": len(mine), "figures": stats})
        per_run += [_run_entry(r, rep, archived) for r, rep, archived in reports]
    reports = [r["report"] for r in per_run if r["report"]]
    setting = {k: next((rep[k] for rep in reports if k in rep), None)
               for k in ("iw_samples", "au_threshold", "latent_dim", "n_sentences")}
    if setting["n_sentences"] is None:  # a dialogue study counts pairs
        setting["n_pairs"] = next((rep["n_pairs"] for rep in reports if "n_pairs" in rep), None)
    return {"study": study.name, "study_file": str(study.path), "base": str(study.base), "seeds": study.seeds,
            "budget": study.budget, "mi_estimator": "mi_dataset", **setting,
            "variants": variants, "runs": per_run}


def _run_entry(run: Run, report: Any, archived: bool) -> dict[str, Any]:
    """results.json's record of one run; a run finished only in the archive brings its validation
    records (for the curves), the test report's wall time, its commits and its machines from there
    (entries written before the machines were recorded have none)."""
    entry = {"variant": run.variant, "seed": run.seed, "dir": str(run.dir), "report": report}
    if archived:
        return {**entry, "state": "archived", "machines": run.archived.get("machines", []),
                **{k: run.archived[k] for k in ("curves", "valid", "test_seconds", "commits", "source")}}
    if run.conflict is not None:
        return {**entry, "state": "conflict", "conflict": run.conflict}
    state = "done" if report is not None else run_state(run)
    if state == "resume":  # --status's words for it
        state = "stopped" if lock_holder(run.dir) is None else "training"
    return {**entry, "state": state}


def cell(stats: dict[str, Any], fmt: str) -> str:
    """'mean ± std' (just the mean for a single run, '–' for none)."""
    if stats["n"] == 0:
        return "–"
    if stats["n"] == 1:
        return format_figure(stats["mean"], fmt)
    return f"{format_figure(stats['mean'], fmt)} ± {format_figure(stats['std'], fmt)}"


def table_row(cells: list[str]) -> str:
    """One row of a markdown table; a ``|`` in a cell (a label such as ``|mu|``, a note) escaped, so that it
    does not split the cell."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_table(results: dict[str, Any]) -> str:
    shown = results_columns(results)
    header = ["variant", "runs"] + [label for _, label, _ in shown]
    lines = [table_row(header), "|" + "---|" * len(header)]
    for v in results["variants"]:
        cells = [v["variant"], f"{v['runs']}/{v['planned']}"] + [cell(v["figures"][k], fmt) for k, _, fmt in shown]
        lines.append(table_row(cells))
    return "\n".join(lines)


def compare_runs(run_dirs: list[Path]) -> str:
    """``textvae compare``: the test figures of run folders made outside a study (or a study's variant
    folders: their seeds), as a study's table, one row per run, with the settings in which each differs from the first (``INCIDENTAL_KEYS``
    left out) and, in the first row, the first run's own values of them, so that a comparison says what
    it compares."""
    run_dirs = [run for given in map(Path, run_dirs) for run in
                run_folders(given, "compare", lambda study: f"its table is in {study / 'report.md'} and "
                                                            f"{study / 'results.csv'}", "config.yaml")]
    configs = [saved_config(d) for d in run_dirs]  # each has its config.yaml (run_folders)
    other = next((i for i, (cls, _) in enumerate(configs) if cls is not configs[0][0]), None)
    if other is not None:  # their settings have nothing in common to set side by side
        raise TextVAEError(f"compare takes runs of one task: {run_dirs[0]} is a {_task_of(configs[0][0])} run, "
                           f"{run_dirs[other]} a {_task_of(configs[other][0])} run")
    warn_missing_plugins(*run_dirs, consequence="the figures their parts give (a metric's column) are left out")
    reports = [finished_report(d) for d in run_dirs]
    figures = [run_figures(report) if report is not None else None for report in reports]
    shown = shown_columns(lambda key: any(f is not None and math.isfinite(f[key]) for f in figures))
    header = ["run"] + [label for _, label, _ in shown] + ["settings that differ from the first run"]
    lines = [table_row(header), "|" + "---|" * len(header)]
    changes = [{k: v for k, v in _setting_changes(cls, configs[0][1], config).items() if k not in INCIDENTAL_KEYS}
               for cls, config in configs]
    # the first run's own values of the settings the others change: what each row differs from
    first = _setting_changes(configs[0][0], {}, configs[0][1])
    changes[0] = {k: first.get(k) for k in dict.fromkeys(k for c in changes[1:] for k in c)}
    for i, (run_dir, figs) in enumerate(zip(run_dirs, figures)):
        cells = ([format_figure(figs[k], fmt) for k, _, fmt in shown] if figs is not None
                 else ["not finished"] + ["–"] * (len(shown) - 1))
        settings = "; ".join(f"{k} {json.dumps(v)}" for k, v in changes[i].items()) or ("–" if i == 0 else "none")
        lines.append(table_row([str(run_dir), *cells, settings]))
    return "\n".join(lines)


def _task_of(config_class: type) -> str:
    return next(name for name in TASKS.names() if TASKS.get(name).config_class is config_class)


def _setting_changes(cls: type, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": b's value, ...}`` where b differs from a (:func:`~textvae.config.setting_changes`)."""
    return {k: new for k, (_, new) in setting_changes(cls, a, b).items()}


def write_csv(results: dict[str, Any], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    always = {k for k, _, _ in COLUMNS} | set(EXTRA)
    has = {k for v in results["variants"] for k, stats in v["figures"].items() if stats["n"]}
    keys = [k for k in figure_keys() if k in always or k in has]  # as the table: no metric's column no run has
    writer.writerow(["variant", "runs"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for v in results["variants"]:
        row = [v["variant"], v["runs"]]
        for k in keys:
            row += [repr(v["figures"][k]["mean"]), repr(v["figures"][k]["std"])]
        writer.writerow(row)
    write_whole(path, lambda tmp: tmp.write_text(text.getvalue(), newline=""))  # csv's own \r\n line ends


def _mi_noise(results: dict[str, Any]) -> str:
    """The published per-batch estimator's noise floor, √(D / 2N), when the reports have it."""
    d, n = results.get("latent_dim"), results.get("n_sentences") or results.get("n_pairs")  # a dialogue's: pairs
    if not d or not n:
        return ""
    return (f" (its closed-form entropy beside one sampled log q(z) leaves noise of sd sqrt(D / 2N) = "
            f"{he2019_noise_sd(int(d), int(n)):.3f} nats here, D = {d:.0f}, N = {n:.0f})")


def common_settings(study: Study, config_class: type) -> dict[str, Any]:
    """The study file's ``data`` and ``overrides`` sections (``Study.common``'s first and third layers; the
    budget and --set are said apart), as dotted settings."""
    settings: dict[str, Any] = {}
    for layer in study.common[:1] + study.common[2:3]:
        settings.update(_setting_changes(config_class, {}, layer))
    return settings


def variants_markdown(study: Study, config_class: type) -> list[str]:
    """report.md's table of what each variant sets on top of the base recipe and the study's common
    settings, with the study file's note on it: a row that differs from the others says how."""
    lines = ["## Variants", "", "Each on top of the base recipe and the settings common to the study (above).", "",
             "| variant | settings | note |", "|---|---|---|"]
    for name, overrides in study.variants.items():
        own = _setting_changes(config_class, {}, overrides)
        settings = "; ".join(f"`{k}: {json.dumps(v)}`" for k, v in own.items())
        cells = [name, settings or "–", study.notes.get(name, "")]
        lines.append(table_row(cells))
    return lines + [""]


def report_markdown(study: Study, results: dict[str, Any], plot_files: dict[str, str], plot_note: str,
                    config_class: type = RunConfig) -> str:
    budget = ", ".join(f"{k} {v}" for k, v in study.budget.items() if v is not None) or "the recipe's"
    k = results.get("iw_samples")
    thr = results.get("au_threshold")
    item = TASKS.get(_task_of(config_class)).item
    figures = (f"Test-set figures of each run's best model (by validation -ELBO, or rec + w KL where a variant sets "
               f"optim.plateau_kl_weight w), mean ± sample std over seeds ({', '.join(map(str, study.seeds))}). NLL, "
               f"KL, Rec. (reconstruction) and -ELBO in nats per {item}")
    notes = [
        figures + (f"; IW-NLL / IW-PPL with K = {k:.0f} importance samples" if k else ""),
        f"MI: the whole-set estimator (Li et al. 2019; log q(z) over all N test {item}s) with log q(z_i|x_i) of "
        "the same sample as its first term, so that the sampling noise cancels: 0 for an x-independent posterior, "
        "never above log N; results.csv also has the per-batch estimator (mi_batch_*) and He et al.'s as "
        f"published (mi_batch_he2019_*), both over groups of at most mi_batch_size test {item}s (He et al.'s batch "
        "size, or the largest group where the evaluation batches split smaller; blank in reports made before it was fixed, whose groups were the evaluation batches)" + _mi_noise(results),
        f"AU: latent dimensions with Var_x E[z|x] >= {thr:g}" if thr else "AU: active units",
        "train (min): the training loop's time (resumed runs summed), without the final evaluation; "
        "tok/s: training tokens per second",
        "Language-model rows (no latent) show their exact NLL (-ELBO with KL = 0) under IW-NLL / IW-PPL",
    ]
    truth = [v for v in results["variants"] if v["figures"]["true_nll"]["n"]]
    if truth:
        f = truth[0]["figures"]
        notes.append(f"Ground truth of the synthetic test set: NLL {f['true_nll']['mean']:.2f}, "
                     f"MI {f['true_mi']['mean']:.3f} nats")
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description, ""]
    sets = (f"; command-line overrides for every run: `{' '.join(study.cli_overrides)}`"
            if study.cli_overrides else "")
    lines += [f"Study file `{study.path}`; base recipe `{study.base}`; budget per run: {budget}{sets}. "
              f"Written {datetime.datetime.now().isoformat(timespec='seconds')}.", ""]
    common = common_settings(study, config_class)
    if common:
        lines += ["Settings of every run on top of the base recipe (the study file's `data` and `overrides`): "
                  + "; ".join(f"`{k}: {json.dumps(v)}`" for k, v in common.items()) + ".", ""]
    lines += [markdown_table(results), ""]
    lines += [f"- {n}." for n in notes] + [""] + variants_markdown(study, config_class)
    titles = {"curves": "Validation figures during training", "rate_distortion": "Rate-distortion (test set)",
              "nll_mi": "NLL against mutual information (test set)"}
    for key, title in titles.items():
        if key in plot_files:
            lines += [f"## {title}", "", f"![{title}]({plot_files[key]})", ""]
    if plot_note:
        lines += [plot_note, ""]
    lines += ["## Runs", "", table_row(["variant", "seed", "state", "folder"]), "|---|---|---|---|"]
    lines += [table_row([r["variant"], str(r["seed"]), r["state"], f"`{r['dir']}`"]) for r in results["runs"]]
    return "\n".join(lines) + "\n"


def write_outputs(study: Study, runs: list[Run], plots: bool = True) -> dict[str, Any]:
    """results.csv, results.json and report.md in ``study.out`` (plots under ``plots/`` when asked
    and matplotlib is installed)."""
    study.out.mkdir(parents=True, exist_ok=True)
    warn_missing_plugins(*(run.dir for run in runs if (run.dir / "metrics.jsonl").is_file()),
                         consequence="the figures their parts give (a metric's column) are left out of the report")
    results = aggregate(study, runs)
    write_text_whole(study.out / "results.json", json.dumps(finite_or_null(results), indent=2))
    write_csv(results, study.out / "results.csv")
    plot_files, note = {}, ""
    if plots:
        try:
            from textvae import plots as plotting
            plot_files = plotting.study_plots(results, study.out / "plots")
            plot_files = {k: str(Path(p).relative_to(study.out)) for k, p in plot_files.items()}
        except TextVAEError as e:
            note = f"Plots skipped: {e}"
            log.warning(note)
    elif (study.out / "report.md").is_file():
        # Keep the figures of the last full report (they are redrawn when the study ends).
        plot_files = {p.stem: f"plots/{p.name}" for p in sorted((study.out / "plots").glob("*.png"))}
    write_text_whole(study.out / "report.md", report_markdown(study, results, plot_files, note, type(runs[0].config)))
    if study.archive is not None:
        write_archive(study.archive, study, runs, load_archive(study.archive))
    return results

