"""Run every benchmark in bench/, one after another, each in its own process.

    python bench/run_all.py --quick        # smoke run of each (what CI executes): minutes
    python bench/run_all.py                # the full benchmarks (quality.py's defaults take hours on 2 cores)

Benches: overhead.py (per-trial overhead of AutoTune's search vs a direct loop; it has no --quick flag, so the
quick run asks it for 4 trials instead of 12), quality.py (AutoTune vs its peers at equal wall-clock budgets;
--quick passed through), and issue 14's throughput.py (samples/s in a trial's loop vs a hand-written loop),
memory.py (peak RSS and optimizer state per method), search_scale.py (ms per suggestion / trial with 100 and
1,000 trials per Optuna storage), startup.py (`autotune validate` / `autotune status` wall seconds), prefix_cache.py
(frozen-prefix speed-up per k), orchestration.py (fixed-work trials through AutoTune vs bare Ray Tune vs a bare
Optuna loop) and issue 15's methods.py (every method side by side on real data), each with --quick passed through. Results go to --out-dir (overhead.py always writes bench/results/overhead.json).
Exit status: 0 when every bench exited 0, else 1; a summary line per bench is printed at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NEW = ("orchestration", "throughput", "memory", "search_scale", "startup", "prefix_cache",  # issue 14's benches
       "methods")  # issue 15's per-method table


def benches(quick: bool, out_dir: Path) -> list[tuple[str, list[str]]]:
    return [
        ("overhead", [str(HERE / "overhead.py"), *(["--trials", "4"] if quick else [])]),
        ("quality", [str(HERE / "quality.py"), "--out", str(out_dir / "quality.json"), *(["--quick"] if quick else [])]),
        *[(name, [str(HERE / f"{name}.py"), "--out", str(out_dir / f"{name}.json"), *(["--quick"] if quick else [])])
          for name in NEW],
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run of every bench")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--only", nargs="+", choices=["overhead", "quality", *NEW], default=None, help="run only these")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, cmd in benches(args.quick, args.out_dir.resolve()):
        if args.only and name not in args.only:
            continue
        print(f"=== {name}: {' '.join(['python', *[Path(c).relative_to(ROOT).as_posix() if c.startswith(str(ROOT)) else c for c in cmd]])}",
              flush=True)
        start = time.time()
        rc = subprocess.run([sys.executable, *cmd], cwd=ROOT).returncode
        results.append((name, rc, time.time() - start))
    print()
    for name, rc, secs in results:
        print(f"{name:<10} {'ok' if rc == 0 else f'FAILED (exit {rc})':<18} {secs:7.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
