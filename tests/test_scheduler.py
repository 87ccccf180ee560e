"""ASHA's cut with a sampling margin: a score below the cut-off by less than the validation split's sampling
error does not stop a trial; one far below does; the recorded cut-off is the one that was applied."""

from __future__ import annotations

import math
import textwrap
from types import SimpleNamespace

import pytest

from autotune.search.scheduler import SamplingMargin, method_stratified_asha


def trial(tid: str, method: str = "full"):
    return SimpleNamespace(trial_id=tid, config={"method": method})


def decide(sched, t, examples: int, acc: float) -> str:
    return sched.on_trial_result(None, t, {"examples": examples, "val_accuracy": acc})


def scheduler(margin):
    sched = method_stratified_asha(time_attr="examples", max_t=800, grace_period=100, reduction_factor=2,
                                   margin=margin)
    sched.set_search_properties("val_accuracy", "max")
    return sched


def test_margin_is_one_standard_error_of_the_score_at_the_cut_off():
    m = SamplingMargin(n=300)
    assert m(0.55) == pytest.approx(math.sqrt(0.55 * 0.45 / 300))  # 2.87 points
    assert SamplingMargin(n=300, z=2.0)(0.9) == pytest.approx(2 * math.sqrt(0.09 / 300))
    assert m(0.0) == 0.0 and m(1.0) == 0.0 and m(-0.3) == 0.0  # outside [0, 1] (a loss, negated): no margin


@pytest.mark.parametrize("margin", [None, SamplingMargin(n=300)])
def test_within_noise_of_the_cut_off_a_trial_goes_on_far_below_it_is_cut(margin):
    sched = scheduler(margin)
    a, b, c, d = (trial(x) for x in "abcd")
    for t in (a, b, c, d):
        sched.on_trial_add(None, t)
    assert decide(sched, a, 100, 0.55) == "CONTINUE"  # the first at the rung: nothing to compare with
    # 2 points below the only score recorded: ASHA alone cuts it; within one standard error (2.9) it goes on
    assert decide(sched, b, 100, 0.53) == ("STOP" if margin is None else "CONTINUE")
    assert decide(sched, c, 100, 0.45) == "STOP"  # 10 points below: cut either way
    # another method has its own bracket, margin or not
    e = trial("e", "head")
    sched.on_trial_add(None, e)
    assert decide(sched, e, 100, 0.30) == "CONTINUE"
    cut = sched.cuts["c"]
    median = 0.54  # of a and b (ASHA records a score at its rung whether it cuts the trial or not)
    expected = median - (margin(median) if margin else 0.0)
    assert cut == (100.0, pytest.approx(expected), "full")  # the run's note quotes the cut-off applied
    assert ("b" in sched.cuts) == (margin is None)


def test_a_job_gets_a_margin_for_accuracy_and_f1_and_an_error_for_a_loss(tmp_path):
    from autotune.config.loader import load_job
    from autotune.search.tuner import make_scheduler

    def brackets(body: str):
        job = tmp_path / "j.yaml"
        job.write_text(textwrap.dedent("""
            name: j
            search:
              space:
                methods:
                  head: {learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}}
        """) + textwrap.dedent(body))
        sched = make_scheduler(load_job(job), n_train=1000, n_val=300)
        return [getattr(b, "margin", None) for b in sched._brackets]

    assert brackets("") == [None]  # the default: Ray's ASHA rule
    assert brackets("scheduler: {noise_margin: 2.5, brackets: 2}") == [SamplingMargin(n=300, z=2.5)] * 2
    assert brackets("scheduler: {noise_margin: 1}\nobjective: {metric: val_macro_f1}") == [SamplingMargin(n=300, z=1.0)]
    from autotune.errors import ConfigError

    for objective in ("{metric: val_loss}", "{metric: val_accuracy, direction: min}"):  # before any compute
        with pytest.raises(ConfigError, match=r"j.yaml: scheduler.noise_margin: .* \(got 1 with objective.metric"):
            brackets(f"scheduler: {{noise_margin: 1}}\nobjective: {objective}")


def test_the_margin_survives_the_pickling_of_a_resume():
    """Ray pickles the scheduler into the experiment state; `autotune resume` restores it from there."""
    from ray import cloudpickle

    sched = scheduler(SamplingMargin(n=300))
    a, b = trial("a"), trial("b")
    for t in (a, b):
        sched.on_trial_add(None, t)
    decide(sched, a, 100, 0.55)
    again = cloudpickle.loads(cloudpickle.dumps(sched))
    c = trial("c")
    again.on_trial_add(None, c)
    assert decide(again, b, 100, 0.53) == "CONTINUE" and decide(again, c, 100, 0.45) == "STOP"
    assert again._by_method["full"][0].margin == SamplingMargin(n=300)
