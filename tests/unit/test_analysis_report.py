"""`depthrl report` (analysis/report.py) on the synthetic grid of test_analysis_tables: report.md holds the tables
and links figure and table files that exist; bad input exits 2 and writes nothing; a truncated JSONL still gives a
report, with a warning saying what was read and skipped. And analysis/ stays free of JAX, Reverb and TensorFlow."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.report import main
from analysis.topology import FreeSpaceGrid, qmap_path, save_qmap
from tests.unit.test_analysis_load import write_run
from tests.unit.test_analysis_tables import add_probe_metrics, make_grid

REPO = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    """The report of the synthetic grid, written with --out next to it; (root, out, exit code, stdout)."""
    root = make_grid(tmp_path_factory.mktemp("grid") / "grid")
    (root / "grid.json").write_text('{"collector_depths": [4, 16], "seeds": [0, 1, 2]}\n')
    out = root.parent / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(root), "--out", str(out)])
    return root, out, code, stdout.getvalue()


def test_report_on_a_grid_writes_tables_figures_and_configs(grid_report):
    root, out, code, _ = grid_report
    assert code == 0
    assert not (root / "report.md").exists()  # --out was honoured
    report = (out / "report.md").read_text()
    # The ablation table, with the hand-computed numbers of test_analysis_tables.
    assert "| 4 | 20.00 ± 5.77 (n=3) | 3.00 ± 1.53 (n=3) | 40.00 ± 0.00 (n=3) | 0.29 ± 0.08 (n=3) |" in report
    assert "| 16 | 50.00 ± n/a (n=1) | 7.00 ± n/a (n=1) | 60.00 ± n/a (n=1) | – | – |" in report
    assert "0.50 ± 0.29 (n=3)" in report  # success_any of the C=4 collector
    # Every relative link points at a file that exists; each figure comes as PNG and PDF.
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert links and all((out / link).is_file() for link in links), [l for l in links if not (out / l).is_file()]
    pngs = {Path(link).stem for link in links if link.endswith(".png")}
    assert pngs == {"expressivity_time_at_goal", "curves_time_at_goal", "curves_success_any", "curves_critic_loss",
                    "coverage_maps", "diagnostics", "memory"}  # memory: rss_mib is in every logged row
    assert all((out / "figures" / f"{stem}.pdf").is_file() for stem in pngs)
    # Tables as Markdown, LaTeX and CSV; the CSV holds the unrounded numbers.
    assert r"20.00 $\pm$ 5.77 (n=3)" in (out / "tables" / "ablation_time_at_goal.tex").read_text()
    with open(out / "tables" / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    first = rows[0]
    assert (first["collector_depth"], first["learner"], first["n_seeds"]) == ("4", "collector", "3")
    assert float(first["time_at_goal_se"]) == pytest.approx(5.773502691896258)
    # Run configurations, collapsed, one per run.
    assert report.count("<details><summary>") == 4 and '"collector_depth": 16' in report
    assert "## Warnings" not in report


def test_report_prints_the_table_and_the_path(grid_report):
    _, out, _, stdout = grid_report
    assert "| 4 | 20.00 ± 5.77 (n=3) |" in stdout
    assert stdout.strip().endswith(f"report: {out / 'report.md'}")


def test_a_truncated_jsonl_still_gives_a_report_with_a_warning(tmp_path, capsys):
    # A train run (one learner, no passive learners): also checks the report of a single-process run.
    run = write_run(tmp_path / "train", collector_depth=4, seed=0, kind="train", finals={"collector": (12.0, 0.3)})
    path = run / "metrics" / "learner.jsonl"
    with open(path, "a") as f:
        f.write('{"role": "learner", "wall_time": 31.0, "env_steps": 80')
    assert main([str(run)]) == 0
    stderr = capsys.readouterr().err
    assert f"warning: {path}: read 3 row(s), skipped 1 unreadable line(s)" in stderr
    report = (run / "report.md").read_text()
    assert "## Warnings" in report and f"{path}: read 3 row(s), skipped 1" in report
    assert "| 4 | 12.00 ± n/a (n=1) |" in report
    assert "no expressivity curve" in report
    assert (run / "figures" / "diagnostics.png").is_file()  # update_to_data is logged by the train learner too


def test_a_run_with_probe_files_and_probe_metrics_gets_a_qmap_figure_and_probe_tables(tmp_path, capsys):
    run = write_run(tmp_path / "r", collector_depth=4, seed=0, learner_depths=(64,))
    for role, value in (("eval_collector", 0.2), ("eval_learner_d64", 0.9)):
        add_probe_metrics(run, role, {"topo_through_wall_fraction": value, "topo_rank_corr_geodesic": value - 0.1})
    grid = FreeSpaceGrid.from_layout("#####/#RGG#/###G#/#GGG#/#####".split("/"), scaling=2.0, nodes_per_cell=4)
    start = int(grid.nearest_node([2.0, 2.0]))
    geodesic = grid.geodesic_from([start])[0]
    euclidean = grid.euclidean_from([start])[0]
    for learner, depth, energy in (("collector", 4, -euclidean), ("learner_d64", 64, -geodesic)):
        save_qmap(qmap_path(run, learner), energy=energy, grid=grid, start_xy=grid.node_xy[start], env_steps=6000,
                  grad_steps=300, learner=learner, critic_depth=depth)
    (run / "probes" / "broken.npz").write_bytes(b"not a zip")
    assert main([str(run)]) == 0
    assert "broken.npz" in capsys.readouterr().err  # a damaged probe file is a warning, not a failure
    report = (run / "report.md").read_text()
    assert "![Q-maps, collector depth 4](figures/qmap.png)" in report
    assert (run / "figures" / "qmap.png").stat().st_size > 0 and (run / "figures" / "qmap.pdf").is_file()
    assert "### Final topo through wall fraction" in report and "| 4 | 0.20 ± n/a (n=1) | 0.90 ± n/a (n=1) |" in report
    assert "### Final topo rank corr geodesic" in report and "### Final heldout" not in report  # not logged
    assert (run / "figures" / "expressivity_topo_through_wall_fraction.png").is_file()
    assert (run / "tables" / "ablation_topo_through_wall_fraction.tex").is_file()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert all((run / link).is_file() for link in links)


def test_a_grid_draws_one_qmap_figure_per_collector_depth_from_its_lowest_seed(tmp_path):
    root = make_grid(tmp_path / "grid")
    grid = FreeSpaceGrid.from_layout("#####/#RGG#/###G#/#GGG#/#####".split("/"), scaling=2.0, nodes_per_cell=2)
    for run, depth in (("c4_s2", 4), ("c4_s1", 4), ("c16_s0", 16)):
        save_qmap(qmap_path(root / "runs" / run, "collector"), energy=np.zeros(grid.n_nodes), grid=grid,
                  start_xy=grid.node_xy[0], env_steps=1, grad_steps=1, learner="collector", critic_depth=depth)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "(figures/qmap_c4.png)" in report and "(figures/qmap_c16.png)" in report
    assert not (tmp_path / "out" / "figures" / "qmap.png").exists()


@pytest.mark.parametrize("setup", ["missing", "empty", "no_rows", "a_file"])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, setup):
    target = tmp_path / "target"
    if setup == "empty":
        (target / "some" / "dir").mkdir(parents=True)
    elif setup == "no_rows":
        run = write_run(target / "r", collector_depth=4, seed=0)
        for p in (run / "metrics").iterdir():
            p.write_text("")
    elif setup == "a_file":
        target.write_text("not a dir")
    before = _snapshot(tmp_path)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthrl report: ") and str(target) in err
    assert _snapshot(tmp_path) == before


def test_the_registered_cli_command_reaches_the_report(tmp_path):
    # The success path through the real CLI is tests/e2e/test_report.py; here only the cheap refusal.
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    missing = subprocess.run([sys.executable, "-m", "experiments.cli", "report", str(tmp_path / "nope")], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "nope").exists()


CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
bad = [m for m in ("jax", "jaxlib", "flax", "reverb", "tensorflow") if m in sys.modules]
print(bad)
sys.exit(1 if bad else 0)
"""


def test_analysis_and_coverage_modules_load_no_jax_reverb_or_tensorflow(tmp_path):
    modules = ["analysis.load", "analysis.tables", "analysis.coverage", "analysis.topology", "analysis.figures",
               "analysis.report", "actors.coverage"]
    result = subprocess.run([sys.executable, "-c", CHECK, *modules], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    # The check can fail: a module importing (a stand-in for) jax is caught.
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("")
    (tmp_path / "uses_jax.py").write_text("import jax\n")
    caught = subprocess.run([sys.executable, "-c", CHECK, "uses_jax"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "PATH": "/usr/bin:/bin"})
    assert caught.returncode == 1 and "jax" in caught.stdout
