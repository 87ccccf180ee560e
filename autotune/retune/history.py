"""The record of a job's retuning: OUTPUT_DIR/retune/history.jsonl, one JSON event per line, appended and
fsynced (a crash loses at most the line being written; a torn last line is ignored on reading).

Events: `start` (a cycle began: its number, data fingerprint, mode and why, drift), `end` (how it ended:
promoted / kept / skipped / failed / abandoned, why, the challenger and the re-scored champion), `rollback`.
A cycle with a `start` and no `end` was killed or interrupted: the next `autotune retune` resumes it when the
data is unchanged, and records it `abandoned` otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
COMPLETED = ("promoted", "kept")  # cycles that searched and compared (a skip or a failure did not)


class History:
    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = self.home / HISTORY_FILE

    def events(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line (killed mid-write)
            if isinstance(event, dict) and "event" in event:
                out.append(event)
        return out

    def append(self, event: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line (killed mid-write) stays alone on its line
            while line:
                line = line[os.write(fd, line):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def cycles(self) -> list[dict[str, Any]]:
        """One record per cycle number: its start merged with its end (status `running` without an end)."""
        by_number: dict[int, dict[str, Any]] = {}
        for e in self.events():
            if e["event"] == "start":
                by_number[e["cycle"]] = {**e, "decision": "running"}
            elif e["event"] == "end" and e["cycle"] in by_number:
                by_number[e["cycle"]].update({k: v for k, v in e.items() if k not in ("event", "at")},
                                             ended_at=e.get("at"))
        return [by_number[n] for n in sorted(by_number)]

    def next_number(self) -> int:
        return max((c["cycle"] for c in self.cycles()), default=0) + 1

    def pending(self) -> dict[str, Any] | None:
        """The last cycle that started and never ended (killed, interrupted)."""
        open_ = [c for c in self.cycles() if c["decision"] == "running" and c.get("folder")]
        return open_[-1] if open_ else None

    def last_completed(self) -> dict[str, Any] | None:
        done = [c for c in self.cycles() if c["decision"] in COMPLETED]
        return done[-1] if done else None

    def lineage(self) -> list[dict[str, Any]]:
        """Every move of `champion`, oldest first: promotions by cycles and rollbacks."""
        moves = []
        for e in self.events():
            if e["event"] == "end" and e.get("decision") == "promoted":
                moves.append({"at": e.get("at"), "version": e.get("version"), "how": f"cycle {e['cycle']}",
                              "previous": e.get("champion_version")})
            elif e["event"] == "rollback":
                moves.append({"at": e.get("at"), "version": e.get("to"), "how": "rollback", "previous": e.get("from")})
        return moves


def fmt_time(ts: float | None) -> str:
    import time

    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def table_rows(cycles: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What `autotune history` prints per cycle (strings), oldest first."""
    rows = []
    for c in cycles:
        ch, champ = c.get("challenger") or {}, c.get("champion") or {}
        acc = ch.get("test_accuracy")
        ci = ch.get("test_accuracy_ci")
        diff, dci = champ.get("diff"), champ.get("diff_ci")
        rows.append({
            "cycle": str(c["cycle"]),
            "when": fmt_time(c.get("at")),
            "data": f"{c.get('fingerprint', '?')[:8]} ({c.get('rows', '?')} rows)",
            "drift": c.get("drift_summary") or "-",
            "mode": c.get("mode", "-"),
            "trials": "-" if c.get("trials") is None else str(c["trials"]),
            "challenger": "-" if acc is None else f"{acc:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
            "champion": ("-" if champ.get("accuracy") is None else
                         f"v{champ.get('version')} {champ['accuracy']:.4f}, diff {diff:+.4f}"
                         + (f" [{dci[0]:+.3f}, {dci[1]:+.3f}]" if dci else "")),
            "decision": f"{c['decision']}: {c.get('reason', '')}".strip().rstrip(":"),
            "champion_after": "-" if not c.get("champion_after") else f"v{c['champion_after']}",
        })
    return rows


def history_plot(cycles: list[dict[str, Any]], path: Path) -> Path | None:
    """Challenger and (re-scored) champion test accuracy on the frozen evaluation split, per cycle."""
    points = [(c["cycle"], (c.get("challenger") or {}).get("test_accuracy"), (c.get("champion") or {}).get("accuracy"),
               c["decision"]) for c in cycles]
    if not any(ch is not None for _, ch, _, _ in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [n for n, ch, _, _ in points if ch is not None]
    ax.plot(xs, [ch for _, ch, _, _ in points if ch is not None], "o-", label="challenger")
    cx = [n for n, _, cp, _ in points if cp is not None]
    if cx:
        ax.plot(cx, [cp for _, _, cp, _ in points if cp is not None], "s--", label="champion (re-scored)")
    for n, ch, _, decision in points:
        if ch is not None and decision == "promoted":
            ax.annotate("promoted", (n, ch), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("cycle")
    ax.set_ylabel("test accuracy (frozen split)")
    ax.set_xticks([n for n, *_ in points])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
