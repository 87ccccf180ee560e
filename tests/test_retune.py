"""Scheduled retuning through the real engines (Ray, Optuna storage, MLflow registry) on the tiny model.

Simulated nights with a controllable clock (`now=`): night 1 makes the first champion (a cold start), night
2 sees the same data and skips, night 3 sees appended rows and warm-starts (the enqueued configurations are
the first trials), night 4 sees shifted labels and widens. Then rollback, the history command, two cycles
at once (file lock; PostgreSQL advisory lock across two folders), and a cycle killed mid-search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import synthetic_rows

pytestmark = pytest.mark.ray

DAY = 86400.0


def write_csv(path: Path, rows) -> Path:
    return conftest.write_csv(path, rows, header=("review", "sentiment"))


def retune_job(tmp_path: Path, model_dir: Path, data: Path, name: str = "nightly", extra: str = "") -> Path:
    from tests.test_integration import job_yaml

    return job_yaml(tmp_path, model_dir, data, f"""
        search:
          space:
            methods:
              head: {{learning_rate: {{low: 3.0e-3, high: 3.0e-2, log: true}}}}
              full: {{learning_rate: {{low: 1.0e-3, high: 3.0e-3, log: true}}}}
        training: {{epochs: 2, batch_size: 16, evals_per_epoch: 1, warmup_ratio: 0.0}}
        objective: {{metric: val_accuracy}}
        scheduler: {{kind: fifo}}
        retune:
          budget_s: 900
          num_trials: 3
          widen_num_trials: 2
          warm_start_top_k: 2
          max_champion_age_h: 48
          drift: {{sample: 64}}
        {extra}
    """, name=name)


@pytest.fixture(scope="module")
def nights(tiny_model_dir, tmp_path_factory):
    """Four nights of one job; returns the outcomes, the job file and the data file."""
    from autotune.retune.cycle import retune

    tmp = tmp_path_factory.mktemp("nights")
    data = write_csv(tmp / "reviews.csv", synthetic_rows(200))
    job = retune_job(tmp, tiny_model_dir, data)
    t0 = time.time()
    out = {1: retune(job, now=t0 + 0 * DAY)}
    out[2] = retune(job, now=t0 + 1 * DAY)
    more = [(t + " again", y) for t, y in synthetic_rows(60, seed=3)]
    write_csv(data, synthetic_rows(200) + more)
    out[3] = retune(job, now=t0 + 2 * DAY)
    shifted = [(t + " later", "neg") for t, _ in synthetic_rows(300, seed=4)]  # mostly one label now
    write_csv(data, synthetic_rows(200) + more + shifted)
    out[4] = retune(job, now=t0 + 3 * DAY)
    return out, job, tmp / "out" / "retune"


def _tracker(home: Path):
    from autotune.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(f"sqlite:///{home.parent / 'mlflow.db'}", "nightly", create=False)


def test_night_1_makes_the_first_champion_from_a_cold_start(nights):
    out, _, home = nights
    first = out[1]
    assert first.decision == "promoted" and first.exit_code == 0, first
    assert first.reason.endswith("is the first champion")
    start = [e for e in map(json.loads, (home / "history.jsonl").read_text().splitlines()) if e["event"] == "start"][0]
    assert start["mode"] == "cold" and "nothing to warm-start from" in start["mode_reason"]
    assert _tracker(home).alias_version("nightly", "champion") == first.record["version"]
    frozen = (home / "eval_split.jsonl").read_text().splitlines()
    assert frozen and (home / "cycle-0001" / "data" / "test.jsonl").read_text().splitlines() == \
        [json.dumps({"text": json.loads(r)["text"], "label": json.loads(r)["label"]}) for r in frozen]


def test_night_2_same_data_young_champion_is_skipped(nights):
    out, _, home = nights
    assert out[2].decision == "skipped" and out[2].exit_code == 0
    assert "data unchanged" in out[2].reason and "h old" in out[2].reason
    assert not (home / "cycle-0002").exists()  # no search, no folder


def test_night_3_appended_rows_warm_start_first_trials_are_the_enqueued_ones(nights):
    out, _, home = nights
    third = out[3]
    assert third.decision in ("promoted", "kept"), third
    start = [e for e in map(json.loads, (home / "history.jsonl").read_text().splitlines())
             if e["event"] == "start" and e["cycle"] == 3][0]
    assert start["mode"] == "warm" and start["mode_reason"].startswith("warm start from champion v1")
    seeds = start["seeds"]
    assert 1 <= len(seeds) <= 3
    trials = sorted(json.loads((home / "cycle-0003" / "state" / "tune.json").read_text())["outputs"]["trials"],
                    key=lambda t: t["number"])
    for seed, trial in zip(seeds, trials):
        assert trial["method"] == seed["method"]
        for k, v in seed["knobs"].items():
            assert trial["knobs"][k] == pytest.approx(v), (k, seed, trial)
    # the frozen split is the test split again; none of its rows is learned from
    frozen = {json.loads(r)["text"] for r in (home / "eval_split.jsonl").read_text().splitlines()}
    cyc = home / "cycle-0003" / "data"
    assert {json.loads(r)["text"] for r in (cyc / "test.jsonl").read_text().splitlines()} == frozen
    learned = {json.loads(r)["text"] for s in ("train", "validation") for r in (cyc / f"{s}.jsonl").read_text().splitlines()}
    assert not learned & frozen and any(t.endswith(" again") for t in learned)
    # the rule: promoted exactly when the improvement's interval lies above zero (margin 0)
    champ = third.record["champion"]
    assert champ["version"] == "1"
    assert (third.decision == "promoted") == (champ["diff"] >= 0 and champ["diff_ci"][0] > 0), champ


def test_night_4_shifted_labels_widen_the_search(nights):
    out, _, home = nights
    assert out[4].decision in ("promoted", "kept"), out[4]
    start = [e for e in map(json.loads, (home / "history.jsonl").read_text().splitlines())
             if e["event"] == "start" and e["cycle"] == 4][0]
    assert start["mode"] == "cold" and start["mode_reason"].startswith("drift: label distribution moved")
    assert start["drift"]["label_tv"] > 0.15 and start["seeds"] == []
    derived = (home / "cycle-0004.yaml").read_text()
    assert "portfolio: true" in derived and "num_trials: 2" in derived
    # every cycle's run is tagged with its number, drift metrics and the history plot are on it
    tracker = _tracker(home)
    run = tracker.client.get_run(out[4].record["run_id"])
    assert run.data.tags["autotune.retune.cycle"] == "4" and "drift.label_tv" in run.data.metrics
    arts = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "retune")}
    assert {"retune/drift.png", "retune/history.png", "retune/cycle.json"} <= arts
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`autotune.retune.cycle` = '2'")
    assert len(runs) == 1 and runs[0].data.tags["autotune.retune.decision"] == "skipped"
    assert not tracker.client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_history_command_and_rollback(nights):
    _, job, home = nights
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "autotune.cli", "history", str(job), "--json"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    hist = json.loads(res.stdout)
    assert [c["decision"] for c in hist["cycles"]][:2] == ["promoted", "skipped"] and len(hist["cycles"]) == 4
    table = subprocess.run([sys.executable, "-m", "autotune.cli", "history", str(job)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert table.returncode == 0 and "champion lineage: v1 (cycle 1" in table.stdout, table.stdout

    tracker = _tracker(home)
    current = tracker.alias_version("nightly", "champion")
    res = subprocess.run([sys.executable, "-m", "autotune.cli", "rollback", str(job), "--to", "99"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "has no version 99" in res.stderr and "Traceback" not in res.stderr
    if current == "1":  # nothing was promoted after night 1: roll back to nothing is refused
        res = subprocess.run([sys.executable, "-m", "autotune.cli", "rollback", str(job)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and "no earlier champion" in res.stderr
        return
    res = subprocess.run([sys.executable, "-m", "autotune.cli", "rollback", str(job)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    previous = [m for m in hist["lineage"] if m["version"] == current][-1]["previous"]
    assert tracker.alias_version("nightly", "champion") == previous
    last = json.loads((home / "history.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "rollback" and (last["from"], last["to"]) == (current, previous)


def _retune_process(job: Path, out_log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "retune", str(job)], stdout=out_log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _trial_started(folder: Path) -> bool:
    try:
        return any(json.loads(line)["examples"] > 0 for line in (folder / "rungs.jsonl").read_text().splitlines())
    except (OSError, ValueError, KeyError):
        return False


def test_second_cycle_is_skipped_then_a_killed_cycle_resumes_with_clean_records(tiny_model_dir, tmp_path):
    """Cycle A runs; B, started meanwhile, exits 0 "skipped" naming A. A is SIGKILLed mid-search; the next
    retune resumes the same cycle (same data) and leaves one end record and no RUNNING run."""
    data = write_csv(tmp_path / "reviews.csv", synthetic_rows(200))
    job = retune_job(tmp_path, tiny_model_dir, data, name="nightly", extra="budget: {max_concurrent_trials: 1}")
    home = tmp_path / "out" / "retune"
    a = _retune_process(job, tmp_path / "a.log")
    try:
        # B while A is still starting its search (its start event is written before Ray starts), so A cannot be done
        _wait_for(lambda: (home / "history.jsonl").is_file(), 240, "cycle A's start")
        b = subprocess.run([sys.executable, "-m", "autotune.cli", "retune", str(job)], capture_output=True, text=True,
                           timeout=240)
        assert b.returncode == 0, b.stderr
        assert f"skipped: a cycle for job nightly is already running (pid {a.pid} on " in b.stdout, b.stdout
        _wait_for(lambda: _trial_started(home / "cycle-0001"), 240, "cycle A's first rung")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=60)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    events = [json.loads(line) for line in (home / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start"]  # killed: started, never ended

    again = subprocess.run([sys.executable, "-m", "autotune.cli", "retune", str(job)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cycle 1: resuming" in again.stdout and "promoted:" in again.stdout, again.stdout
    events = [json.loads(line) for line in (home / "history.jsonl").read_text().splitlines()]
    assert [(e["event"], e["cycle"]) for e in events] == [("start", 1), ("end", 1)]
    tracker = _tracker(home)
    assert not tracker.client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert tracker.alias_version("nightly", "champion") == events[1]["version"]


@pytest.fixture(scope="module")
def postgres():
    from tests.postgres_env import postgres_or_skip

    yield from postgres_or_skip()


@pytest.mark.cluster
def test_two_hosts_sharing_postgres_run_one_cycle_at_a_time(postgres, tiny_model_dir, tmp_path):
    """Two folders (two hosts) of one job share its PostgreSQL study storage: the file lock cannot see the
    other host, the advisory lock does - the second cycle is skipped naming the first."""
    secret = postgres.secrets["pg"]
    url = f"postgresql+psycopg://postgres:{secret}@127.0.0.1:{postgres.pg_port}/optuna"
    data = write_csv(tmp_path / "reviews.csv", synthetic_rows(200))
    hosts = []
    for host in ("host-a", "host-b"):
        (tmp_path / host).mkdir()
        hosts.append(retune_job(tmp_path / host, tiny_model_dir, data, name="shared-nightly",
                                extra=f"storage: {{optuna_url: '{url}'}}"))
    a = _retune_process(hosts[0], tmp_path / "a.log")
    try:
        _wait_for(lambda: (tmp_path / "host-a" / "out" / "retune" / "history.jsonl").is_file(), 240, "cycle A's start")
        b = subprocess.run([sys.executable, "-m", "autotune.cli", "retune", str(hosts[1])], capture_output=True,
                           text=True, timeout=240)
        assert b.returncode == 0, b.stderr
        assert "skipped: a cycle for job shared-nightly is already running" in b.stdout, b.stdout
        assert f"autotune pid={a.pid}" in b.stdout and secret not in b.stdout + b.stderr
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=60)


@pytest.mark.parametrize("to", [None, "1"])
def test_rollback_moves_champion_back_and_is_recorded(tmp_path, tiny_model_dir, synthetic_csv, to):
    """Against a real MLflow registry (two versions, v2 champion after cycle 2): rollback makes v1 champion
    again, tags it and records the move; the lineage then names the rollback."""
    from autotune.retune.cycle import rollback
    from autotune.retune.history import History
    from autotune.tracking.mlflow_tracker import MlflowTracker

    job = retune_job(tmp_path, tiny_model_dir, synthetic_csv)
    out = tmp_path / "out"
    out.mkdir()
    tracker = MlflowTracker(f"sqlite:///{out / 'mlflow.db'}", "nightly", (out / "mlartifacts").as_uri())
    run = tracker.start_parent("nightly", {})
    src = tmp_path / "model"
    src.mkdir()
    for _ in range(2):
        tracker.register_version("nightly", str(src), run)
    tracker.set_alias("nightly", "champion", "2")
    history = History(out / "retune")
    history.append({"event": "start", "cycle": 1, "at": 1.0, "fingerprint": "a", "folder": "cycle-0001"})
    history.append({"event": "end", "cycle": 1, "at": 2.0, "decision": "promoted", "version": "1", "champion_version": None})
    history.append({"event": "start", "cycle": 2, "at": 3.0, "fingerprint": "b", "folder": "cycle-0002"})
    history.append({"event": "end", "cycle": 2, "at": 4.0, "decision": "promoted", "version": "2", "champion_version": "1"})

    event = rollback(job, to=to, now=5.0)
    assert (event["from"], event["to"]) == ("2", "1")
    assert tracker.alias_version("nightly", "champion") == "1"
    assert tracker.model_version("nightly", "1").tags["autotune.rollback"] == "champion again (was v2)"
    assert [m["how"] for m in History(out / "retune").lineage()] == ["cycle 1", "cycle 2", "rollback"]
    res = subprocess.run([sys.executable, "-m", "autotune.cli", "rollback", str(job), "--to", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "v1 is already the champion" in res.stderr and "Traceback" not in res.stderr
