"""The ablation table: collector depth x learner depth -> final evaluation, mean +- standard error over seeds.

Per run and eval role, the *final* value of a metric is its mean over the last `last_n` evaluations (by env steps).
Per (env, collector depth, learner) the final values of the seeds are averaged; the standard error is the sample
standard deviation (ddof=1) / sqrt(n), undefined (NaN, printed "n/a") for a single seed. Columns of `ablation_table`:

``env, collector_depth, learner ("collector" = the collector's own eval, else a passive learner's name, e.g.
"learner_d4"), learner_depth, n_seeds, {metric}_mean, {metric}_se`` for each metric in `FINAL_METRICS` and each
of `PROBE_METRICS` that some evaluation row holds (runs written before the probes have none, and their table is
what it always was), and, when coverage was measured, ``coverage_fraction_mean/_se, bin_coverage_mean/_se,
coverage_entropy_mean/_se`` of the collector depth (the same on every row of that depth: exploration belongs to the
collector, not to a learner). A run that lacks a metric another run logs is left out of that metric's mean (NaN is
not a value), not counted as 0; so each probe metric also has ``{metric}_n``, the runs its mean is over (``n_seeds``
counts every run of the group).

Rendering (`ablation_matrix`, `to_markdown`, `to_latex`) lays one metric out as a matrix: a row per collector depth,
a column for the collector's own eval then one per passive learner depth, then the coverage columns.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["FINAL_METRICS", "PROBE_METRICS", "ablation_matrix", "ablation_table", "coverage_summary", "final_evals",
           "mean_se", "paired_differences", "table_metrics", "to_latex", "to_markdown"]

FINAL_METRICS = ("time_at_goal", "success_any")
"""Evaluation metrics summarised in the ablation table."""
PROBE_METRICS = ("topo_rank_corr_geodesic", "topo_rank_corr_euclidean", "topo_through_wall_fraction",
                 "heldout_critic_accuracy", "heldout_critic_loss")
"""Evaluation metrics of the critic probes (the maze-topology probe of `analysis.topology`, the critic's accuracy
and loss on held-out data), summarised like `FINAL_METRICS` where some evaluation row holds them."""
LAST_N_EVALS = 5
COVERAGE_METRICS = ("coverage_fraction", "bin_coverage", "coverage_entropy")
_GROUP = ["env", "collector_depth", "learner", "learner_depth"]


def mean_se(values) -> tuple[float, float, int]:
    """(mean, standard error, n) of the finite values: SE = std(ddof=1) / sqrt(n); NaN when n < 2 (mean NaN at 0)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return mean, se, n


def final_evals(frame: pd.DataFrame, last_n: int = LAST_N_EVALS, metrics=FINAL_METRICS) -> pd.DataFrame:
    """One row per (run, eval role): the mean of each metric over that role's last `last_n` evaluations, with
    ``n_evals`` (how many were averaged) and ``final_env_steps`` (env steps of the last one)."""
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    columns = ["run", "env", "seed", "collector_depth", "learner", "learner_depth", "role", "n_evals",
               "final_env_steps", *metrics]
    evals = frame[frame["kind"] == "eval"]
    rows = []
    for (run, role), group in evals.groupby(["run", "role"], sort=True):
        tail = group.sort_values(["env_steps", "wall_time"], kind="stable").tail(last_n)
        first = tail.iloc[0]
        row = {c: first[c] for c in ("run", "env", "seed", "collector_depth", "learner", "learner_depth", "role")}
        row["n_evals"] = len(tail)
        row["final_env_steps"] = float(tail["env_steps"].iloc[-1])
        ordered = group.sort_values(["env_steps", "wall_time"], kind="stable")
        for metric in metrics:
            # A metric's own last n values: rows that lack it (a probe-only row of `depthrl probe`, an evaluation
            # from before an instrument existed) neither count nor shorten the others' window.
            values = ordered[metric].dropna().tail(last_n) if metric in ordered else ordered.iloc[:0, 0]
            row[metric] = float(values.mean()) if len(values) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    for c in ("seed", "collector_depth", "learner_depth"):
        out[c] = out[c].astype("Int64")
    return out


def table_metrics(frame: pd.DataFrame) -> tuple[str, ...]:
    """`FINAL_METRICS`, then those of `PROBE_METRICS` that some evaluation row of `frame` (a `load` frame) holds."""
    evals = frame[frame["kind"] == "eval"]
    return FINAL_METRICS + tuple(m for m in PROBE_METRICS if m in evals and evals[m].notna().any())


