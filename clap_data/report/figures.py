"""The report's figures: each function takes plain arrays and returns one PNG as bytes.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through
``pyplot``: no global figure state and no GUI backend, so the report renders the same on a headless
machine, in a worker thread or beside a user's own interactive session. PNGs carry no software-version
metadata, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from clap_data.schemas import ARM_MASK_NAMES

_DPI = 100
_ROBOT, _HUMAN, _TRUTH = "#1f77b4", "#d95f02", "#222222"
_DECODED = {"action_tokens": "#1f77b4", "pseudo_tokens": "#d95f02"}


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def slot_usage(counts: NDArray[np.int64], num_queries: int, column: str) -> bytes:
    """One bar chart per slot (rows: left arm's slots, then right's) of how often each code fills it."""
    codebook_size = counts.shape[1]
    per_row = min(num_queries, 8)
    rows_per_arm = math.ceil(num_queries / per_row)
    figure = Figure(figsize=(2.3 * per_row, 1.7 * 2 * rows_per_arm), layout="constrained")
    axes = figure.subplots(2 * rows_per_arm, per_row, squeeze=False, sharex=True)
    used = set()
    for slot in range(2 * num_queries):
        arm, within = divmod(slot, num_queries)
        position = (arm * rows_per_arm + within // per_row, within % per_row)
        used.add(position)
        ax = axes[position]
        ax.set_title(f"{ARM_MASK_NAMES[arm]} {within}", fontsize=9)
        ax.tick_params(labelsize=7)
        if counts[slot].sum() == 0:
            ax.text(0.5, 0.5, "arm never active", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        ax.stairs(counts[slot], np.arange(codebook_size + 1) - 0.5, fill=True, color=_ROBOT if arm else "#2ca02c")
    for position, ax in np.ndenumerate(axes):
        if position not in used:
            ax.set_visible(False)
    figure.supxlabel(f"code (K = {codebook_size})", fontsize=9)
    figure.supylabel("frames", fontsize=9)
    figure.suptitle(f"{column}: code usage per slot (active arms only)", fontsize=11)
    return _png(figure)


def human_vs_robot(human: NDArray[np.int64], robot: NDArray[np.int64]) -> bytes:
    """Share of each code among human pseudo-tokens and among robot action tokens (all active slots pooled),
    codes ordered by robot frequency so that the two profiles can be compared by eye."""
    order = np.argsort(-robot, kind="stable")
    human_share = human / max(int(human.sum()), 1)
    robot_share = robot / max(int(robot.sum()), 1)
    x = np.arange(len(order))
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    ax = figure.subplots()
    if len(order) <= 64:  # few codes: side-by-side bars, each code labelled
        ax.bar(x - 0.2, robot_share[order], width=0.4, color=_ROBOT, label="robot action_tokens")
        ax.bar(x + 0.2, human_share[order], width=0.4, color=_HUMAN, label="human pseudo_tokens")
        ax.set_xticks(x, [str(code) for code in order], fontsize=7)
    else:  # hundreds of codes: bars would be thinner than a pixel, so two outlines
        edges = np.arange(len(order) + 1) - 0.5
        ax.stairs(robot_share[order], edges, fill=True, color=_ROBOT, alpha=0.6, label="robot action_tokens")
        ax.stairs(human_share[order], edges, color=_HUMAN, linewidth=1.2, label="human pseudo_tokens")
    ax.set_xlabel("code, most frequent among robot tokens first")
    ax.set_ylabel("share of tokens")
    ax.legend(fontsize=8)
    ax.set_title("code usage: human video against robot actions", fontsize=11)
    return _png(figure)


def episode_lengths(lengths: NDArray[np.int64], fps: int) -> bytes:
    """Histogram of episode lengths in frames (seconds on the top axis)."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    ax = figure.subplots()
    bins = min(50, max(1, len(np.unique(lengths))))
    ax.hist(lengths, bins=bins, color=_ROBOT, edgecolor="white")
    ax.set_xlabel("frames")
    ax.set_ylabel("episodes")
    top = ax.secondary_xaxis("top", functions=(lambda f: f / fps, lambda s: s * fps))
    top.set_xlabel("seconds", fontsize=8)
    ax.set_title(f"episode lengths ({len(lengths):,} episodes)", fontsize=11)
    return _png(figure)


