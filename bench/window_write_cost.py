"""Window write cost: CPU microseconds per window that `WindowWriter.write` costs the actor and the replay server.

    python bench/window_write_cost.py                        # point_u_maze and ant, 1, 2 and 3 tables; ~2 min
    python bench/window_write_cost.py --envs point_u_maze --tables 2 --rounds 9
    python bench/window_write_cost.py --quick                # smoke run: point maze, 1 table, 2 rounds

What runs: a replay server in a child process (`replay.reverb_backend.start_server`, as the ``depthrl replay`` role
runs it; `bench.replay_overhead.ReplayServerProcess`) with ``--tables`` window tables, no rate limiter and room for
one round of writes (so the steady state, where every insert evicts the oldest window, is what is timed); this process writes the same batch of E synthetic windows (the env's
dims and episode length, `bench.replay_overhead.synthetic_windows`) through `replay.reverb_backend.WindowWriter`, as
an actor does, ``--writes-per-round`` times per round. Per round it reads the CPU seconds (user + system, all threads)
of this process and of the server with psutil and divides by the windows written; the medians over ``--rounds`` are
reported.

CPU time, not wall time: it is what the transport takes away from the env steps on a machine without a spare core,
and other jobs on a shared machine move it far less than they move wall time. Divided by T it is the actor's
per-step overhead: compare it with the CPU an env step costs (bench/actor_overhead.py prints both).

To compare two versions of the replay layout, run this file with each version on PYTHONPATH, e.g. with a git
worktree of the older commit: ``PYTHONPATH=/tmp/old python /tmp/old/bench/window_write_cost.py`` (or this file,
which only uses `WindowWriter`, `ReplayTablesConfig` and the bench helpers, all present since layout 1).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.replay_overhead import ReplayServerProcess, finish, machine_line, synthetic_windows


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(env_name: str, num_tables: int, args: argparse.Namespace, work_dir: Path) -> dict:
    import psutil

    from actors.envs.registry import make_env
    from replay import reverb_backend as rb
    from replay.schema import WindowSpec

    env = make_env(env_name)
    t = env.spec.episode_length
    spec = WindowSpec(t, env.spec.obs_dim, env.action_size)
    names = tuple(f"learner_{i}" for i in range(num_tables))
    per_write = args.windows_per_write or max(8, args.steps_per_write // t)
    config = rb.ReplayTablesConfig(learners=tuple(rb.LearnerTableConfig(n, None, 1) for n in names),
                                   max_size_windows=per_write * args.writes_per_round)
    windows = synthetic_windows(t, env.spec.obs_dim, env.action_size, per_write, t, seed=args.seed,
                                goal_dim=env.spec.goal_dim)
    me = psutil.Process()
    per_window_client, per_window_server = [], []
    with ReplayServerProcess(config, spec, work_dir) as server:
        server.wait_ready()
        server_process = psutil.Process(server.pid)
        with rb.WindowWriter(server.address, names, spec, flush_timeout_ms=120_000) as writer:
            for _ in range(args.writes_per_round):  # warm-up: connections, allocator arenas
                writer.write(windows)
            for _ in range(args.rounds):
                client0, server0 = _cpu_seconds(me), _cpu_seconds(server_process)
                for _ in range(args.writes_per_round):
                    writer.write(windows)
                count = args.writes_per_round * per_write
                per_window_client.append((_cpu_seconds(me) - client0) / count * 1e6)
                per_window_server.append((_cpu_seconds(server_process) - server0) / count * 1e6)
    client_us, server_us = statistics.median(per_window_client), statistics.median(per_window_server)
    row = {"env": env_name, "window_steps": t, "windows_per_write": per_write, "window_kb": spec.bytes_per_item() / 1e3, "tables": num_tables,
           "client_us_per_window": client_us, "server_us_per_window": server_us,
           "total_us_per_window": client_us + server_us, "total_us_per_step": (client_us + server_us) / t,
           "rounds": args.rounds}
    print(f"  {env_name} tables={num_tables}: client {client_us:.1f} + server {server_us:.1f} us per window "
          f"({(client_us + server_us) / t:.2f} us per env step)", flush=True)
    return row


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'env':<14} {'T':>5} {'KB/win':>7} {'tables':>6} {'client_us':>10} {'server_us':>10} {'total_us':>9} "
             f"{'us/step':>8}"]
    for r in rows:
        lines.append(f"{r['env']:<14} {r['window_steps']:>5} {r['window_kb']:>7.1f} {r['tables']:>6} "
                     f"{r['client_us_per_window']:>10.1f} {r['server_us_per_window']:>10.1f} "
                     f"{r['total_us_per_window']:>9.1f} {r['total_us_per_step']:>8.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="point_u_maze,ant", help="comma-separated env names (dims and T)")
    parser.add_argument("--tables", default="1,2,3", help="comma-separated learner table counts")
    parser.add_argument("--windows-per-write", type=int, default=0,
                        help="E: windows per `write` call; 0 picks --steps-per-write // T (at least 8)")
    parser.add_argument("--steps-per-write", type=int, default=25_600,
                        help="env steps per write when E is picked: 256 point-maze windows, 25 of Ant")
    parser.add_argument("--writes-per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: point_u_maze, 1 table, 2 short rounds")
    parser.add_argument("--json-out", default="", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.tables, args.rounds, args.writes_per_round = "point_u_maze", "1", 2, 4
    args.envs = [e for e in args.envs.split(",") if e]
    args.tables = [int(x) for x in args.tables.split(",") if x]
    if min(args.tables) <= 0 or min(args.steps_per_write, args.writes_per_round, args.rounds) <= 0:
        parser.error("--tables, --steps-per-write, --writes-per-round and --rounds must be positive")
    if args.windows_per_write < 0:
        parser.error("--windows-per-write must be positive (or 0 to pick it from --steps-per-write)")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    print(machine_line())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="window_write_cost_") as tmp:
        for env_name in args.envs:
            for num_tables in args.tables:
                rows.append(measure(env_name, num_tables, args, Path(tmp)))
    print(format_rows(rows))
    finish(args, wall_start, rows=rows)
    return rows


if __name__ == "__main__":
    main()
