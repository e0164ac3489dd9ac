"""Replay memory: server RSS per stored env step / raw bytes of that step, with 1, 2 and 3 learner tables.

    python bench/replay_memory.py                           # point_u_maze and ant, 1e5 and 1e6 steps, 1/2/3 tables
    python bench/replay_memory.py --envs ant --tables 1,3 --steps 100000,1000000,2000000
    python bench/replay_memory.py --quick                   # smoke run: point maze, 2e4 and 1e5 steps, 1 and 2 tables

What runs: a replay server in a child process (`replay.reverb_backend.start_server`, as the ``depthrl replay`` role
runs it; `bench.replay_overhead.ReplayServerProcess`) with one window table per learner, all with the same capacity
and Fifo remover (`experiments.compose.tables_for`'s layout), no rate limiter. This process writes windows through
`replay.reverb_backend.WindowWriter` (each window appended once, one item per table referencing it) until the tables
hold each ``--steps`` total; at each mark the server's resident set size is read with psutil.

Reported per mark: ``(RSS - RSS of the idle server) / stored env steps`` divided by the raw bytes of one env step
(obs (S+G) float32 + action A float32 + traj_id int32, plus the window's provenance (int32 + 2 int64) spread over its
T steps). Reverb stores chunks snappy-compressed, so a ratio below 1 is possible; per-item and per-chunk bookkeeping
pushes it up, the more so the shorter the window. With several tables, the chunks are shared and only the items are
per table: the ratio should stay close to that of one table.

Data: synthetic windows (random-walk states, a goal constant per episode, uniform actions; see
`bench.replay_overhead.synthetic_windows`) of the env's dims and episode length, so that 1e6 Ant steps need no
rollouts. Each batch is generated fresh: nothing repeats, as in a run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.replay_overhead import ReplayServerProcess, log, finish, machine_line, synthetic_windows, write_windows

SETTLE_SECONDS = 1.0
"""Pause before reading RSS, so that the server's worker threads have finished with the last writes."""


def raw_bytes_per_step(spec) -> float:
    """Payload bytes of one env step: per-step fields plus the window's provenance divided by its T steps."""
    per_step = 0.0
    for name, (shape, dtype) in spec.shapes_and_dtypes().items():
        size = dtype.itemsize
        for dim in shape:
            size *= dim
        per_step += size / spec.window_length
    return per_step


def measure(env_name: str, num_tables: int, marks_steps: list[int], args: argparse.Namespace, work_dir: Path) -> dict:
    import psutil

    from actors.envs.registry import make_env
    from replay import reverb_backend as rb
    from replay.schema import WindowSpec

    env = make_env(env_name)
    t = args.window_steps or env.spec.episode_length
    spec = WindowSpec(t, env.spec.obs_dim, env.action_size)
    capacity_windows = -(-max(marks_steps) // t)
    names = tuple(f"learner_{i}" for i in range(num_tables))
    tables = rb.ReplayTablesConfig(
        learners=tuple(rb.LearnerTableConfig(name, samples_per_insert=None, min_size_to_sample_windows=1)
                       for name in names),
        max_size_windows=capacity_windows, param_roles=())
    raw = raw_bytes_per_step(spec)
    results = []
    with ReplayServerProcess(tables, spec, work_dir) as server:
        server.wait_ready()
        process = psutil.Process(server.pid)
        writer = rb.WindowWriter(server.address, names, spec, flush_timeout_ms=120_000)
        time.sleep(SETTLE_SECONDS)
        rss_idle = process.memory_info().rss
        written_windows, batch = 0, args.windows_per_write
        start = time.perf_counter()
        for mark in marks_steps:
            target_windows = -(-mark // t)
            while written_windows < target_windows:
                n = min(batch, target_windows - written_windows)
                windows = synthetic_windows(t, spec.obs_dim, spec.action_dim, n, env.spec.episode_length,
                                            args.seed + written_windows, env.spec.goal_dim)
                write_windows(writer, windows, per_write=n)
                written_windows += n
            time.sleep(SETTLE_SECONDS)
            rss = process.memory_info().rss
            infos = rb.server_info(rb.wait_for_server(server.address, 30.0), 30.0)
            sizes = [int(infos[name].current_size) for name in names]
            if sizes != [written_windows] * num_tables:
                raise RuntimeError(f"tables hold {sizes} windows, expected {written_windows} each")
            stored_steps = written_windows * t
            per_step = (rss - rss_idle) / stored_steps
            results.append({
                "env": env_name, "tables": num_tables, "window_steps": t, "stored_steps": stored_steps,
                "raw_bytes_per_step": raw, "rss_idle_mib": rss_idle / 2**20, "rss_mib": rss / 2**20,
                "rss_bytes_per_step": per_step, "ratio": per_step / raw,
                "write_seconds": time.perf_counter() - start,
            })
            log(f"  {env_name} tables={num_tables}: {stored_steps:,} steps stored, RSS {rss / 2**20:.0f} MiB "
                f"(idle {rss_idle / 2**20:.0f}), {per_step:.1f} B/step = {per_step / raw:.2f} x raw")
        writer.close()
    return results


def format_rows(rows: list[dict]) -> str:
    header = (f"{'env':<14} {'T':>5} {'tables':>6} {'stored_steps':>12} {'raw_B/step':>10} {'rss_B/step':>10} "
              f"{'rss/raw':>7} {'vs 1 table':>10} {'RSS_MiB':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['env']:<14} {r['window_steps']:5d} {r['tables']:6d} {r['stored_steps']:12,d} "
            f"{r['raw_bytes_per_step']:10.1f} {r['rss_bytes_per_step']:10.1f} {r['ratio']:7.3f} "
            f"{r.get('vs_one_table', float('nan')):10.3f} {r['rss_mib']:8.0f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="point_u_maze,ant", help="comma-separated env names (dims and T)")
    parser.add_argument("--tables", default="1,2,3", help="comma-separated learner table counts")
    parser.add_argument("--steps", default="100000,1000000", help="comma-separated stored env steps to measure at")
    parser.add_argument("--window-steps", type=int, default=0, help="T; 0 uses the env's episode length")
    parser.add_argument("--windows-per-write", type=int, default=64, help="windows generated and written per call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: point_u_maze, 2e4 and 1e5 steps, 1-2 tables")
    parser.add_argument("--json-out", default="", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.tables, args.steps = "point_u_maze", "1,2", "20000,100000"
    args.envs = [e for e in args.envs.split(",") if e]
    args.tables = [int(x) for x in args.tables.split(",") if x]
    args.steps = sorted(int(float(x)) for x in args.steps.split(",") if x)
    if min(args.tables) <= 0 or min(args.steps) <= 0 or args.windows_per_write <= 0:
        parser.error("--tables, --steps and --windows-per-write must be positive")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    print(machine_line())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="replay_memory_") as tmp:
        for env_name in args.envs:
            for num_tables in args.tables:
                rows.extend(measure(env_name, num_tables, args.steps, args, Path(tmp)))
    for row in rows:
        base = [r for r in rows
                if r["tables"] == 1 and r["env"] == row["env"] and r["stored_steps"] == row["stored_steps"]]
        row["vs_one_table"] = row["ratio"] / base[0]["ratio"] if base else float("nan")
    print(format_rows(rows))
    finish(args, wall_start, rows=rows)
    return rows


if __name__ == "__main__":
    main()
