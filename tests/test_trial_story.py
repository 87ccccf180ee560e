"""What the MLflow runs and the console say about each trial, driven through the real driver-side pieces
(TrialBook callback, the recording ASHA scheduler, an MLflow store, a rich console) without starting Ray:
why a trial ended (the run's description), who and what wrote it, and the live progress display."""

from __future__ import annotations

import getpass
import io
import time
from types import SimpleNamespace

import pytest

from autotune.config.space import SearchSpace, compile_space
from autotune.search.budget import SearchClock
from autotune.search.callbacks import TrialBook
from autotune.search.scheduler import method_stratified_asha

SPACE, _ = compile_space(SearchSpace.model_validate({"methods": {
    "head": {"learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}},
    "full": {"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
}}), "<test>")


def trial(tid: str, number: int, method: str = "head", lr: float = 0.01, error_file=None):
    return SimpleNamespace(trial_id=tid, config={"method": method, f"{method}.learning_rate": lr, "trial_number": number},
                           last_result={}, pickled_error_file=None, error_file=error_file)


def rung(r: int, total: int, acc: float, examples: int, params: int = 66) -> dict:
    return {"rung": r, "total_rungs": total, "val_accuracy": acc, "val_loss": 1 - acc, "examples": examples,
            "trainable_params": params}


def report(book, sched, t, result) -> str:
    """What Tune does with one result: the scheduler decides, then the callbacks see it."""
    decision = sched.on_trial_result(None, t, result)
    book.on_trial_result(0, [], t, result)
    t.last_result = result
    return decision


@pytest.fixture()
def tracked(tmp_path):
    from autotune.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "story", (tmp_path / "mlartifacts").as_uri())
    return tracker, tracker.start_parent("story", {})


def test_each_run_says_why_it_ended(tracked, tmp_path):
    tracker, parent = tracked
    sched = method_stratified_asha(time_attr="examples", max_t=800, grace_period=100, reduction_factor=2)
    sched.set_search_properties("val_accuracy", "max")
    book = TrialBook(SPACE, tracker, parent, None, metric="val_accuracy", mode="max")
    book.scheduler = sched
    a, b, c, d, e = (trial("a", 0), trial("b", 1), trial("c", 2), trial("d", 3, "full"),
                     trial("e", 4, error_file=str(tmp_path / "error.txt")))
    (tmp_path / "error.txt").write_text("Traceback ...\nValueError: lora.layers: layer(s) [7] do not exist\n")
    for t in (a, b, c, d, e):
        sched.on_trial_add(None, t)
        book.on_trial_start(0, [], t)

    # a learns to the end; b is cut at rung 2 below the median of a and c at that rung
    for r, acc in enumerate((0.60, 0.74, 0.81, 0.80), 1):  # ASHA stops it at max_t: done, not cut
        assert report(book, sched, a, rung(r, 4, acc, 100 * 2 ** (r - 1))) == ("STOP" if r == 4 else "CONTINUE")
    book.on_trial_complete(0, [], a)
    assert report(book, sched, c, rung(1, 4, 0.62, 100)) == "CONTINUE"
    assert report(book, sched, c, rung(2, 4, 0.78, 200)) == "CONTINUE"
    assert report(book, sched, b, rung(1, 4, 0.65, 100)) == "CONTINUE"
    assert report(book, sched, b, rung(2, 4, 0.70, 200)) == "STOP"
    book.on_trial_complete(0, [], b)
    # c runs out of budget; d (another method, its own bracket) never reached a rung; e failed
    book.close_unfinished("budget")
    book.on_trial_error(0, [], e)

    assert set(sched.cuts) == {"b"}
    cut = sched.cuts["b"]
    assert cut == (200.0, pytest.approx(0.76), "head")  # median of a (0.74) and c (0.78) at 200 examples
    client = tracker.client
    runs = {r.data.params["trial_number"]: r for r in client.search_runs([tracker.experiment_id], "tags.`autotune.role` = 'trial'")}
    notes = {n: r.data.tags["mlflow.note.content"] for n, r in runs.items()}
    assert notes == {
        "0": "finished: 4/4 rungs\n\nbest val_accuracy 0.8100 at rung 3 (400 examples)",
        "1": "pruned by ASHA at rung 2/4 (200 examples), val_accuracy 0.7000 < 0.7600, the cut-off among head trials "
             "at that rung\n\nbest val_accuracy 0.7000 at rung 2 (200 examples)",
        "2": "stopped by the budget at rung 2/4\n\nbest val_accuracy 0.7800 at rung 2 (200 examples)",
        "3": "stopped by the budget before its first rung",
        "4": "failed: ValueError: lora.layers: layer(s) [7] do not exist",
    }
    assert {n: r.info.status for n, r in runs.items()} == {"0": "FINISHED", "1": "KILLED", "2": "KILLED", "3": "KILLED", "4": "FAILED"}
    for r in [*runs.values(), client.get_run(parent)]:
        assert r.data.tags["mlflow.user"] == getpass.getuser() and r.info.user_id == getpass.getuser()
        assert r.data.tags["mlflow.source.name"] == "autotune" and r.data.tags["mlflow.source.type"] == "LOCAL"
    # what Optuna will carry of each: its best rung, not its last one
    assert book.optuna_attrs("a") == {"autotune.mlflow_run_id": runs["0"].info.run_id, "autotune.best_value": 0.81,
                                      "autotune.best_rung": 3, "autotune.best_examples": 400,
                                      "autotune.trainable_params": 66}
    assert book.optuna_attrs("c")["autotune.stop_reason"] == "budget"


@pytest.mark.parametrize("opened", [False, True])
def test_an_adopted_orphan_gets_a_run_of_its_own(tracked, tmp_path, opened):
    """A driver killed after Optuna's ask but before the trial's Ray id was stored leaves an orphan that never
    opened an MLflow run (`opened=False`): the trial that adopts it on resume gets a new run, never another
    trial's. An orphan that had opened its run (`opened=True`) is continued in that run: one trial, one run."""
    import optuna

    from autotune.search.tuner import _orphan_runs

    tracker, parent = tracked
    book = TrialBook(SPACE, tracker, parent, None, metric="val_accuracy", mode="max")
    earlier = [trial("a", 0), trial("b", 1)]
    for t in earlier:  # what the killed driver had recorded
        book.on_trial_start(0, [], t)
        book.on_trial_result(0, [], t, rung(1, 2, 0.7, 100))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    for n in (0, 1):
        study.tell(study.ask(), 0.7)
    orphan = study.ask()  # trial 2: asked, and the driver died
    if opened:
        orphan.set_user_attr("ray_trial_id", "lost")
        book.on_trial_start(0, [], trial("lost", 2))
    orphans = [t for t in study.get_trials() if t.state.name == "RUNNING"]

    resumed = TrialBook(SPACE, tracker, parent, None, metric="val_accuracy", mode="max")
    resumed.orphan_runs = _orphan_runs(tracker, parent, orphans)
    resumed.on_trial_start(0, [], adopter := trial("c", 2))
    resumed.on_trial_result(0, [], adopter, rung(1, 2, 0.8, 100))

    runs = tracker.child_runs(parent)
    assert sorted(r.data.tags["autotune.trial_id"] for r in runs) == ["a", "b", "c"]
    assert sorted(r.data.params["trial_number"] for r in runs) == ["0", "1", "2"]
    for r in runs:  # the earlier trials' runs hold their own rung only
        history = tracker.metric_history(r.info.run_id, "val_accuracy")
        assert [m.value for m in history] == [0.8 if r.data.tags["autotune.trial_id"] == "c" else 0.7]


def test_pruned_without_a_recorded_cut_and_other_endings():
    book = TrialBook(SPACE, None, None, None, metric="val_loss", mode="min")
    book.on_trial_start(0, [], t := trial("x", 7))
    book.on_trial_result(0, [], t, rung(2, 5, 0.30, 256))
    rec = book.records["x"]
    rec.status = "pruned"
    assert book.describe(rec) == "pruned by ASHA at rung 2/5\n\nbest val_loss 0.7000 at rung 2 (256 examples)"
    rec.status, rec.stop_reason = "stopped", "interrupted"
    assert book.describe(rec).split("\n")[0] == "interrupted at rung 2/5; `autotune resume` continues it"
    rec.stop_reason = "search stopped"
    assert book.describe(rec).split("\n")[0] == "stopped with the search at rung 2/5"


def test_params_without_a_value_are_not_logged_as_none(tracked):
    tracker, parent = tracked
    tracker.log_params(parent, {"tracking": {"uri": None, "experiment": "x"}, "budget.num_trials": None, "seed": 0})
    assert tracker.client.get_run(parent).data.params == {"tracking.experiment": "x", "seed": "0"}


def test_progress_line(tmp_path):
    clock = SearchClock(search_deadline=time.time() + 120.4)
    book = TrialBook(SPACE, None, None, None, total=10, metric="val_accuracy", mode="max", clock=clock)
    for i, (status, acc) in enumerate((("finished", 0.8), ("pruned", 0.85), ("stopped", 0.7), ("failed", None),
                                       ("running", 0.9), ("running", None))):
        book.on_trial_start(0, [], t := trial(f"t{i}", i))
        if acc is not None:
            book.on_trial_result(0, [], t, rung(1, 4, acc, 100))
        book.records[f"t{i}"].status = status
    book.start = time.time() - 45.2
    assert book.progress_text() == ("trials 4/10 done: 1 finished, 1 pruned, 1 stopped, 1 failed; 2 running | "
                                    "best val_accuracy 0.9000 (trial 4, head) | 45 s elapsed, ~120 s of search budget left")
    unbudgeted = TrialBook(SPACE, None, None, None, metric="val_accuracy", mode="max")
    unbudgeted.start = time.time() - 3.2
    assert unbudgeted.progress_text() == ("trials 0 done: 0 finished, 0 pruned, 0 stopped, 0 failed; 0 running | "
                                          "best: none yet | 3 s elapsed")


def _drive(console) -> TrialBook:
    book = TrialBook(SPACE, None, None, console, total=2, metric="val_accuracy", mode="max")
    book.setup()
    book.on_trial_start(0, [], t := trial("a", 0))
    book.on_trial_result(0, [], t, rung(1, 2, 0.75, 100))
    live_during = book._live is not None
    t.last_result = rung(2, 2, 0.8, 200)
    book.on_trial_result(0, [], t, t.last_result)
    book.on_trial_complete(0, [], t)
    book.on_experiment_end([])
    assert book._live is None
    return live_during


def test_live_display_on_a_terminal_plain_lines_otherwise():
    from rich.console import Console

    tty = io.StringIO()
    assert _drive(Console(file=tty, force_terminal=True, width=300, highlight=False)) is True
    shown = tty.getvalue()
    assert "trials 0/2 done: 0 finished, 0 pruned, 0 stopped, 0 failed; 1 running\x1b[0m\n" in shown
    assert "best val_accuracy 0.7500 (trial 0, head) | 0 s elapsed" in shown
    assert "\x1b[2K" in shown  # the live line is redrawn in place

    plain = io.StringIO()
    assert _drive(Console(file=plain, force_terminal=False, width=300, highlight=False)) is False
    lines = plain.getvalue().splitlines()
    assert "\x1b" not in plain.getvalue() and not any("done:" in line for line in lines)
    assert lines[0] == "      trial   0 head   started   learning_rate=0.01"
    assert lines[1] == "      trial   0 head   rung 1/2 val_accuracy=0.7500 (0 s)"
    assert lines[3].startswith("[1/2] trial   0 head   finished val_accuracy=0.8000 (0 s) learning_rate=0.01 | "
                               "best 0.8000 (trial 0, head)")
