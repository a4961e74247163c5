"""Figures of a study (:mod:`textvae.study`): PNG files embedded in its report.md.

* ``curves.png``: KL, MI, active units and -ELBO on validation data during training, one line per
  variant (mean over seeds at common steps, band = min..max over seeds). The points are the
  run's periodic ``valid_metrics`` records (``train.metrics_sentences`` validation sentences spread
  evenly over the split, MI by the whole-set estimator), or its epoch-end ``valid`` records (the whole
  validation set, MI per batch) when it has no periodic ones.
* ``rate_distortion.png``: reconstruction against KL on the test set (mean ± std over seeds),
  with dashed lines of equal -ELBO = rec + KL.
* ``nll_mi.png``: IW-NLL against MI on the test set, one marker shape and colour per variant
  (named in the legend: labels beside points overprint when variants cluster); variants without
  a latent (language models) and the synthetic corpus' true NLL (dashed) and true MI (dash-dotted)
  are reference lines, which never stretch the view: one outside it is named in the legend with
  its value.

``textvae plot RUN ...`` draws ``curves.png`` for run folders, or a study's variant folder (:func:`runs_plot`).

matplotlib is optional (``pip install 'textvae[plot]'``); it is imported only here, without pyplot,
so drawing never touches a GUI backend.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from textvae.errors import TextVAEError
from textvae.files import run_folders, write_whole

# (panel title, record keys in order of preference)
CURVES = [("KL (nats)", ("kl",)), ("MI (nats)", ("mi_dataset", "mi_batch")), ("active units", ("au",)),
          ("-ELBO (nats, NLL bound)", ("neg_elbo",))]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TextVAEError("plots need matplotlib: pip install 'textvae[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def _plain_numbers(ax: Any) -> None:
    """Tick labels as the figures themselves (34.57), not as an offset or a power of ten beside the axis
    (+3.4572e1), which a nearly flat curve otherwise gets."""
    ax.ticklabel_format(style="plain", useOffset=False)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def run_curves(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Panel title -> {step: value} of one run; a step logged twice (a resumed run replays the
    steps after its last checkpoint) keeps its last value."""
    periodic = [r for r in records if r.get("split") == "valid_metrics"]
    chosen = periodic or [r for r in records if r.get("split") == "valid"]
    curves: dict[str, dict[int, float]] = {title: {} for title, _ in CURVES}
    for rec in chosen:
        for title, keys in CURVES:
            value = next((rec[k] for k in keys if isinstance(rec.get(k), (int, float))), None)
            if value is not None and math.isfinite(value):
                curves[title][int(rec["step"])] = float(value)
    return curves


