"""``rl-lightning plot``: a learning-curve PNG from a finished run's ``CSVLogger`` log.

rl-lightning plot runs/ppo/version_0
rl-lightning plot runs/ppo/version_0/metrics.csv --metrics val/episode_return rollout/episode_return --output curve.png

The x-axis is the ``step`` column, which rl_lightning fills with env frames; empty cells (a row holds only the
metrics logged together) are skipped. Needs matplotlib (``pip install 'rl-lightning[plot]'``); it draws with the
Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

DEFAULT_METRICS = ("val/episode_return", "eval/episode_return", "rollout/episode_return")
"""Plotted when no metric is named: those of these that the log holds."""
PLOT_EXTRA = "pip install 'rl-lightning[plot]'"
FIGSIZE = (8.0, 5.0)
DPI = 100
"""The PNG is ``FIGSIZE * DPI`` pixels: 800 x 500."""


def find_metrics_csv(source: str | Path) -> Path:
    """The ``metrics.csv`` of ``source``: the file itself, or the single one in a run directory (searched
    recursively, so ``runs/ppo`` works when it holds one version).

    Raises:
        FileNotFoundError: when there is no such file or directory, or the directory holds no ``metrics.csv``.
        ValueError: when the directory holds several (naming them).
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: expected a CSVLogger's metrics.csv or the run directory holding it "
            "(e.g. runs/ppo/version_0)."
        )
    found = sorted(path.rglob("metrics.csv"))
    if not found:
        raise FileNotFoundError(
            f"No metrics.csv under {str(path)!r}: the run must log with lightning's CSVLogger "
            "(trainer.logger: class_path: lightning.pytorch.loggers.CSVLogger)."
        )
    if len(found) > 1:
        raise ValueError(
            f"{str(path)!r} holds {len(found)} metrics.csv files: {', '.join(map(str, found))}. Pass one of them "
            "(or its version directory)."
        )
    return found[0]


Curves = dict[str, tuple[list[float], list[float]]]
"""``{metric: (steps, values)}``."""


def read_curves(csv_path: str | Path, metrics: Sequence[str] | None = None) -> Curves:
    """Reads ``{metric: (steps, values)}`` from a ``CSVLogger`` ``metrics.csv``, skipping empty cells.

    Args:
        csv_path: the file.
        metrics: the columns to read; ``None`` reads those of :data:`DEFAULT_METRICS` that the file has.

    Raises:
        ValueError: when the file has no ``step`` column, or a metric is not a column (listing the columns).
    """
    with open(csv_path, newline="") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    available = ", ".join(c for c in columns if c != "step") or "none"
    if "step" not in columns:
        raise ValueError(
            f"{str(csv_path)!r} has no 'step' column (columns: {', '.join(columns) or 'none'}); expected the "
            "metrics.csv of lightning's CSVLogger."
        )
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in columns]
        if not metrics:
            raise ValueError(
                f"{str(csv_path)!r} has none of the default metrics {', '.join(DEFAULT_METRICS)}. Available "
                f"columns: {available}. Name the metrics to plot with --metrics."
            )
    missing = [m for m in metrics if m not in columns or m == "step"]
    if missing:
        raise ValueError(
            f"{str(csv_path)!r} has no column {', '.join(map(repr, missing))}. Available columns: {available}."
        )
    curves: Curves = {}
    for metric in metrics:
        steps: list[float] = []
        values: list[float] = []
        for row in rows:
            step, value = row.get("step") or "", row.get(metric) or ""
            if step and value:
                steps.append(float(step))
                values.append(float(value))
        if not steps:
            raise ValueError(f"Column {metric!r} of {str(csv_path)!r} holds no value; nothing to plot.")
        curves[metric] = (steps, values)
    return curves


def plot_learning_curve(
    source: str | Path, metrics: Sequence[str] | None = None, output: str | Path | None = None, title: str | None = None
) -> Path:
    """Draws the metrics of a run against env frames into a PNG and returns its path.

    Args:
        source: a ``metrics.csv`` or the run directory holding it.
        metrics: the columns to plot; ``None``: those of :data:`DEFAULT_METRICS` the log has.
        output: the PNG; ``None`` is ``learning_curve.png`` beside the ``metrics.csv``.
        title: the figure's title; ``None`` is the run directory's path.

    Raises:
        ModuleNotFoundError: when matplotlib is missing (naming the ``plot`` extra).
        FileNotFoundError, ValueError: see :func:`find_metrics_csv` and :func:`read_curves`.

    Example::

        plot_learning_curve("runs/ppo/version_0", ["val/episode_return"], "curve.png")
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError(
            f"rl-lightning plot draws with matplotlib, which cannot be imported ({err}). Install the plot extra: "
            f"{PLOT_EXTRA}."
        ) from err
    csv_path = find_metrics_csv(source)
    curves = read_curves(csv_path, metrics)
    out = Path(output) if output is not None else csv_path.parent / "learning_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        for metric, (steps, values) in curves.items():
            ax.plot(steps, values, label=metric, marker="o" if len(steps) <= 50 else None, markersize=3)
        ax.set_xlabel("env frames")
        ax.set_ylabel(next(iter(curves)) if len(curves) == 1 else "value")
        ax.set_title(title if title is not None else str(csv_path.parent))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """``rl-lightning plot``: parses ``argv`` (without the ``plot`` word) and writes the PNG.

    Errors end the command with their message (``SystemExit``), as argparse's do.
    """
    parser = argparse.ArgumentParser(
        prog="rl-lightning plot",
        description="Draw a learning curve (metrics against env frames) from a CSVLogger metrics.csv.",
    )
    parser.add_argument("source", help="a metrics.csv, or the run directory holding it (e.g. runs/ppo/version_0)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help=f"columns to plot (default: those of {', '.join(DEFAULT_METRICS)} the log has)",
    )
    parser.add_argument("--output", "-o", default=None, help="the PNG (default: learning_curve.png beside the csv)")
    parser.add_argument("--title", default=None, help="the figure's title (default: the run directory)")
    args = parser.parse_args(argv)
    try:
        return plot_learning_curve(args.source, args.metrics, args.output, args.title)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        raise SystemExit(f"rl-lightning plot: error: {err}") from err