def task_counts(tasks: Sequence[str], episodes: Sequence[int], shown: int = 20) -> bytes:
    """Horizontal bars of episodes per task, the ``shown`` most frequent tasks."""
    pairs = sorted(zip(episodes, tasks, strict=True), key=lambda p: -p[0])[:shown]
    labels = [task if len(task) <= 48 else task[:47] + "…" for _, task in pairs]
    figure = Figure(figsize=(7, 0.6 + 0.28 * max(len(pairs), 1)), layout="constrained")
    ax = figure.subplots()
    ax.barh(np.arange(len(pairs)), [n for n, _ in pairs], color=_ROBOT)
    ax.set_yticks(np.arange(len(pairs)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("episodes")
    ax.set_title("episodes per task" + (f" (top {shown})" if len(tasks) > shown else ""), fontsize=11)
    return _png(figure)


def codebook_map(points: NDArray[np.float64], explained: NDArray[np.float64], robot: NDArray[np.int64],
                 human: NDArray[np.int64]) -> bytes:
    """The codebook's first two principal components, each code a point sized by its uses (robot + human)
    and coloured by who uses it; unused codes are hollow."""
    total = robot + human
    sizes = 12 + 300 * np.sqrt(total / max(int(total.max()), 1))
    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = figure.subplots()
    groups = (
        ("robot only", (robot > 0) & (human == 0), _ROBOT),
        ("human only", (human > 0) & (robot == 0), _HUMAN),
        ("robot and human", (robot > 0) & (human > 0), "#7570b3"),
    )
    for label, chosen, colour in groups:
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=sizes[chosen], color=colour, alpha=0.7, label=label)
    unused = total == 0
    if unused.any():
        ax.scatter(points[unused, 0], points[unused, 1], s=sizes[unused], facecolors="none", edgecolors="#888888",
                   label="unused")
    if len(points) <= 64:
        for code, (x, y) in enumerate(points):
            ax.annotate(str(code), (x, y), fontsize=7, ha="center", va="center")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.legend(fontsize=8, markerscale=0.5)
    ax.set_title(f"Act-VAE codebook (K = {len(points)}), sized by usage", fontsize=11)
    return _png(figure)


def decoded_chunks(truths: Sequence[NDArray[np.float64]], decoded: Sequence[dict[str, NDArray[np.float64]]],
                   titles: Sequence[str], dofs: Sequence[Sequence[tuple[int, str]]]) -> bytes:
    """One row per sampled chunk: the chosen DOFs (index into the 14-D vector, name) over the 32 steps,
    ground truth against each token column decoded."""
    columns = max(len(d) for d in dofs)
    figure = Figure(figsize=(3.0 * columns, 2.2 * len(truths)), layout="constrained")
    axes = figure.subplots(len(truths), columns, squeeze=False)
    for row, (truth, chunks, title, chosen) in enumerate(zip(truths, decoded, titles, dofs, strict=True)):
        for col, (dof, name) in enumerate(chosen):
            ax = axes[row, col]
            steps = np.arange(len(truth))
            ax.plot(steps, truth[:, dof], color=_TRUTH, linewidth=2, label="ground truth")
            for column, chunk in chunks.items():
                ax.plot(steps, chunk[:, dof], color=_DECODED.get(column), linestyle="--", label=f"{column} decoded")
            ax.set_title(f"{title}: {name}" if col == 0 else name, fontsize=8, loc="left")
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.supxlabel("step of the 32-step chunk", fontsize=9)
    return _png(figure)
