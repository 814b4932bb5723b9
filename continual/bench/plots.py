"""Figures for continual-learning results, written as PNG files.

Every function takes plain data (dicts, nested lists or arrays) and an output path, writes a
PNG atomically (temporary file in the same directory, then ``os.replace``) and returns the
path as a ``pathlib.Path``. Figures are built with ``matplotlib.figure.Figure`` and the Agg
canvas directly, never through ``pyplot``, so nothing touches global backend state and no
figure lingers in pyplot's registry.

Missing data is expected (a method that crashed, a metric that is undefined for one task):
a None method, None value or NaN cell is skipped, and a panel with nothing to show says so.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ..files import atomic_write_bytes
from ..metrics import format_bytes

DPI = 120
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- helpers


def _save(figure: Figure, path: PathLike) -> Path:
    """Render ``figure`` to PNG and move it into place atomically; returns the final path."""
    target = Path(path)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # bbox_inches="tight" keeps legends placed outside the axes inside the image.
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _style(index: int) -> dict[str, Any]:
    """Colour and marker for the index-th series: distinct for up to ~20 series.

    The default colour cycle repeats after 10, and runs often compare 11 methods, so the
    marker changes too.
    """
    if index < 10:
        colour = colormaps["tab10"](index)
    else:
        # The odd tab20 entries are the light twins of tab10's colours, so they do not repeat them.
        colour = colormaps["tab20"]((2 * (index - 10) + 1) % 20)
    return {"color": colour, "marker": _MARKERS[index % len(_MARKERS)]}


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels, as square as possible, at most 4 columns."""
    columns = min(4, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / columns), columns


def _empty(figure: Figure, message: str = "no data") -> None:
    axes = figure.add_subplot(1, 1, 1)
    _say(axes, message)
    axes.set_axis_off()


def _say(axes: Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="grey")


def _matrix(method: str, R: Any, tasks: int) -> np.ndarray:
    """The method's matrix as floats; NaN marks anything unmeasured. Shape must match names."""
    try:
        matrix = np.array(R, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"accuracy matrix of {method!r} must contain only numbers: {error}"
        ) from None
    if matrix.shape != (tasks, tasks):
        raise ValueError(
            f"accuracy matrix of {method!r} has shape {matrix.shape}, expected ({tasks}, {tasks}) "
            "to match the task names"
        )
    # Infinite values have no place on a plot; treat them like unmeasured cells.
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


def _matrices(matrices: Mapping[str, Any], tasks: int) -> dict[str, np.ndarray]:
    """Each method's T x T matrix R as floats (`_matrix`), the methods given None left out."""
    return {name: _matrix(name, R, tasks) for name, R in _present(matrices).items()}


