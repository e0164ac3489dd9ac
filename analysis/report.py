"""`depthrl report DIR [--out DIR]`: the ablation tables, figures and run configurations of a run or grid directory,
as one ``report.md`` with its figures (PNG + PDF) and tables (Markdown, LaTeX, CSV) beside it.

Exit codes: 0 report written; 2 bad input (DIR missing or not a directory, no run directories below it, no metric
rows in any of them, the output cannot be written), with a message on stderr. Damaged files (a JSONL line cut short
by a crash, an unreadable coverage or probe file) do not stop the report: each is printed to stderr as a warning and
listed in the report's Warnings section, saying what was read and what was skipped.

Q-maps (``probes/<learner>.npz``, see `analysis.topology`): per (env, collector depth), the probe files of its run with
the lowest seed that has any are drawn into one figure, ``figures/qmap.png`` when there is one such figure and
``figures/qmap_c{depth}.png`` (``qmap_{env}_c{depth}.png`` with several envs) otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.coverage import coverage_frame, merge_by_collector_depth
from analysis.figures import (MEMORY_WARMUP_SECONDS, coverage_figure, diagnostics_figure, expressivity_figure,
                              learning_curves_figure, memory_figure, memory_slopes, qmap_figure, save_figure)
from analysis.load import LoadResult, RunInfo, load
from analysis.tables import (FINAL_METRICS, LAST_N_EVALS, PROBE_METRICS, ablation_matrix, ablation_table,
                             paired_differences, table_metrics, to_latex, to_markdown)
from analysis.topology import QMap, load_run_qmaps

__all__ = ["build_report", "main"]

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
TABLES_DIR = "tables"


class ReportError(Exception):
    """Input or output problem that ends `depthrl report` with exit code 2."""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="depthrl report",
        description="Tables and figures of a run directory or a grid of run directories, as DIR/report.md.",
    )
    parser.add_argument("dir", type=Path, help="a run directory, or any directory with run directories below it")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md, figures/ and tables/ go (default: DIR itself)")
    parser.add_argument("--last-n", type=int, default=LAST_N_EVALS,
                        help=f"final value = mean of the last N evaluations of a run (default {LAST_N_EVALS})")
    return parser.parse_args(argv)


def _figure_block(out: Path, fig, stem: str, caption: str) -> str:
    png, pdf = save_figure(fig, out / FIGURES_DIR, stem)
    return (f"![{caption}]({FIGURES_DIR}/{png.name})\n\n*{caption}* ([PDF]({FIGURES_DIR}/{pdf.name}))\n")


def _runs_table(result: LoadResult) -> pd.DataFrame:
    frame = result.frame
    rows = []
    for info in result.runs:
        mine = frame[frame["run"] == info.name]
        rows.append({
            "run": info.name, "kind": info.run_kind, "env": info.env, "seed": info.seed,
            "collector depth": info.collector_depth,
            "learner depths": ",".join(str(d) for d in info.learner_depths) or "–",
            "max env steps": int(mine["env_steps"].max()) if mine["env_steps"].notna().any() else "–",
            "rows": len(mine), "git revision": str(info.config.get("git_revision", "unknown"))[:12],
        })
    return pd.DataFrame(rows)


def _qmaps_by_collector_depth(runs: list[RunInfo], problems: list[str]) -> dict[tuple[str, int], list[QMap]]:
    """Per (env, collector depth): the Q-maps of its run with the lowest seed that has probe files (unreadable
    files are added to `problems`)."""
    chosen: dict[tuple[str, int], tuple[int, list[QMap]]] = {}
    for info in runs:
        if info.collector_depth is None:
            continue
        qmaps, run_problems = load_run_qmaps(info.path)
        problems.extend(run_problems)
        key = (str(info.env), int(info.collector_depth))
        seed = info.seed if info.seed is not None else 2**62  # a run without a seed comes last
        if qmaps and (key not in chosen or seed < chosen[key][0]):
            chosen[key] = (seed, qmaps)
    return {key: qmaps for key, (_, qmaps) in sorted(chosen.items())}


def build_report(root: Path, out: Path, last_n: int = LAST_N_EVALS) -> tuple[Path, str, list[str]]:
    """Write the report of `root` into `out`; returns (report path, the printed ablation table, problems).
    Raises ReportError on bad input (nothing is written then)."""
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    if last_n < 1:
        raise ReportError(f"--last-n must be >= 1, got {last_n}")
    result = load(root, warn=False)
    problems = list(result.problems)
    if not result.runs:
        raise ReportError(f"{root}: no run directories found (a run directory holds config.json and metrics/)"
                          + (f"; {len(problems)} skipped: " + "; ".join(problems) if problems else ""))
    frame = result.frame
    if not len(frame):
        raise ReportError(f"{root}: {len(result.runs)} run director(ies) but no metric rows in any of them")
    coverage, grids, coverage_problems = coverage_frame(result.runs)
    problems += coverage_problems
    qmaps = _qmaps_by_collector_depth(result.runs, problems)
    table = ablation_table(frame, last_n, coverage if len(coverage) else None)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a directory")
    try:
        return _write(root, out, result, table, coverage, grids, qmaps, problems, last_n)
    except OSError as e:
        raise ReportError(f"cannot write the report into {out}: {e}") from None


def _paired_matrix(pairs: pd.DataFrame) -> pd.DataFrame:
    """`paired_differences` as rows of strings: collector depth, learners compared, then one column per metric."""
    several_envs = pairs["env"].nunique(dropna=False) > 1
    rows = []
    for (env, depth, setting, deep, shallow), group in pairs.groupby(
            ["env", "collector_depth", "setting", "deep", "shallow"], sort=True, dropna=False):
        row = {"env": env} if several_envs else {}
        row["collector depth"] = "–" if pd.isna(depth) else str(int(depth))
        row["learners"] = f"{setting} d{deep} − d{shallow}"
        for r in group.itertuples():
            cell = f"{r.diff_mean:+.3f} ± " + ("n/a" if pd.isna(r.diff_se) else f"{r.diff_se:.3f}") + f" (n={r.n})"
            row[r.metric.replace("_", " ")] = cell + (" > 2 SE" if r.beyond_2se else "")  # |mean| > 2 SE
        rows.append(row)
    return pd.DataFrame(rows)


def _write(root, out, result, table, coverage, grids, qmaps, problems, last_n) -> tuple[Path, str, list[str]]:
    frame = result.frame
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLES_DIR).mkdir(exist_ok=True)
    md: list[str] = [f"# depthrl report: `{root}`\n",
                     f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from {len(result.runs)} run(s); "
                     f"{len(frame)} metric rows.\n"]
    if problems:
        md.append("## Warnings\n")
        md += [f"- {p}" for p in problems]
        md.append("")

    printed = ""
    md.append("## Ablation\n")
    md.append(f"Final value of a run = mean over its last {last_n} evaluations (fewer if it has fewer; "
              "the eval role of each learner). Cells: mean ± standard error over seeds (sample std, ddof=1, / "
              "sqrt(n)); n/a with one seed. *collector (own eval)*: the policy that collected the data; *learner "
              "dD*: a passive learner of depth D trained only on that data. Coverage: fraction of free maze cells "
              "the collector's data visited, the same over the bins of those cells (bin coverage), and the "
              "normalised entropy of the cell visitation.\n")
    metrics = table_metrics(frame)
    probes = [m for m in metrics if m in PROBE_METRICS]
    if probes:
        md.append("Critic probes (" + ", ".join(probes) + "): *topo rank corr geodesic / euclidean* = Spearman "
                  "correlation of the critic's energy with minus the maze's geodesic / Euclidean distance over fixed "
                  "(start, goal) pairs; *topo through wall fraction* = of the goal pairs where a wall makes the "
                  "nearer-by-Euclid goal the farther one along the maze, the fraction the critic ranks the maze's way "
                  "(1 follows the maze, 0 cuts through walls); *heldout critic accuracy / loss* = the critic on data "
                  "it was not trained on. Means are over the runs that log a metric (its n).\n")
    table.to_csv(out / TABLES_DIR / "ablation.csv", index=False)
    if len(table):
        for metric in metrics:
            if f"{metric}_mean" not in table:
                continue
            matrix = ablation_matrix(table, metric)
            text = to_markdown(matrix)
            if metric == FINAL_METRICS[0]:
                printed = f"final {metric} (mean ± SE over seeds):\n{text}"
            (out / TABLES_DIR / f"ablation_{metric}.md").write_text(text)
            (out / TABLES_DIR / f"ablation_{metric}.tex").write_text(
                to_latex(matrix, f"Final {metric.replace('_', ' ')}: mean ± SE over seeds."))
            md += [f"### Final {metric.replace('_', ' ')}\n", text,
                   f"([LaTeX]({TABLES_DIR}/ablation_{metric}.tex), [Markdown]({TABLES_DIR}/ablation_{metric}.md))\n"]
        md.append(f"All numbers: [CSV]({TABLES_DIR}/ablation.csv).\n")
        pairs = paired_differences(frame, last_n, metrics)
        if len(pairs):
            pairs.to_csv(out / TABLES_DIR / "paired_differences.csv", index=False)
            md.append("### Deep minus shallow learner, paired by run\n")
            md.append("Per run, the deepest learner's final value minus the shallowest's (same data, same seed); "
                      "mean ± SE over runs; *> 2 SE* when the mean difference is more than twice its standard error away "
                      "from 0 (either sign; for a loss, negative means the deeper learner is better).\n")
            md.append(to_markdown(_paired_matrix(pairs)))
            md.append(f"([CSV]({TABLES_DIR}/paired_differences.csv))\n")
    else:
        md.append("No evaluation rows: no ablation table.\n")
        printed = "no evaluation rows: no ablation table\n"

    md.append("## Expressivity\n")
    if (table["learner"] != "collector").any():
        md.append(_figure_block(out, expressivity_figure(table, "time_at_goal"), "expressivity_time_at_goal",
                                "Final time at goal against passive learner depth, one line per collector depth"))
        if "topo_through_wall_fraction" in metrics:
            md.append(_figure_block(out, expressivity_figure(table, "topo_through_wall_fraction"),
                                    "expressivity_topo_through_wall_fraction",
                                    "Final through-wall fraction (1 = the critic follows the maze) against passive "
                                    "learner depth, one line per collector depth"))
    else:
        md.append("No passive learners (single-process runs): no expressivity curve.\n")

    md.append("## Learning curves\n")
    evals = frame[frame["kind"] == "eval"]
    for metric in metrics:
        if metric in evals and evals[metric].notna().any():
            md.append(_figure_block(out, learning_curves_figure(frame, metric, ("eval",)), f"curves_{metric}",
                                    f"Evaluation {metric.replace('_', ' ')} per learner, against env steps and "
                                    "wall-clock time"))
    learners = frame[frame["kind"].isin(("collector", "learner"))]
    for metric in ("critic_loss", "actor_loss", "critic_accuracy"):
        if metric in learners and learners[metric].notna().any():
            md.append(_figure_block(out, learning_curves_figure(frame, metric, ("collector", "learner")),
                                    f"curves_{metric}", f"Training {metric.replace('_', ' ')} per learner"))

    md.append("## Exploration (coverage of the collector's data)\n")
    if len(coverage):
        md.append(to_markdown(coverage.assign(
            coverage_fraction=coverage["coverage_fraction"].map("{:.3f}".format),
            bin_coverage=coverage["bin_coverage"].map("{:.3f}".format),
            coverage_entropy=coverage["coverage_entropy"].map("{:.3f}".format))))
        merged = merge_by_collector_depth(coverage, grids)
        several_envs = len({env for env, _ in merged}) > 1
        maps = {(f"{env}, " if several_envs else "") + f"collector depth {depth} (all seeds)": grid
                for (env, depth), grid in merged.items()}
        md.append(_figure_block(out, coverage_figure(maps), "coverage_maps",
                                "Achieved-goal visits of all actors, summed over seeds, per collector depth"))
    else:
        md.append("No coverage files (`coverage/*.npz`, written by the actors of maze envs).\n")

    md.append("## Q-maps (the critic's energy over the maze)\n")
    if qmaps:
        several_envs = len({env for env, _ in qmaps}) > 1
        md.append("Per collector depth, the run with the lowest seed: each learner's critic energy from one start "
                  "to every point of the free space, beside minus the geodesic distance (what a critic that "
                  "follows the maze would draw).\n")
        for (env, depth), maps in qmaps.items():
            stem = "qmap" if len(qmaps) == 1 else (f"qmap_{env}_c{depth}" if several_envs else f"qmap_c{depth}")
            label = (f"{env}, " if several_envs else "") + f"collector depth {depth}"
            md.append(_figure_block(out, qmap_figure(maps), stem, f"Q-maps, {label}"))
    else:
        md.append("No probe files (`probes/*.npz`, written by the maze-topology probe).\n")

    md.append("## Diagnostics\n")
    if any(m in learners and learners[m].notna().any() for m in ("policy_lag", "update_to_data")):
        md.append(_figure_block(out, diagnostics_figure(frame), "diagnostics",
                                "Policy lag (param versions) and update-to-data ratio (grad steps per env step) "
                                "per learner over wall-clock time"))
    else:
        md.append("No policy_lag / update_to_data rows.\n")

    md.append("## Memory\n")
    slopes = memory_slopes(frame)
    if len(slopes):
        md.append(_figure_block(out, memory_figure(frame), "memory",
                                "Resident memory of each role's process over wall-clock time (first runs)"))
        slopes.to_csv(out / TABLES_DIR / "memory.csv", index=False)
        shown = slopes.assign(**{c: slopes[c].map(lambda v: f"{v:.1f}") for c in ("first_mib", "last_mib", "minutes")},
                              slope_mib_per_min=slopes["slope_mib_per_min"].map(lambda v: f"{v:+.3f}"))
        md.append(f"Least-squares slope after the first {MEMORY_WARMUP_SECONDS:.0f} s of each role "
                  f"([CSV]({TABLES_DIR}/memory.csv)):\n")
        md.append(to_markdown(shown.rename(columns=lambda c: c.replace("_", " "))))
    else:
        md.append("No rss_mib in the rows (runs logged before memory was recorded).\n")

    md.append("## Runs\n")
    md.append(to_markdown(_runs_table(result)))
    for info in result.runs:
        config = json.dumps(info.config.get("config", {}), indent=2)
        md += [f"<details><summary>{info.name}: configuration</summary>\n", "```json", config, "```",
               f"\ngit revision `{info.config.get('git_revision', 'unknown')}`, created "
               f"{info.config.get('created', 'unknown')}\n", "</details>\n"]

    path = out / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(path)
    return path, printed, problems


def main(argv: list[str]) -> int:
    args = _parse(argv)
    root = args.dir
    out = args.out if args.out is not None else root
    try:
        path, printed, problems = build_report(root, out, args.last_n)
    except ReportError as e:
        print(f"depthrl report: {e}", file=sys.stderr)
        return 2
    for message in problems:
        print(f"warning: {message}", file=sys.stderr)
    print(printed, end="")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
