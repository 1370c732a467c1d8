"""The evaluation figures: accuracy against generated tokens, and sweep curves.

Figures are drawn on `matplotlib.figure.Figure` objects and saved with the Agg canvas, never
through pyplot, so plotting needs no display, leaves no global figure state behind and does
not change the backend of a notebook that imports lrt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

Row = Mapping[str, Any]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (fewer tokens and higher accuracy)."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return best


def pareto_plot(rows: Sequence[Row], path: Path) -> Path:
    """Accuracy against cost: one point per (checkpoint, mode), a panel per task.

    The cost is the positions the base processes per question after the prompt (the thinking
    span's inputs, `lrt`'s K latents included, and every decoded token), so a mode that feeds
    many latents is not shown as free. Symlog, because `lrt` and `nothink` take a few dozen and
    `cot` hundreds; the dashed line joins the Pareto-optimal points of each panel.
    """
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    colors = {m: f"C{i % 10}" for i, m in enumerate(modes)}
    # With several reasoners, points carry a number and a key below the panels names them
    # (run names of a sweep are far too long to print next to each point).
    reasoners = [c for c in dict.fromkeys(r["checkpoint"] for r in rows) if c != "base"]
    tags = {c: str(i + 1) for i, c in enumerate(reasoners)} if len(reasoners) > 1 else {}
    fig = Figure(figsize=(5 * len(tasks), 4 + 0.2 * len(tags)), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        task_rows = [
            {**r, "cost": r["mean_positions"] - r["mean_prompt"]} for r in rows if r["task"] == task
        ]
        for mode in modes:
            pts = [r for r in task_rows if r["mode"] == mode]
            if pts:
                ax.scatter(
                    [r["cost"] for r in pts],
                    [r["accuracy"] for r in pts],
                    color=colors[mode],
                    label=mode,
                    zorder=3,
                )
        for r in task_rows:
            if r["checkpoint"] in tags:
                ax.annotate(
                    tags[r["checkpoint"]],
                    (r["cost"], r["accuracy"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        front = _frontier([(r["cost"], r["accuracy"]) for r in task_rows])
        ax.plot(*zip(*front, strict=True), "--", color="0.6", drawstyle="steps-post", zorder=2)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("positions after the prompt per question (span inputs + decoded)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if tags:
        key = [Line2D([], [], linestyle="none", label=f"{t}: {c}") for c, t in tags.items()]
        fig.legend(handles=key, loc="outside lower center", fontsize=7, frameon=False)
    return _save(fig, path)


def _axis_values(values: Sequence[str]) -> tuple[list[float], list[str] | None]:
    """Numeric override values as numbers; anything else as categories in order of appearance."""
    try:
        return [float(v) for v in values], None
    except ValueError:
        categories = list(dict.fromkeys(values))
        return [float(categories.index(v)) for v in values], categories


def sweep_plot(rows: Sequence[Row], keys: Sequence[str], path: Path) -> Path:
    """Accuracy (top) and mean tokens (bottom) against each swept key, a line per (task, mode).

    When several keys are swept at once, each point of a line is the mean over the runs that
    share that key's value.
    """
    keys = list(keys) or ["run"]
    fig = Figure(figsize=(4.5 * len(keys), 6), layout="constrained")
    axes = fig.subplots(2, len(keys), squeeze=False)
    series = list(dict.fromkeys((r["task"], r["mode"]) for r in rows))
    for col, key in enumerate(keys):
        xs, categories = _axis_values([str(r.get(key, "")) for r in rows])
        for metric, ax in zip(("accuracy", "mean_tokens"), axes[:, col], strict=True):
            for task, mode in series:
                by_x: dict[float, list[float]] = {}
                for x, r in zip(xs, rows, strict=True):
                    if (r["task"], r["mode"]) == (task, mode):
                        by_x.setdefault(x, []).append(float(r[metric]))
                points = sorted((x, sum(v) / len(v)) for x, v in by_x.items())
                ax.plot(*zip(*points, strict=True), "o-", label=f"{task} {mode}")
            if categories is not None:
                ax.set_xticks(range(len(categories)), categories, rotation=30, fontsize=7)
            ax.set_xlabel(key)
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


Series = tuple[list[float], list[float]]


def metric_series(
    rows: Sequence[Row], key: str, value: Any = float, step_key: str = "step"
) -> Series:
    """(steps, values) of one column of `metrics.csv` rows, skipping rows without it; the
    step is read from `step_key`, falling back to the logging step where a row has none."""
    points = [
        (float(r.get(step_key) or r["step"]), value(r[key]))
        for r in rows
        if r.get(key) not in (None, "")
    ]
    return [p[0] for p in points], [p[1] for p in points]


def validation_series(rows: Sequence[Row], key: str) -> Series:
    """A validation metric against the optimiser steps taken (`val/steps_taken`); runs logged
    before it existed fall back to the logging step."""
    return metric_series(rows, key, step_key="val/steps_taken")


def _curves(panels: Sequence[tuple[str, Series | dict[str, Series]]], path: Path) -> Path:
    """One panel per (title, series), side by side, against training steps; a panel given
    {label: series} draws each with a legend."""
    fig = Figure(figsize=(4 * len(panels), 3.4))
    for i, (title, series) in enumerate(panels):
        ax: Axes = fig.add_subplot(1, len(panels), i + 1)
        lines = series if isinstance(series, dict) else {"": series}
        for label, (steps, values) in lines.items():
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, marker=marker, lw=1.2, label=label or None)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def train_curves(rows: Sequence[Row], path: Path) -> Path | None:
    """Any stage's curves: training loss, learning rate, validation accuracy and the latents'
    spread across questions (0: a question-blind prompt); None (and no file) when no training
    step was logged."""
    loss = metric_series(rows, "train/loss")
    if not loss[0]:
        return None
    panels = [
        ("training loss", loss),
        ("learning rate", metric_series(rows, "train/lr")),
        ("validation accuracy", validation_series(rows, "val/accuracy")),
        ("latent spread across questions", metric_series(rows, "train/latent_spread")),
    ]
    return _curves(panels, path)


def grpo_curves(rows: Sequence[Row], path: Path) -> Path:
    """GRPO's training signal against steps: mean reward, the share of informative groups
    (rewards not all equal: the only groups with a gradient) and validation accuracy, greedy
    (what the final table reports) beside sampled pass@1 (what the rollouts are rewarded for).

    `rows` are `metrics.csv` rows; the informative share is dynamic sampling's
    `train/pool/informative_share` when logged, else `1 - train/frac_zero_std`.
    """
    pool = any(r.get("train/pool/informative_share") not in (None, "") for r in rows)
    informative = (
        metric_series(rows, "train/pool/informative_share")
        if pool
        else metric_series(rows, "train/frac_zero_std", lambda v: 1 - float(v))
    )
    panels = [
        ("mean reward", metric_series(rows, "train/reward_mean")),
        ("informative groups" + (" (of candidates)" if pool else ""), informative),
        (
            "validation accuracy",
            {
                "greedy": validation_series(rows, "val/accuracy"),
                "sampled pass@1": validation_series(rows, "val/pass@1"),
            },
        ),
    ]
    return _curves(panels, path)