def _present(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``mapping`` whose value is not None, in order."""
    return {name: value for name, value in (mapping or {}).items() if value is not None}


def _mean_std(entry: Any) -> tuple[float | None, float | None]:
    """(mean, std) from {"mean", "std"}, a bare number, or None; non-finite reads as None."""
    if entry is None:
        return None, None
    if isinstance(entry, Mapping):
        mean, std = entry.get("mean"), entry.get("std")
    else:
        mean, std = entry, None

    def clean(value: Any) -> float | None:
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    return clean(mean), clean(std)


def _task_axis(axes: Axes, task_names: Sequence[str]) -> None:
    axes.set_xticks(range(len(task_names)))
    long_names = max((len(str(name)) for name in task_names), default=0) > 6 or len(task_names) > 6
    axes.set_xticklabels(
        [str(name) for name in task_names],
        rotation=45 if long_names else 0,
        ha="right" if long_names else "center",
        fontsize=8,
    )


# ----------------------------------------------------------------------------- figures


def plot_forgetting(
    task_names: Sequence[str],
    matrices: Mapping[str, Any],
    path: PathLike,
    y_max: float = 100.0,
    measure: str = "accuracy",
) -> Path:
    """The forgetting plot: per method, the accuracy on each task j over the task sequence.

    One panel per method (``matrices[method]`` is its T x T matrix R, None to skip). In each
    panel x is "after learning task i" and there is one line per task j, starting at i = j.
    The y-axis runs from 0 to ``y_max`` (100 for percentages, 1 for fractions), shared.
    ``measure`` names what R holds (e.g. a generative task's metric) in titles and labels.
    """
    task_names = [str(name) for name in task_names]
    tasks = len(task_names)
    prepared = _matrices(matrices, tasks)

    rows, columns = _grid(max(1, len(prepared)))
    figure = Figure(figsize=(3.8 * columns, 3.0 * rows + 0.6), layout="constrained")
    if not prepared:
        _empty(figure)
        figure.suptitle(f"{measure.capitalize()} on each task over the sequence")
        return _save(figure, path)

    grid = figure.subplots(rows, columns, sharey=True, squeeze=False)
    for panel, (method, matrix) in zip(grid.flat, prepared.items()):
        for j in range(tasks):
            steps = np.arange(j, tasks)
            values = matrix[j:, j]
            if np.isfinite(values).any():
                panel.plot(
                    steps, values, label=task_names[j], linewidth=1.4, markersize=4, **_style(j)
                )
        panel.set_title(method, fontsize=10)
        panel.set_ylim(0, y_max)
        panel.set_xlim(-0.3, tasks - 0.7)
        panel.grid(True, alpha=0.3)
        _task_axis(panel, task_names)
    for panel in grid.flat[len(prepared) :]:
        panel.set_axis_off()
    for row in grid:
        row[0].set_ylabel(measure)
    for panel in grid[-1]:
        panel.set_xlabel("after learning task")
    # Task colours are the same in every panel, so one legend serves them all.
    handles = [Line2D([], [], linewidth=1.4, markersize=4, **_style(j)) for j in range(tasks)]
    figure.legend(handles, task_names, title="task", loc="outside right center", fontsize=8)
    figure.suptitle(f"{measure.capitalize()} on each task over the sequence (forgetting)")
    return _save(figure, path)


def plot_accuracy_heatmaps(
    task_names: Sequence[str],
    matrices: Mapping[str, Any],
    path: PathLike,
    y_max: float = 100.0,
    measure: str = "accuracy",
) -> Path:
    """One heatmap of R per method: rows "after learning task i", columns "accuracy on task j"
    (``measure`` in the labels).

    Each cell is annotated with its value to one decimal; NaN cells (tasks not yet learned)
    stay blank. The colour scale runs from 0 to ``y_max`` and is shared by all panels.
    """
    task_names = [str(name) for name in task_names]
    tasks = len(task_names)
    prepared = _matrices(matrices, tasks)

    rows, columns = _grid(max(1, len(prepared)))
    side = max(3.2, 0.5 * tasks + 1.4)
    figure = Figure(figsize=(side * columns + 1.0, side * rows + 0.6), layout="constrained")
    if not prepared:
        _empty(figure)
        figure.suptitle(f"{measure.capitalize()} matrices")
        return _save(figure, path)

    colour_map = colormaps["viridis"].with_extremes(bad="white")
    font_size = 8 if tasks <= 8 else max(5.0, 8 - 0.4 * (tasks - 8))
    grid = figure.subplots(rows, columns, squeeze=False)
    image = None
    for panel, (method, matrix) in zip(grid.flat, prepared.items()):
        image = panel.imshow(
            np.ma.masked_invalid(matrix), cmap=colour_map, vmin=0, vmax=y_max, aspect="equal"
        )
        for i in range(tasks):
            for j in range(tasks):
                value = matrix[i, j]
                if np.isfinite(value):
                    # Dark text on the bright (high) end of viridis, light text on the dark end.
                    colour = "black" if value > 0.55 * y_max else "white"
                    panel.text(
                        j,
                        i,
                        f"{value:.1f}",
                        ha="center",
                        va="center",
                        fontsize=font_size,
                        color=colour,
                    )
        panel.set_title(method, fontsize=10)
        _task_axis(panel, task_names)
        panel.set_yticks(range(tasks))
        panel.set_yticklabels(task_names, fontsize=8)
        panel.set_xlabel(f"{measure} on task", fontsize=9)
        panel.set_ylabel("after learning task", fontsize=9)
    for panel in grid.flat[len(prepared) :]:
        panel.set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=grid, shrink=0.8, label=measure)
    figure.suptitle(f"{measure.capitalize()} matrices R[i][j]")
    return _save(figure, path)


def plot_accuracy_vs_forgetting(
    summary: Mapping[str, Any], path: PathLike, measure: str = "accuracy"
) -> Path:
    """Scatter of average accuracy (y) against forgetting (x), one labelled point per method.

    ``summary[method]`` holds "average_accuracy" and "forgetting", each {"mean", "std"} (a bare
    number is read as a mean without std). Standard deviations become error bars. Methods
    with a missing mean are left out and listed under the plot.
    """
    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    skipped = []
    shown = 0
    for index, (method, entry) in enumerate((summary or {}).items()):
        entry = entry or {}
        accuracy, accuracy_std = _mean_std(entry.get("average_accuracy"))
        forgotten, forgotten_std = _mean_std(entry.get("forgetting"))
        if accuracy is None or forgotten is None:
            skipped.append(str(method))
            continue
        style = _style(index)
        axes.errorbar(
            forgotten,
            accuracy,
            xerr=forgotten_std,
            yerr=accuracy_std,
            fmt=style["marker"],
            color=style["color"],
            capsize=3,
            markersize=7,
            label=str(method),
        )
        axes.annotate(
            str(method),
            (forgotten, accuracy),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=8,
        )
        shown += 1
    if shown:
        axes.axvline(0, color="grey", linewidth=0.8, linestyle="--")
        axes.margins(0.15)
        axes.grid(True, alpha=0.3)
        # Clustered methods make point labels collide; the legend keeps every method identifiable.
        axes.legend(title="method", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        _say(axes, "no method has both average accuracy and forgetting")
    axes.set_xlabel("forgetting $F_T$ (lower is better)")
    axes.set_ylabel(f"average {measure} $A_T$ (higher is better)")
    axes.set_title(f"Average {measure} vs forgetting (mean ± std over task orders)")
    if skipped:
        # supxlabel gets its own space from the constrained layout, below the axis labels.
        figure.supxlabel(
            "not shown (missing values): " + ", ".join(skipped), fontsize=8, color="grey"
        )
    return _save(figure, path)


def _format_count(value: float) -> str:
    """Compact 1000-based count: 512, 12.3K, 4.5M, 1.1B."""
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.1f}{suffix}"
    return f"{value:.0f}"


def _format_seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 100 else f"{value:.1f} s"


def _format_tick(value: float) -> str:
    return f"{value:g}"


# key, title, y label, log scale, bar-label formatter, tick formatter
_COST_PANELS = (
    ("bytes_per_task", "storage per task", "bytes (log scale)", True, format_bytes, format_bytes),
    (
        "trainable_parameters",
        "trainable parameters",
        "parameters (log scale)",
        True,
        _format_count,
        _format_count,
    ),
    ("train_seconds", "training time", "seconds", False, _format_seconds, _format_tick),
)


def plot_cost(costs: Mapping[str, Any], path: PathLike) -> Path:
    """Bar panels of each method's cost: bytes per task and trainable parameters (log y), train seconds.

    ``costs[method]`` is {"bytes_per_task", "train_seconds", "trainable_parameters"}; a None
    method is left out, a None value shows as "n/a". Bars are labelled with their value.
    """
    methods = _present(costs)
    names = [str(name) for name in methods]
    panel_width = max(3.5, 0.42 * len(names) + 1.2)
    figure = Figure(figsize=(panel_width * len(_COST_PANELS), 4.6), layout="constrained")
    if not methods:
        _empty(figure)
        figure.suptitle("Cost per method")
        return _save(figure, path)

    grid = figure.subplots(1, len(_COST_PANELS), squeeze=False)[0]
    positions = np.arange(len(names))
    for panel, (key, title, label, log_scale, formatter, tick_formatter) in zip(grid, _COST_PANELS):
        values = [
            _mean_std(entry.get(key))[0] if isinstance(entry, Mapping) else None
            for entry in methods.values()
        ]
        drawable = [value for value in values if value is not None and (value > 0 or not log_scale)]
        heights = [
            value if value is not None and (value > 0 or not log_scale) else 0.0 for value in values
        ]
        colours = [_style(index)["color"] for index in range(len(names))]
        panel.bar(positions, heights, color=colours, width=0.7)
        if drawable and max(drawable) > 0:
            top = max(drawable)
            if log_scale:
                # Leave a quarter of the (log) height above the tallest bar for its label.
                bottom = min(drawable) / 3
                panel.set_yscale("log")
                panel.set_ylim(bottom, bottom * (top / bottom) ** (1 / 0.75))
                panel.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
            else:
                panel.set_ylim(0, top / 0.75)
            panel.yaxis.set_major_formatter(
                FuncFormatter(lambda value, _, f=tick_formatter: f(value) if value >= 0 else "")
            )
        else:
            panel.set_yticks([])
            _say(panel, "no data")
        # Labels sit on the bar top, or on the axis floor where there is no bar to draw.
        floor = panel.get_xaxis_transform()
        for x, value, height in zip(positions, values, heights):
            if value is None:
                panel.text(
                    x,
                    0.02,
                    "n/a",
                    transform=floor,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="grey",
                    rotation=90,
                )
            elif height > 0:
                panel.annotate(
                    formatter(value),
                    (x, height),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
            else:
                panel.text(
                    x,
                    0.02,
                    formatter(value),
                    transform=floor,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
        panel.set_xticks(positions)
        panel.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        panel.set_title(title, fontsize=10)
        panel.set_ylabel(label)
        panel.grid(True, axis="y", alpha=0.3)
    figure.suptitle("Cost per method")
    return _save(figure, path)


def plot_data_efficiency(results: Mapping[str, Any], path: PathLike) -> Path:
    """Accuracy against examples per class (log2 x axis), one line with error bars per method.

    ``results[method][shots]`` is {"mean", "std"} (or a bare mean); shots may be ints or
    numeric strings (as after a JSON round trip). None methods and None points are skipped.
    """
    figure = Figure(figsize=(8.0, 5.0), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    all_shots: set[int] = set()
    skipped = []
    for index, (method, curve) in enumerate((results or {}).items()):
        points = []
        for shots, entry in (curve or {}).items():
            mean, std = _mean_std(entry)
            if mean is not None:
                points.append((int(shots), mean, std))
        points = [point for point in sorted(points) if point[0] > 0]  # log axis: no zero shots
        if not points:
            skipped.append(str(method))
            continue
        xs = [point[0] for point in points]
        style = _style(index)
        axes.errorbar(
            xs,
            [point[1] for point in points],
            yerr=[point[2] if point[2] is not None else 0.0 for point in points],
            label=str(method),
            capsize=3,
            linewidth=1.4,
            markersize=5,
            **style,
        )
        all_shots.update(xs)
    if all_shots:
        axes.set_xscale("log", base=2)
        ticks = sorted(all_shots)
        axes.xaxis.set_major_locator(FixedLocator(ticks))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.grid(True, alpha=0.3)
        axes.legend(title="method", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        _say(axes, "no data")
    axes.set_xlabel("examples per class (log2 scale)")
    axes.set_ylabel("accuracy")
    axes.set_title("Data efficiency (mean ± std over seeds)")
    if skipped:
        # supxlabel gets its own space from the constrained layout, below the axis labels.
        figure.supxlabel("not shown (no data): " + ", ".join(skipped), fontsize=8, color="grey")
    return _save(figure, path)