def coverage_summary(coverage: pd.DataFrame) -> pd.DataFrame:
    """Per (env, collector_depth): n_coverage_runs and mean/SE over seeds of coverage_fraction, bin_coverage and
    coverage_entropy (input: `analysis.coverage.coverage_frame`; a column it lacks gives NaN)."""
    rows = []
    for (env, depth), group in coverage.groupby(["env", "collector_depth"], sort=True):
        row = {"env": env, "collector_depth": depth, "n_coverage_runs": len(group)}
        for metric in COVERAGE_METRICS:
            values = group[metric] if metric in group else [math.nan]
            row[f"{metric}_mean"], row[f"{metric}_se"], _ = mean_se(values)
        rows.append(row)
    columns = ["env", "collector_depth", "n_coverage_runs"] + [f"{m}_{s}" for m in COVERAGE_METRICS
                                                               for s in ("mean", "se")]
    out = pd.DataFrame(rows, columns=columns)
    out["collector_depth"] = out["collector_depth"].astype("Int64")
    return out


def ablation_table(frame: pd.DataFrame, last_n: int = LAST_N_EVALS, coverage: pd.DataFrame | None = None,
                   metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The long ablation table described in the module docstring. `frame` is `analysis.load.load(...).frame`;
    `coverage` (optional) is `analysis.coverage.coverage_frame(...)[0]`; `metrics` defaults to
    `table_metrics(frame)`."""
    metrics = table_metrics(frame) if metrics is None else tuple(metrics)
    finals = final_evals(frame, last_n, metrics)
    rows = []
    for key, group in finals.groupby(_GROUP, sort=False, dropna=False):
        row = dict(zip(_GROUP, key))
        row["n_seeds"] = len(group)
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_se"], n = mean_se(group[metric])
            if metric in PROBE_METRICS:
                row[f"{metric}_n"] = n
        rows.append(row)
    columns = _GROUP + ["n_seeds"] + [f"{m}_{s}" for m in metrics
                                      for s in (("mean", "se", "n") if m in PROBE_METRICS else ("mean", "se"))]
    table = pd.DataFrame(rows, columns=columns)
    for c in ("collector_depth", "learner_depth"):
        table[c] = table[c].astype("Int64")
    if coverage is not None and len(coverage):
        table = table.merge(coverage_summary(coverage), on=["env", "collector_depth"], how="left")
    # The collector's own eval first in each collector depth, then passive learners by depth.
    table["_own"] = table["learner"] != "collector"
    table = table.sort_values(["env", "collector_depth", "_own", "learner_depth"], kind="stable")
    return table.drop(columns="_own").reset_index(drop=True)


def paired_differences(frame: pd.DataFrame, last_n: int = LAST_N_EVALS, metrics: Sequence[str] | None = None
                       ) -> pd.DataFrame:
    """Deepest minus shallowest learner of each setting, paired by run: per (env, collector depth, setting, metric),
    the per-run differences of the final values (two learners of one run trained on the same data and seed), their
    mean, standard error (ddof=1 / sqrt(n)) and whether the mean is further than 2 SE from 0 either way
    (``beyond_2se``; False when the SE is undefined, n < 2). Which sign is "better" depends on the metric (a loss:
    negative). The setting is "learner" (online passive learners) or "offline" (`depthrl offline` runs).

    Columns: env, collector_depth, setting, deep, shallow, metric, n, diff_mean, diff_se, beyond_2se."""
    metrics = table_metrics(frame) if metrics is None else tuple(metrics)
    finals = final_evals(frame, last_n, metrics)
    finals = finals[finals["learner"] != "collector"].copy()
    finals["setting"] = finals["learner"].map(_setting)
    rows = []
    for (env, depth, setting), group in finals.groupby(["env", "collector_depth", "setting"], sort=True,
                                                       dropna=False):
        depths = sorted(group["learner_depth"].dropna().astype(int).unique())
        if len(depths) < 2:
            continue
        deep, shallow = depths[-1], depths[0]
        # Offline runs have their own run names: pair them by seed of the data they learned from (run = a run dir).
        by_run = group.pivot_table(index="run", columns="learner_depth", values=list(metrics), aggfunc="first")
        for metric in metrics:
            if (metric, deep) not in by_run or (metric, shallow) not in by_run:
                continue
            diff = (by_run[(metric, deep)] - by_run[(metric, shallow)]).to_numpy(float)
            mean, se, n = mean_se(diff)
            rows.append({"env": env, "collector_depth": depth, "setting": setting, "deep": deep, "shallow": shallow,
                         "metric": metric, "n": n, "diff_mean": mean, "diff_se": se,
                         "beyond_2se": bool(n > 1 and np.isfinite(se) and abs(mean) > 2 * se)})
    columns = ["env", "collector_depth", "setting", "deep", "shallow", "metric", "n", "diff_mean", "diff_se",
               "beyond_2se"]
    return pd.DataFrame(rows, columns=columns)


def _fmt(mean: float, se: float, n: int | None = None) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    text = f"{mean:.2f} ± " + ("n/a" if se is None or pd.isna(se) else f"{se:.2f}")
    return text + (f" (n={n})" if n is not None else "")


def ablation_matrix(table: pd.DataFrame, metric: str = "time_at_goal") -> pd.DataFrame:
    """`metric` of `ablation_table` as a matrix of "mean ± SE (n=...)" strings: a row per (env,) collector depth;
    columns "collector (own eval)", "learner d{D}" per passive depth, "offline d{D}" per offline learner depth
    (`depthrl offline` runs), then coverage fraction, bin coverage and
    entropy when present.
    The env column is kept only when the table holds several envs."""
    passive = table[(table["learner"] != "collector") & table["learner_depth"].notna()]
    # Online passive learners ("learner_d{D}") first, then offline ones ("offline_d{D}", `depthrl offline`).
    columns = sorted({(_setting(name), int(d)) for name, d in zip(passive["learner"], passive["learner_depth"])},
                     key=lambda c: (c[0] == "offline", c[1]))
    has_coverage = "coverage_fraction_mean" in table.columns
    several_envs = table["env"].nunique(dropna=False) > 1
    n_column = f"{metric}_n" if f"{metric}_n" in table.columns else "n_seeds"
    rows = []
    for (env, depth), group in table.groupby(["env", "collector_depth"], sort=True, dropna=False):
        row = {"env": env} if several_envs else {}
        row["collector depth"] = "–" if pd.isna(depth) else str(int(depth))
        own = group[group["learner"] == "collector"]
        row["collector (own eval)"] = (_fmt(own[f"{metric}_mean"].iloc[0], own[f"{metric}_se"].iloc[0],
                                            int(own[n_column].iloc[0])) if len(own) else "–")
        for setting, d in columns:
            cell = group[(group["learner"] != "collector") & (group["learner_depth"] == d)
                         & (group["learner"].map(_setting) == setting)]
            row[f"{setting} d{d}"] = (_fmt(cell[f"{metric}_mean"].iloc[0], cell[f"{metric}_se"].iloc[0],
                                         int(cell[n_column].iloc[0])) if len(cell) else "–")
        if has_coverage:
            first = group.iloc[0]
            n = first.get("n_coverage_runs")
            n = None if pd.isna(n) else int(n)
            row["coverage fraction"] = _fmt(first["coverage_fraction_mean"], first["coverage_fraction_se"], n)
            if "bin_coverage_mean" in table.columns:
                row["bin coverage"] = _fmt(first["bin_coverage_mean"], first["bin_coverage_se"], n)
            row["coverage entropy"] = _fmt(first["coverage_entropy_mean"], first["coverage_entropy_se"], n)
        rows.append(row)
    return pd.DataFrame(rows)


def _setting(learner: str) -> str:
    """"offline" for a learner of `depthrl offline` (named ``offline_d{D}``), else "learner"."""
    return "offline" if str(learner).startswith("offline_") else "learner"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `frame` (cells as str; '|' escaped)."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for values in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_cell(x) -> str:
    text = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(x))
    return text.replace("±", r"$\pm$").replace("–", "--")


def to_latex(frame: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``tabular`` of `frame` (needs ``\\usepackage{booktabs}``), wrapped in a ``table`` with `caption`."""
    spec = "l" * len(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + _latex_cell(caption) + "}")
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule",
              " & ".join(_latex_cell(c) for c in frame.columns) + r" \\", r"\midrule"]
    for values in frame.itertuples(index=False):
        lines.append(" & ".join(_latex_cell(v) for v in values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
