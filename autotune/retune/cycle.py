"""One retuning cycle: `autotune retune JOB.yaml`.

A cycle is a job run with a derived config, not a second pipeline. Everything lives in OUTPUT_DIR/retune:

    history.jsonl        what every cycle did (see history.py)
    eval_split.jsonl     the frozen evaluation split: the test split of the first cycle, carried forward
    cycle-0003.yaml      the derived job of cycle 3 ...
    cycle-0003/          ... and its job folder (state, data, trials, artifact), resumable like any job

The cycles share the job's MLflow store and registered model (the job's own, OUTPUT_DIR/mlflow.db by
default, which `autotune submit` of the same job also writes) and its Optuna storage, with one study per
cycle (`<job>-cycle-0003`).

Steps: (1) read + clean the data and fingerprint it; unchanged data and a champion younger than
retune.max_champion_age_h -> skipped. (2) Drift between the champion's training rows and this cycle's.
(3) Warm start: the champion's configuration and the previous search's top-k are enqueued first, the space's
portfolio is off, the budget is retune.budget_s; drift past the thresholds (or nothing to start from) ->
cold start over the full space with the portfolio, budget widen_budget_s. (4) Train/validation are the new
rows minus the frozen split (each row's side fixed by a hash of its text, so rows stay where they were as the
data grows); test is the frozen split. Validate re-scores the champion on it; the min_improvement gate is
retune.margin with the paired bootstrap interval at retune.confidence above zero. (5) Deploy moves
`champion` last, only if it still points at the version compared against.

Two cycles of one job never run at once (an OS file lock on OUTPUT_DIR/retune, plus a PostgreSQL advisory
lock when the Optuna storage is PostgreSQL); the second is skipped, exit 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError, ConfigError, GateFailed
from autotune.pipeline.state import StateStore
from autotune.retune.history import History, history_plot

HOME = "retune"
EVAL_FILE = "eval_split.jsonl"


@dataclass
class CycleOutcome:
    cycle: int | None
    decision: str  # promoted | kept | skipped | failed
    reason: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.decision in ("promoted", "kept", "skipped") else 1


def retune(job_path: str | Path, now: float | None = None, console=None, address: str | None = None,
           started_at: float | None = None) -> CycleOutcome:
    """Run one cycle. `now`: the time the cycle says it is (ages, records); tests simulate nights with it."""
    from autotune.api import _console, load_job
    from autotune.lock import FolderLock, Holder, JobBusy, StudyLock
    from autotune.search.tuner import optuna_storage_url

    job = load_job(job_path)
    if not job.config.deploy.register_model or list(job.config.stages) != ["preprocess", "tune", "validate", "deploy"]:
        raise ConfigError([f"{job_path}: retuning promotes registered models: it needs all four stages and "
                           f"deploy.register_model: true (got stages {list(job.config.stages)}, "
                           f"register_model {job.config.deploy.register_model})"])
    console = console or _console()
    home = job.output_dir / HOME
    holder = Holder(command=f"autotune retune {job_path}")
    storage = optuna_storage_url(job)
    locks = [FolderLock(home)]
    if storage.startswith("postgresql"):
        locks.append(StudyLock(storage, f"retune:{job.config.name}"))  # two hosts, two folders: one cycle
    taken = []
    try:
        for lock in locks:
            lock.acquire(holder)
            taken.append(lock)
    except BaseException as exc:
        for lock in reversed(taken):
            lock.release()
        if not isinstance(exc, JobBusy):
            raise
        reason = f"a cycle for job {job.config.name} is already running ({exc.holder or 'holder unknown'})"
        console.print(f"skipped: {reason}")
        return CycleOutcome(None, "skipped", reason)
    try:
        return Cycle(job, Path(job_path), home, console, address, now, started_at).run()
    finally:
        for lock in reversed(taken):
            lock.release()


class Cycle:
    def __init__(self, job, job_path: Path, home: Path, console, address, now, started_at):
        from autotune.api import tracking_uri
        from autotune.search.tuner import optuna_storage_url

        self.job, self.job_path, self.home, self.console, self.address = job, job_path, home, console, address
        self.simulated = now is not None  # tests simulate nights; otherwise records carry the real time
        self.now = now if now is not None else time.time()
        self.started_at = started_at or time.time()
        self.cfg = job.config.retune
        self.name = job.config.tracking.registered_model or job.config.name
        self.experiment = job.config.tracking.experiment or job.config.name
        self.uri = tracking_uri(job)
        self.storage = optuna_storage_url(job)
        self.history = History(home)

    # --- the cycle ------------------------------------------------------------------------------
    def run(self) -> CycleOutcome:
        from autotune.pipeline.preprocess import prepare_job_data

        self.home.mkdir(parents=True, exist_ok=True)
        data = prepare_job_data(self.job)
        rows = [(t, data.labels[y]) for split in data.splits.values() for t, y in split]
        fp = content_fingerprint(rows)
        tracker = self.tracker()

        pending = self.history.pending()
        if pending is not None:
            deployed = StateStore(self.home / pending["folder"]).stage("deploy").status == "succeeded"
            if deployed:  # killed after deploy, before its record: the outcome is known, record it
                self._end(pending["cycle"], pending, tracker, "promoted", "")
                pending = None
            elif pending.get("fingerprint") != fp:
                self._abandon(pending, tracker, f"the data changed (fingerprint {fp[:8]}) before it finished")
                pending = None
        champion = tracker.version_by_alias(self.name, "champion")
        if pending is not None:
            n, start = pending["cycle"], pending
            self.console.print(f"cycle {n}: resuming (it was interrupted; same data {fp[:8]})")
            return self._execute(n, start, tracker, resume=True)
        n = self.history.next_number()
        skip = self._skip_reason(fp, champion)
        if skip:
            return self._skipped(n, fp, len(rows), skip, tracker, champion)
        start = self._plan(n, data, rows, fp, champion, tracker)
        self.history.append(start)
        return self._execute(n, start, tracker, resume=False)

    def _skip_reason(self, fp: str, champion) -> str | None:
        if champion is None:
            return None
        last_fp = self._last_fingerprint()
        if last_fp != fp:
            return None
        age_h = (self.now - champion.created) / 3600
        if age_h >= self.cfg.max_champion_age_h:
            return None
        return (f"data unchanged (fingerprint {fp[:8]}) and champion v{champion.version} is {age_h:.1f} h old "
                f"(max_champion_age_h {self.cfg.max_champion_age_h:g})")

    def _last_fingerprint(self) -> str | None:
        """The data fingerprint of the last search: the last completed cycle, else the job's own submit."""
        last = self.history.last_completed()
        if last is not None:
            return last.get("fingerprint")
        rows = _jsonl_rows(self.job.output_dir / "data", ("train", "validation", "test"))
        return content_fingerprint(rows) if rows else None

    def _plan(self, n: int, data, rows, fp: str, champion, tracker) -> dict[str, Any]:
        """Frozen split, drift, warm or cold, the derived job: the `start` event of the cycle."""
        current = dict(rows)
        frozen_all = self._frozen_eval(data)
        # rows the user deleted leave the frozen split; a corrected label is taken as it is now
        eval_rows = [(t, current[t]) for t, _ in frozen_all if t in current]
        dropped = len(frozen_all) - len(eval_rows)
        if dropped:
            self.console.print(f"cycle {n}: {dropped} rows of the frozen evaluation split are no longer in the data")
        frozen = {t for t, _ in frozen_all}
        val_share = self._val_share()
        learn = [(t, y) for t, y in rows if t not in frozen]
        split_of = {t: ("validation" if _bucket(t) < val_share else "train") for t, _ in learn}
        if not any(s == "validation" for s in split_of.values()) or not any(s == "train" for s in split_of.values()):
            raise ConfigError([f"{self.job_path}: data: too few rows outside the frozen evaluation split for a train "
                               f"and a validation side ({len(learn)} rows)"])

        drift, drift_reasons = self._drift(learn, champion)
        points, warm_from = self._warm_points(champion)
        if drift_reasons:
            mode, why = "cold", "drift: " + "; ".join(drift_reasons)
        elif not points:
            mode, why = "cold", "nothing to warm-start from (no champion configuration, no earlier search)"
        else:
            mode, why = "warm", f"warm start from {warm_from}"
        folder = self.home / f"cycle-{n:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        data_file = folder.with_name(f"cycle-{n:04d}.data.jsonl")
        with data_file.open("w", encoding="utf-8") as fh:
            for t, y in learn:
                fh.write(json.dumps({"text": t, "label": y, "split": split_of[t]}) + "\n")
            for t, y in eval_rows:
                fh.write(json.dumps({"text": t, "label": y, "split": "test"}) + "\n")
        job_file = self._write_job(n, folder, data_file, mode, points if mode == "warm" else [])
        self.console.print(f"cycle {n}: {mode} - {why}")
        if drift is not None:
            self.console.print(f"cycle {n}: drift vs the champion's data: {drift.summary()}")
        return {"event": "start", "cycle": n, "at": self.now, "fingerprint": fp, "rows": len(rows),
                "eval_rows": len(eval_rows), "eval_rows_dropped": dropped, "mode": mode, "mode_reason": why, "seeds": points if mode == "warm" else [],
                "drift": drift.to_dict() if drift else None, "drift_summary": drift.summary() if drift else None,
                "drift_exceeded": drift_reasons, "folder": folder.name, "job_file": job_file.name,
                "study": self._study(n),
                "champion_before": champion.version if champion else None}

    def _execute(self, n: int, start: dict[str, Any], tracker, resume: bool) -> CycleOutcome:
        from autotune import api
        from autotune.lock import JobBusy
        from autotune.pipeline.state import StateStore

        folder, job_file = self.home / start["folder"], self.home / start["job_file"]
        decision, reason = "promoted", ""
        try:
            with self._stores_in_env():
                if resume and StateStore(folder).job() is not None:
                    api.resume(folder, address=self.address, console=self.console, started_at=self.started_at)
                else:  # a new cycle starts clean, whatever an earlier folder of that number left
                    api.submit(job_file, address=self.address, force=True, console=self.console,
                               started_at=self.started_at)
        except GateFailed as exc:
            decision, reason = "kept", str(exc).removeprefix("validation gate failed, deploy skipped: ")
        except KeyboardInterrupt:
            self.console.print(f"cycle {n} interrupted: `autotune retune {self.job_path}` resumes it")
            raise
        except JobBusy:
            raise  # someone runs this cycle's folder by hand: it is not over, record nothing
        except AutotuneError as exc:
            self._end(n, start, tracker, "failed", str(exc)[:2000])
            raise
        record = self._end(n, start, tracker, decision, reason)
        return CycleOutcome(n, record["decision"], record["reason"], record)

    # --- pieces -----------------------------------------------------------------------------------
    @contextmanager
    def _stores_in_env(self):
        """The cycle's job file holds the stores' URLs masked (never a password on disk); the cycle's run gets
        the real ones as MLFLOW_TRACKING_URI / AUTOTUNE_OPTUNA_STORAGE, which take precedence."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "AUTOTUNE_OPTUNA_STORAGE")}
        os.environ["MLFLOW_TRACKING_URI"], os.environ["AUTOTUNE_OPTUNA_STORAGE"] = self.uri, self.storage
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _study(self, n: int) -> str:
        """The cycle's Optuna study: job, cycle and this folder (two hosts sharing a PostgreSQL storage number
        their cycles apart, so the names must not meet)."""
        tag = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:6]
        return f"{self.job.config.name}-cycle-{n:04d}-{tag}"

    def _end(self, n: int, start: dict[str, Any], tracker, decision: str, reason: str) -> dict[str, Any]:
        folder = self.home / start["folder"]
        val, dep, tune = (_outputs(folder, s) for s in ("validate", "deploy", "tune"))
        champion_before = (val.get("champion") or {}).get("version") or start.get("champion_before")
        version = dep.get("version")
        if decision == "promoted":
            if "champion" not in (dep.get("aliases") or []):
                decision = "kept"
                now_champ = tracker.alias_version(self.name, "champion")
                reason = (f"gates passed, but the champion moved to v{now_champ} during the cycle; v{version} "
                          "stays challenger")
            elif val.get("champion"):
                c = val["champion"]
                reason = (f"v{version} beats v{c['version']} by {c['diff']:+.4f} "
                          f"({c.get('ci_level', 0.95):.0%} CI {c['diff_ci'][0]:+.4f}..{c['diff_ci'][1]:+.4f})")
            else:
                reason = f"v{version} is the first champion"
        champion_after = tracker.alias_version(self.name, "champion")
        record = {"event": "end", "cycle": n, "at": self.now if self.simulated else time.time(),
                  "decision": decision, "reason": reason, "version": version if decision == "promoted" else None,
                  "challenger_version": version, "champion_version": champion_before,
                  "champion_after": champion_after, "trials": sum((tune.get("counts") or {}).values()) or None,
                  "challenger": {"test_accuracy": val.get("test_accuracy"),
                                 "test_accuracy_ci": val.get("test_accuracy_ci"), "n": val.get("n_test")} if val else None,
                  "champion": val.get("champion"), "best_method": tune.get("best_method"),
                  "best_knobs": tune.get("best_knobs"), "run_id": self._run_id(folder)}
        self.history.append(record)
        self.console.print(f"cycle {n}: {decision}" + (f" - {reason}" if reason else ""))
        self._log_cycle(n, start, record, tracker)
        return record

    def _skipped(self, n: int, fp: str, rows: int, reason: str, tracker, champion) -> CycleOutcome:
        run_id = tracker.start_parent(f"{self.job.config.name}-cycle-{n:04d}",
                                      {"autotune.job": self.job.config.name, "autotune.retune.cycle": str(n)})
        start = {"event": "start", "cycle": n, "at": self.now, "fingerprint": fp, "rows": rows, "mode": "skip",
                 "mode_reason": reason, "champion_before": champion.version if champion else None}
        self.history.append(start)
        record = {"event": "end", "cycle": n, "at": self.now, "decision": "skipped", "reason": reason,
                  "champion_after": champion.version if champion else None, "run_id": run_id}
        self.history.append(record)
        self._log_cycle(n, start, record, tracker)
        tracker.end(run_id, "FINISHED")
        self.console.print(f"cycle {n}: skipped - {reason}")
        return CycleOutcome(n, "skipped", reason, record)

    def _abandon(self, pending: dict[str, Any], tracker, why: str) -> None:
        """An interrupted cycle whose data is gone: close its records and say so."""
        folder = self.home / pending["folder"]
        run_id = self._run_id(folder)
        if run_id:
            for child in tracker.child_runs(run_id):
                if child.info.status == "RUNNING":
                    tracker.end(child.info.run_id, "KILLED")
            if tracker.run_status(run_id) == "RUNNING":
                tracker.end(run_id, "KILLED")
        self.history.append({"event": "end", "cycle": pending["cycle"], "at": self.now, "decision": "abandoned",
                             "reason": why, "run_id": run_id})
        self.console.print(f"cycle {pending['cycle']}: abandoned - {why}")

    def _log_cycle(self, n: int, start: dict[str, Any], end: dict[str, Any], tracker) -> None:
        """Tags, drift metrics and plots on the cycle's parent run (the job run the cycle made)."""
        run_id = end.get("run_id")
        if not run_id:
            return
        from autotune.retune.drift import DriftReport, drift_plot

        tracker.set_tags(run_id, {"autotune.retune.cycle": str(n), "autotune.retune.mode": start.get("mode", ""),
                                  "autotune.retune.decision": end["decision"],
                                  "autotune.retune.reason": end.get("reason", "")[:5000]})
        if start.get("drift"):
            report = DriftReport(**start["drift"])
            tracker.log_metrics(run_id, report.metrics())
            png = drift_plot(report, self.home / start["folder"] / "plots" / "drift.png")
            tracker.log_artifact(run_id, str(png), "retune")
        png = history_plot(self.history.cycles(), self.home / "plots" / "history.png")
        if png is not None:
            tracker.log_artifact(run_id, str(png), "retune")
        tracker.log_dict(run_id, {"start": start, "end": end}, "retune/cycle.json")

    def tracker(self):
        from autotune.tracking.mlflow_tracker import MlflowTracker, artifact_location

        return MlflowTracker(self.uri, self.experiment, artifact_location(self.uri))

    def _run_id(self, folder: Path) -> str | None:
        state = StateStore(folder).job()
        return state.parent_run_id if state else None

    def _val_share(self) -> float:
        s = self.job.config.data.split
        return s.validation / max(1e-9, s.train + s.validation)

    def _frozen_eval(self, data) -> list[tuple[str, str]]:
        """The frozen evaluation split: written at the first cycle from its test split, read ever after."""
        path = self.home / EVAL_FILE
        if path.is_file():
            return [(r["text"], r["label"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]
        # the job's own submit ran before: its test split is the one rows its champion never learned from
        rows = _jsonl_rows(self.job.output_dir / "data", ("test",)) or [(t, data.labels[y]) for t, y in data.splits["test"]]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
        tmp.replace(path)
        return rows

    def _drift(self, learn: list[tuple[str, str]], champion):
        from autotune.retune.drift import DriftThresholds, drift_report, embedder

        ref = self._champion_rows(champion)
        if not ref:
            return None, []
        d = self.cfg.drift
        report = drift_report(ref, learn, embed=embedder(self.job.config.model), sample=d.sample,
                              seed=self.job.config.seed)
        return report, report.exceeded(DriftThresholds(label_tv=d.label_tv, length_ks=d.length_ks,
                                                       oov_rate=d.oov_rate, embedding_mmd=d.embedding_mmd))

    def _champion_rows(self, champion) -> list[tuple[str, str]]:
        """The rows the champion learned from (train + validation of the search that made it)."""
        if champion is None:
            return []
        folders = [self.home / c["folder"] for c in reversed(self.history.cycles())
                   if c.get("version") == champion.version and c.get("folder")]
        folders.append(self.job.output_dir)  # the job's own submit
        for folder in folders:
            state = StateStore(folder).job()
            if state is None or (champion.run_id and state.parent_run_id != champion.run_id):
                continue
            rows = _jsonl_rows(folder / "data", ("train", "validation"))
            if rows:
                return rows
        return []

    def _warm_points(self, champion) -> tuple[list[dict[str, Any]], str]:
        """The champion's configuration, then the previous search's top-k, inside the space, without repeats."""
        space = self.job.space
        points, seen, sources = [], set(), []

        def add(method: str, knobs: dict[str, Any]) -> bool:
            if method not in space.methods:
                return False
            kept = space.contains(method, knobs)
            key = json.dumps([method, kept], sort_keys=True, default=str)
            if key in seen:
                return False
            seen.add(key)
            points.append({"method": method, "knobs": kept})
            return True

        if champion is not None and champion.tags.get("autotune.config"):
            try:
                cfg = json.loads(champion.tags["autotune.config"])
                if add(cfg["method"], cfg.get("knobs") or {}):
                    sources.append(f"champion v{champion.version}")
            except (ValueError, KeyError, TypeError):
                pass
        last = self.history.last_completed()
        folder = self.home / last["folder"] if last else self.job.output_dir
        tune = _outputs(folder, "tune")
        metric, mode = self.job.config.objective.metric, self.job.config.objective.mode
        trials = [t for t in tune.get("trials") or [] if t.get("status") != "failed" and metric in (t.get("best") or {})]
        # trials that ran their plan first (a pruned trial's early-rung score is not its final one), then by score
        trials.sort(key=lambda t: (t.get("status") == "pruned", -t["best"][metric] if mode == "max" else t["best"][metric]))
        added = sum(add(t["method"], t.get("knobs") or {}) for t in trials[: self.cfg.warm_start_top_k])
        if added:
            sources.append(f"the top {added} of {'cycle ' + str(last['cycle']) if last else 'the job’s search'}")
        return points, " and ".join(sources)

    def _write_job(self, n: int, folder: Path, data_file: Path, mode: str, points: list) -> Path:
        import yaml

        from autotune.redact import redact

        job, cfg = self.job, self.cfg
        d = job.resolved_dict()
        d["output_dir"] = str(folder)
        d["stages"] = ["preprocess", "tune", "validate", "deploy"]
        d["data"] = {**d["data"], "path": str(data_file), "format": "jsonl", "text_column": "text",
                     "label_column": "label", "split_column": "split", "max_examples": None}
        # the job's own stores (explicit, so that they do not default into the cycle's folder)
        if job.config.tracking.uri is None and "MLFLOW_TRACKING_URI" not in os.environ:
            d["tracking"]["uri"] = self.uri
        d["tracking"]["experiment"] = self.experiment
        d["tracking"]["registered_model"] = self.name
        if job.config.storage.optuna_url is None and "AUTOTUNE_OPTUNA_STORAGE" not in os.environ:
            d["storage"]["optuna_url"] = self.storage
        d["search"]["study_name"] = self._study(n)
        d["search"]["initial_points"] = points
        d["search"]["portfolio"] = mode != "warm"
        warm = mode == "warm"
        d["budget"] = {**d["budget"], "wall_clock_s": cfg.budget_s if warm else cfg.cold_budget_s,
                       "num_trials": cfg.num_trials if warm else cfg.widen_num_trials, "time_budget_s": None}
        d["validate"] = {**d["validate"], "min_improvement": cfg.margin, "min_improvement_confidence": cfg.confidence}
        path = folder.with_name(f"cycle-{n:04d}.yaml")
        header = (f"# cycle {n} of `autotune retune {self.job_path}` ({mode}); derived from the job file, "
                  "written by autotune - edit the job file instead\n")
        path.write_text(redact(header + yaml.safe_dump(d, sort_keys=False)), encoding="utf-8")
        return path


def content_fingerprint(rows) -> str:
    """The data as a set of (text, label) rows: a reordered file is the same data."""
    h = hashlib.sha256()
    for t, y in sorted(rows):
        h.update(json.dumps([t, y]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _jsonl_rows(folder: Path, splits) -> list[tuple[str, str]]:
    rows = []
    for split in splits:
        path = Path(folder) / f"{split}.jsonl"
        if path.is_file():
            rows += [(r["text"], r["label"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]
    return rows


def _bucket(text: str) -> float:
    """A row's fixed place in [0, 1): its side (train / validation) never changes as the data grows."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _outputs(folder: Path, stage: str) -> dict[str, Any]:
    """A stage's outputs in a job folder, if it succeeded."""
    state = StateStore(Path(folder)).stage(stage)
    return state.outputs if state.status == "succeeded" else {}


def rollback(job_path: str | Path, to: str | None = None, now: float | None = None, console=None) -> dict[str, Any]:
    """Move `champion` back: to version `to`, or to the champion before the current one."""
    from autotune.api import _console, load_job
    from autotune.lock import FolderLock, Holder, JobBusy

    job = load_job(job_path)
    console = console or _console()
    home = job.output_dir / HOME
    lock = FolderLock(home)
    try:
        lock.acquire(Holder(command=f"autotune rollback {job_path}"))
    except JobBusy as exc:
        raise JobBusy(f"cannot roll back while a cycle runs: {exc}") from None
    try:
        cyc = Cycle(job, Path(job_path), home, console, None, now, None)
        tracker = cyc.tracker()
        current = tracker.alias_version(cyc.name, "champion")
        if current is None:
            raise ConfigError([f"{job_path}: registered model {cyc.name!r} has no champion to roll back"])
        target = str(to) if to is not None else _previous_champion(cyc.history, current)
        if target is None:
            raise ConfigError([f"{job_path}: champion v{current} has no earlier champion in the retuning history; "
                               "name one with --to VERSION"])
        if tracker.model_version(cyc.name, target) is None:
            raise ConfigError([f"--to: {cyc.name!r} has no version {target}"])
        if target == current:
            raise ConfigError([f"--to: v{target} is already the champion"])
        moved = tracker.move_alias(cyc.name, "champion", target, expected=current)
        if moved is not None:
            raise JobBusy(f"the champion of {cyc.name!r} moved to v{moved} meanwhile; nothing rolled back")
        tracker.set_version_tags(cyc.name, target, {"autotune.rollback": f"champion again (was v{current})"})
        event = {"event": "rollback", "at": cyc.now, "from": current, "to": target}
        cyc.history.append(event)
        console.print(f"champion of {cyc.name}: v{current} -> v{target} (rollback recorded in {cyc.history.path})")
        return event
    finally:
        lock.release()


def _previous_champion(history: History, current: str) -> str | None:
    """The version that was champion before `current` became it (the last move to `current`)."""
    moves = history.lineage()
    for move in reversed(moves):
        if move["version"] == current:
            return move.get("previous")
    return None