def _seed_band(series: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps common to every seed, and the mean, min and max over seeds there."""
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = [[s[t] for s in series] for t in steps]
    return (steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values])


def plot_curves(curves: dict[str, list[dict[str, dict[int, float]]]], path: Path,
                heading: str = "validation figures during training (mean over seeds, band: min..max)") -> bool:
    """``curves``: variant -> per-seed :func:`run_curves`. Returns False when there is nothing to draw."""
    fig = _figure(12, 7.5)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    drawn = False
    for colour, (variant, seeds) in zip(_colours(len(curves)), curves.items()):
        for ax, (title, _) in zip(axes, CURVES):
            series = [s[title] for s in seeds if s[title]]
            if not series:
                continue
            steps, mean, lo, hi = _seed_band(series)
            if not steps:
                continue
            ax.plot(steps, mean, color=colour, label=variant, lw=1.5, marker="." if len(steps) < 20 else None)
            if len(series) > 1:
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, lw=0)
            drawn = True
    for ax, (title, _) in zip(axes, CURVES):
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _plain_numbers(ax)
        if title == "active units":  # counts: whole ticks from 0, and a visible axis when every count is 0
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    for ax in axes[2:]:
        ax.set_xlabel("optimiser step")
    handles, labels = [], []
    for ax in axes:  # one legend entry per variant, whichever panel drew it
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(heading)
    if drawn:
        save_figure(fig, path)
    return drawn


def _points(variants: list[dict[str, Any]], x: str, y: str) -> list[tuple[str, int, float, float, float, float]]:
    """(variant, index, x mean, x std, y mean, y std) for the variants with both figures."""
    out = []
    for i, v in enumerate(variants):
        fx, fy = v["figures"][x], v["figures"][y]
        if fx["n"] and fy["n"]:
            out.append((v["variant"], i, fx["mean"], fx["std"], fy["mean"], fy["std"]))
    return out


MARKERS = "osD^v<>PX*"


def _scatter(ax: Any, points: list[tuple], colours: list[Any], annotate: bool = True) -> None:
    for name, i, xm, xs, ym, ys in points:
        ax.errorbar(xm, ym, xerr=None if math.isnan(xs) else xs, yerr=None if math.isnan(ys) else ys,
                    fmt="o" if annotate else MARKERS[i % len(MARKERS)], color=colours[i], label=name, capsize=3)
        if annotate:
            ax.annotate(name, (xm, ym), textcoords="offset points", xytext=(4, 4), fontsize=7)


def plot_rate_distortion(variants: list[dict[str, Any]], path: Path) -> bool:
    points = _points(variants, "kl", "rec")
    if not points:
        return False
    fig = _figure(9, 6)
    ax = fig.subplots()
    _plain_numbers(ax)
    _scatter(ax, points, _colours(len(variants)))
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    elbos = [xm + ym for _, _, xm, _, ym, _ in points]
    lo, hi = min(elbos), max(elbos)
    for k, level in enumerate([lo + (hi - lo) * k / 3 for k in range(4)] if hi > lo else [lo]):
        ax.plot(xlim, [level - xlim[0], level - xlim[1]], ls="--", lw=0.8, color="grey",
                label="equal -ELBO = rec + KL" if k == 0 else None)
    ax.set_xlim(xlim)  # the lines of equal -ELBO must not stretch the view
    ax.set_ylim(ylim)
    ax.set_xlabel("KL = rate (nats per sentence)")
    ax.set_ylabel("reconstruction = distortion (nats per sentence)")
    ax.set_title("rate-distortion on the test set (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7)
    save_figure(fig, path)
    return True


def _reference_line(ax: Any, value: float, vertical: bool, label: str, **style: Any) -> None:
    """A horizontal (vertical) line at ``value`` that leaves the view as the points set it; a line
    outside the view gets its value, and where it lies, in the legend entry instead."""
    lo, hi = ax.get_xlim() if vertical else ax.get_ylim()
    if not lo <= value <= hi:
        side = ("left of" if value < lo else "right of") if vertical else ("below" if value < lo else "above")
        label = f"{label} = {value:.2f} ({side} the view)"
    (ax.axvline if vertical else ax.axhline)(value, label=label, **style)
    (ax.set_xlim if vertical else ax.set_ylim)(lo, hi)


def draw_nll_mi(variants: list[dict[str, Any]]) -> Any:
    """The ``nll_mi`` figure, or None when no variant has both figures."""
    points = _points(variants, "mi", "nll")
    if not points:
        return None
    fig = _figure(9, 6)
    ax = fig.subplots()
    _plain_numbers(ax)
    colours = _colours(len(variants))
    _scatter(ax, points, colours, annotate=False)
    with_mi = {p[0] for p in points}
    for i, v in enumerate(variants):  # language models: NLL only
        nll = v["figures"]["nll"]
        if v["variant"] not in with_mi and nll["n"]:
            _reference_line(ax, nll["mean"], False, f"{v['variant']} (no latent)", ls=":", color=colours[i])
    truth = next((v["figures"] for v in variants if v["figures"]["true_nll"]["n"]), None)
    if truth is not None:
        _reference_line(ax, truth["true_nll"]["mean"], False, "true NLL", ls="--", color="black", lw=0.9)
        _reference_line(ax, truth["true_mi"]["mean"], True, "true MI", ls="-.", color="dimgrey", lw=0.9)
    ax.set_xlabel("MI (nats, whole-set estimator)")
    ax.set_ylabel("IW-NLL (nats per sentence)")
    ax.set_title("NLL against mutual information on the test set (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7)
    return fig


def plot_nll_mi(variants: list[dict[str, Any]], path: Path) -> bool:
    fig = draw_nll_mi(variants)
    if fig is not None:
        save_figure(fig, path)
    return fig is not None


def runs_plot(runs: list[Path], path: Path) -> None:
    """``textvae plot``: the validation curves of one or more run folders in one figure, one line per
    run, labelled by its folder's name (by the path as given where two names are the same)."""
    from textvae.training.logger import read_jsonl

    runs = [run for given in map(Path, runs) for run in run_folders(given, "plot", _study_figures)]
    names = [run.resolve().name for run in runs]
    curves = {}
    for run, name in zip(runs, names):
        curves[name if names.count(name) == 1 else str(run)] = [run_curves(read_jsonl(run / "metrics.jsonl"))]
    if not plot_curves(curves, path, heading="validation figures during training"):
        raise TextVAEError(f"nothing to plot: {', '.join(map(str, runs))} logged no validation figures yet")


def _study_figures(folder: Path) -> str:
    """Where a study's folder keeps its figures, for ``plot``'s error when given one."""
    drawn = ", ".join(sorted(p.name for p in (folder / "plots").glob("*.png"))) or "none yet"
    return f"its figures are in {folder / 'plots'} ({drawn}; `textvae study ... --report` draws them again)"


def save_figure(fig: Any, path: Path) -> None:
    """The figure written whole or not at all (report.md links it), in the format its suffix names (png, pdf, svg)."""
    path = Path(path)
    write_whole(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))


def study_plots(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Draw every figure of a study from its results (``textvae.study.aggregate``) and the runs'
    metrics.jsonl; returns name -> PNG path of the figures that had data."""
    from textvae.training.logger import read_jsonl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list] = {v["variant"]: [] for v in results["variants"]}
    for run in results["runs"]:
        if run["state"] == "archived":  # kept only in the study's archive, with its curves (JSON: string steps)
            if run["curves"]:  # an entry rebuilt from a table has none
                curves[run["variant"]].append({title: {int(t): v for t, v in points.items()}
                                               for title, points in run["curves"].items()})
        elif run["report"] is not None:
            curves[run["variant"]].append(run_curves(read_jsonl(Path(run["dir"]) / "metrics.jsonl")))
    curves = {k: v for k, v in curves.items() if v}
    drawers = {"curves": lambda p: bool(curves) and plot_curves(curves, p),
               "rate_distortion": lambda p: plot_rate_distortion(results["variants"], p),
               "nll_mi": lambda p: plot_nll_mi(results["variants"], p)}
    written = {}
    for name, draw in drawers.items():
        path = folder / f"{name}.png"
        if draw(path):
            written[name] = path
    return written
