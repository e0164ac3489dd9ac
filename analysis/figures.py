"""Figures as pure functions: data in, a matplotlib `Figure` out; `save_figure` writes it as PNG and PDF.

Figures are built with `matplotlib.figure.Figure` directly, never through `pyplot`: no global figure registry to
leak memory across a long report, no GUI backend, and saving renders with Agg (PNG) / the PDF backend. The inputs
are the frames of `analysis.load` / `analysis.tables` (and, for coverage maps, the summed `CoverageMap`s of
`analysis.coverage`, and for Q-maps the `QMap`s of `analysis.topology`: arrays over the maze rather than rows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter, ScalarFormatter

from analysis.coverage import CoverageMap, bin_coverage_fraction, coverage_entropy, coverage_fraction, layout_wall_mask
from analysis.topology import QMap

__all__ = ["coverage_figure", "diagnostics_figure", "expressivity_figure", "learning_curves_figure", "qmap_figure",
           "save_figure"]

X_LABELS = {"env_steps": "env steps", "wall_time": "wall-clock time (s)", "grad_steps": "grad steps"}
COLLECTOR_COLOR = "black"


def _passive_learners(rows: pd.DataFrame) -> list[str]:
    """Names of the passive learners in `rows`, by learner depth (then name): the order of their colours."""
    passive = rows.loc[rows["learner"] != "collector", ["learner", "learner_depth"]].dropna().drop_duplicates()
    return [name for _, name in sorted((int(d), str(name)) for name, d in passive.itertuples(index=False))]


def _learner_color(learner: str, passive: Sequence[str]) -> str:
    """Black for the collector; a fixed tab10 colour per passive learner (same colour in every panel), in the order
    of `_passive_learners`."""
    if learner == "collector":
        return COLLECTOR_COLOR
    cmap = matplotlib.colormaps["tab10"]
    passive = list(passive)
    index = passive.index(learner) if learner in passive else len(passive)  # a learner without a known depth: last
    return matplotlib.colors.to_hex(cmap((index + 1) % 10))


def _learner_label(learner: str, collector_depth) -> str:
    if learner == "collector":
        return f"collector (d{collector_depth})" if not pd.isna(collector_depth) else "collector"
    return learner.replace("learner_d", "learner d")


def _lines(data: pd.DataFrame):
    """(run, learner, rows) per line, the collector first then passive learners by depth (not "d16" before "d4")."""
    groups = list(data.groupby(["run", "learner"], sort=True))
    def order(group):
        (run, learner), rows = group
        depth = rows["learner_depth"].iloc[0]
        return learner != "collector", 0 if pd.isna(depth) else int(depth), run

    groups.sort(key=order)
    for (run, learner), rows in groups:
        yield run, learner, rows


def _panels(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """(env, collector_depth) pairs in the frame, sorted: one panel row/column each."""
    keys = frame[["env", "collector_depth"]].drop_duplicates().dropna()
    return sorted((str(e), int(d)) for e, d in keys.itertuples(index=False))


def _panel_title(env: str, depth: int, several_envs: bool) -> str:
    return (f"{env}, " if several_envs else "") + f"collector depth {depth}"


def expressivity_figure(table: pd.DataFrame, metric: str = "time_at_goal") -> Figure:
    """Final `metric` against passive learner depth (log2 axis), one line per collector depth with SE error bars
    (none where n = 1); offline learners (`depthrl offline`, named ``offline_d{D}``) dashed in the same colour; the
    collector's own eval is a star at its own depth, same colour. Input: `ablation_table`."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    passive = table[table["learner"] != "collector"]
    own = table[table["learner"] == "collector"]
    several_envs = table["env"].nunique() > 1
    cmap = matplotlib.colormaps["viridis"]
    keys = _panels(table)
    all_depths = set()
    for i, (env, depth) in enumerate(keys):
        color = cmap(0.85 * i / max(len(keys) - 1, 1))  # stop short of viridis' pale yellow end
        label = (f"{env}, " if several_envs else "") + f"collector depth {depth}"
        mine_passive = passive[(passive["env"] == env) & (passive["collector_depth"] == depth)]
        offline = mine_passive["learner"].astype(str).str.startswith("offline_")
        # Online passive learners: solid line; offline learners on the same data (`depthrl offline`): dashed.
        for rows, style, suffix in ((mine_passive[~offline], "-", ""), (mine_passive[offline], "--", ", offline")):
            rows = rows.sort_values("learner_depth")
            if not len(rows):
                continue
            x = rows["learner_depth"].astype(float).to_numpy()
            all_depths.update(int(d) for d in x)
            ax.errorbar(x, rows[f"{metric}_mean"].to_numpy(float), yerr=rows[f"{metric}_se"].fillna(0).to_numpy(float),
                        marker="o", capsize=3, color=color, linestyle=style, label=label + suffix)
        rows = mine_passive
        mine = own[(own["env"] == env) & (own["collector_depth"] == depth)]
        if len(mine):
            all_depths.add(depth)
            ax.errorbar([float(depth)], mine[f"{metric}_mean"].to_numpy(float),
                        yerr=mine[f"{metric}_se"].fillna(0).to_numpy(float), marker="*", markersize=12,
                        linestyle="none", capsize=3, color=color,
                        label=f"{label}: collector's own eval" if not len(rows) else None)
    ax.set_xscale("log", base=2)
    if all_depths:
        ax.set_xticks(sorted(all_depths))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learner depth (log2 scale)")
    ax.set_ylabel(f"final {metric.replace('_', ' ')}")
    ax.set_title(f"Expressivity: final {metric.replace('_', ' ')} (mean ± SE over seeds; ★ = collector's own eval)",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def learning_curves_figure(frame: pd.DataFrame, metric: str = "time_at_goal", kinds: Sequence[str] = ("eval",),
                           xs: Sequence[str] = ("env_steps", "wall_time")) -> Figure:
    """`metric` of the rows whose kind is in `kinds`, one panel row per (env, collector depth) and one column per x
    in `xs`; a line per (run, learner), coloured by learner (seeds share a colour). Input: the `load` frame."""
    rows = frame[frame["kind"].isin(kinds)]
    rows = rows[rows[metric].notna()] if metric in rows else rows.iloc[0:0]
    keys = _panels(rows) or [("", 0)]
    passive = _passive_learners(rows)
    several_envs = rows["env"].nunique() > 1
    fig = Figure(figsize=(5.0 * len(xs), 3.2 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), len(xs), squeeze=False)
    for r, (env, depth) in enumerate(keys):
        panel = rows[(rows["env"] == env) & (rows["collector_depth"] == depth)]
        for c, x in enumerate(xs):
            ax = axes[r, c]
            labelled = set()
            for run, learner, line in _lines(panel):
                line = line.sort_values([x, "env_steps"], kind="stable")
                label = None if learner in labelled else _learner_label(learner, depth)
                labelled.add(learner)
                ax.plot(line[x].to_numpy(float), line[metric].to_numpy(float), marker=".", linewidth=1.2,
                        color=_learner_color(learner, passive), alpha=0.85, label=label)
            ax.set_xlabel(X_LABELS.get(x, x))
            ax.set_ylabel(metric.replace("_", " "))
            if len(panel):
                ax.set_title(_panel_title(env, depth, several_envs), fontsize=9)
                ax.legend(fontsize=7)
            else:
                ax.set_title(f"no {metric} rows", fontsize=9)
            ax.grid(alpha=0.3)
    return fig


def diagnostics_figure(frame: pd.DataFrame, metrics: Sequence[str] = ("policy_lag", "update_to_data"),
                       x: str = "wall_time") -> Figure:
    """Per learner (collector and passive learners) `metrics` over `x`: a panel row per metric, a column per (env,
    collector depth); a line per (run, learner). Policy lag is in param versions (grad steps) between the policy
    that collected a batch and the learner's current one; update-to-data is grad steps per env step."""
    rows = frame[frame["kind"].isin(("collector", "learner"))]
    keys = _panels(rows) or [("", 0)]
    passive = _passive_learners(rows)
    several_envs = rows["env"].nunique() > 1
    fig = Figure(figsize=(5.0 * len(keys), 3.0 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(keys), squeeze=False)
    for c, (env, depth) in enumerate(keys):
        panel = rows[(rows["env"] == env) & (rows["collector_depth"] == depth)]
        for r, metric in enumerate(metrics):
            ax = axes[r, c]
            data = panel[panel[metric].notna()] if metric in panel else panel.iloc[0:0]
            labelled = set()
            for run, learner, line in _lines(data):
                line = line.sort_values([x, "env_steps"], kind="stable")
                label = None if learner in labelled else _learner_label(learner, depth)
                labelled.add(learner)
                ax.plot(line[x].to_numpy(float), line[metric].to_numpy(float), linewidth=1.2,
                        color=_learner_color(learner, passive), label=label)
            ax.set_xlabel(X_LABELS.get(x, x))
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(_panel_title(env, depth, several_envs) if len(data) else f"no {metric} rows", fontsize=9)
            if len(data):
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    return fig


MEMORY_WARMUP_SECONDS = 300.0
"""Rows before this many seconds of a role's wall-clock are left out of its memory slope (start-up, compilation,
the replay buffer filling)."""


def memory_slopes(frame: pd.DataFrame, warmup_seconds: float = MEMORY_WARMUP_SECONDS) -> pd.DataFrame:
    """Per (run, role): resident memory (``rss_mib``, logged with every row) at the first and last row, and the
    least-squares slope in MiB per minute over the rows after `warmup_seconds` (NaN with fewer than 3 such rows).
    Columns: run, role, rows, first_mib, last_mib, minutes, slope_mib_per_min."""
    columns = ["run", "role", "rows", "first_mib", "last_mib", "minutes", "slope_mib_per_min"]
    if "rss_mib" not in frame:
        return pd.DataFrame(columns=columns)
    data = frame[frame["rss_mib"].notna() & frame["wall_time"].notna()]
    out = []
    for (run, role), group in data.groupby(["run", "role"], sort=True):
        group = group.sort_values("wall_time", kind="stable")
        t, mib = group["wall_time"].to_numpy(float), group["rss_mib"].to_numpy(float)
        late = t >= warmup_seconds
        slope = (float(np.polyfit(t[late] / 60.0, mib[late], 1)[0]) if late.sum() >= 3 and np.ptp(t[late]) > 0
                 else float("nan"))
        out.append({"run": run, "role": role, "rows": len(group), "first_mib": mib[0], "last_mib": mib[-1],
                    "minutes": (t[-1] - t[0]) / 60.0, "slope_mib_per_min": slope})
    return pd.DataFrame(out, columns=columns)


def memory_figure(frame: pd.DataFrame, max_runs: int = 6) -> Figure:
    """Resident memory (MiB) of every role's process over wall-clock minutes, a panel per run (the first
    `max_runs` runs by name), a line per role."""
    data = frame[frame["rss_mib"].notna()] if "rss_mib" in frame else frame.iloc[0:0]
    runs = sorted(data["run"].unique())[:max_runs] or [""]
    fig = Figure(figsize=(5.0 * len(runs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        mine = data[data["run"] == run]
        for role, line in mine.groupby("role", sort=True):
            line = line.sort_values("wall_time", kind="stable")
            ax.plot(line["wall_time"].to_numpy(float) / 60.0, line["rss_mib"].to_numpy(float), linewidth=1.2,
                    label=role)
        ax.set_xlabel("wall-clock (min)")
        ax.set_ylabel("resident memory (MiB)")
        ax.set_title(str(run) if len(mine) else "no rss_mib rows", fontsize=9)
        if len(mine):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def coverage_figure(grids: Mapping[str, CoverageMap]) -> Figure:
    """One coverage map per entry (title -> summed grid): visit counts per bin on a log colour scale over the maze
    drawing (walls grey, start cells outlined in blue with "S", goal cells outlined in red). World x runs down and
    world y to the right, so the picture matches the layout text."""
    n = max(len(grids), 1)
    fig = Figure(figsize=(4.2 * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, grid) in zip(axes, grids.items()):
        s = grid.scaling
        x_min, x_max, y_min, y_max = grid.extent
        counts = np.ma.masked_less_equal(grid.counts.astype(float), 0)
        vmax = max(float(grid.counts.max()), 1.0)
        image = ax.imshow(counts, origin="upper", extent=(y_min, y_max, x_max, x_min), cmap="viridis",
                          norm=LogNorm(vmin=1.0, vmax=max(vmax, 1.0 + 1e-9)), interpolation="nearest")
        for i, j in np.argwhere(grid.wall_mask):
            ax.add_patch(Rectangle((j * s - s / 2, i * s - s / 2), s, s, facecolor="0.55", edgecolor="0.4"))
        for i, j in grid.goal_cells:
            ax.add_patch(Rectangle((j * s - s / 2, i * s - s / 2), s, s, fill=False, edgecolor="red", linewidth=1.0,
                                   linestyle="--"))
        for i, j in grid.start_cells:
            ax.add_patch(Rectangle((j * s - s / 2, i * s - s / 2), s, s, fill=False, edgecolor="blue", linewidth=1.5))
            ax.text(j * s, i * s, "S", color="blue", ha="center", va="center", fontsize=10, fontweight="bold")
        ax.set_xlim(y_min, y_max)
        ax.set_ylim(x_max, x_min)
        ax.set_aspect("equal")
        ax.set_xlabel("world y")
        ax.set_ylabel("world x")
        ax.set_title(f"{title}\nvisited {coverage_fraction(grid):.0%} of free cells, "
                     f"{bin_coverage_fraction(grid):.0%} of their bins, entropy {coverage_entropy(grid):.2f}",
                     fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8, label="visits per bin")
    if not grids:
        axes[0].set_title("no coverage files")
        axes[0].set_axis_off()
    return fig


def _qmap_image(qmap: QMap, values: np.ndarray) -> np.ndarray:
    """``values [N]`` over the Q-map's nodes as a masked image ``[n_rows k, n_cols k]`` (rows along world x, columns
    along world y, one pixel per sub-cell; walls masked): a node's pixel is the sub-cell holding its position."""
    n_rows, n_cols = len(qmap.layout_rows), len(qmap.layout_rows[0])
    k, s = qmap.nodes_per_cell, qmap.scaling
    image = np.full((n_rows * k, n_cols * k), np.nan)
    sub = np.floor((qmap.node_xy + s / 2) / (s / k)).astype(np.int64)
    sub = np.clip(sub, 0, [n_rows * k - 1, n_cols * k - 1])
    image[sub[:, 0], sub[:, 1]] = values
    return np.ma.masked_invalid(image)


def qmap_figure(qmaps: Sequence[QMap], path: Path | None = None) -> Figure:
    """One panel per Q-map (title: learner and critic depth): the critic's energy from the start (white star) to
    every node of the maze's free space, one colour scale per panel (energies of different critics are not on one
    scale), walls grey; world x runs down and world y right, as in `coverage_figure`. A first panel shows the
    negated geodesic distance from the same start (`analysis.topology.FreeSpaceGrid`), the picture of a critic that
    follows the maze exactly. With `path`, the figure is also written there (one file, the format its suffix says);
    `save_figure` writes PNG + PDF."""
    qmaps = list(qmaps)
    n = len(qmaps) + (1 if qmaps else 0)
    fig = Figure(figsize=(4.3 * max(n, 1), 4.0), layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)[0]
    if not qmaps:
        axes[0].set_title("no Q-maps")
        axes[0].set_axis_off()
    else:
        first = qmaps[0]
        grid = first.grid()
        start = grid.nearest_node(first.start_xy)
        reference = dataclasses.replace(first, energy=-grid.geodesic_from(np.atleast_1d(start))[0],
                                        node_xy=grid.node_xy)
        panels = [(reference, "maze: −geodesic distance\n(a critic that follows the maze)", "−geodesic")]
        panels += [(q, f"{q.learner} (critic depth {q.critic_depth})\n{q.env_steps:,} env steps, "
                       f"{q.grad_steps:,} grad steps", "critic energy") for q in qmaps]
        for ax, (qmap, title, label) in zip(axes, panels):
            s = qmap.scaling
            n_rows, n_cols = len(qmap.layout_rows), len(qmap.layout_rows[0])
            x_min, x_max, y_min, y_max = -s / 2, (n_rows - 0.5) * s, -s / 2, (n_cols - 0.5) * s
            image = ax.imshow(_qmap_image(qmap, np.asarray(qmap.energy, dtype=np.float64)), origin="upper",
                              extent=(y_min, y_max, x_max, x_min), cmap="viridis", interpolation="nearest")
            for i, j in np.argwhere(layout_wall_mask(qmap.layout_rows)):
                ax.add_patch(Rectangle((j * s - s / 2, i * s - s / 2), s, s, facecolor="0.55", edgecolor="0.4"))
            ax.plot([qmap.start_xy[1]], [qmap.start_xy[0]], marker="*", markersize=14, color="white",
                    markeredgecolor="black", linestyle="none")
            ax.set_xlim(y_min, y_max)
            ax.set_ylim(x_max, x_min)
            ax.set_aspect("equal")
            ax.set_xlabel("world y")
            ax.set_ylabel("world x")
            ax.set_title(title, fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> list[Path]:
    """Write `fig` as ``<out_dir>/<stem>.png`` and ``.pdf``; returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=dpi)
    # The PNG pass placed the axes; reuse that placement for the PDF instead of solving the constrained layout
    # again (a third of a report's rendering time), then give the figure its layout engine back.
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")
    try:
        fig.savefig(pdf)
    finally:
        fig.set_layout_engine(engine)
    return [png, pdf]
