"""Budget planning and multi-fidelity: geometric rungs in examples seen, the start-up order, the portfolio,
the search clock and the one best-trial rule (every evaluated rung is a candidate)."""

from __future__ import annotations

import textwrap
import time
from types import SimpleNamespace

import pytest

from autotune.config.job import TrainingConfig
from autotune.search.best import best_record
from autotune.search.budget import SearchClock
from autotune.training.loop import examples_after, rung_count, rung_steps
from tests.test_loop import data  # noqa: F401 - fixture: tokenized synthetic splits


def test_geometric_rungs_sit_at_the_same_examples_whatever_the_batch_size():
    seen = {}
    for bs in (8, 16, 32):
        total, rungs = rung_steps(1000, TrainingConfig(epochs=2, batch_size=bs, first_rung=0.125))
        seen[bs] = [examples_after(s, 1000, bs) for s in rungs]
        assert rungs[-1] == total  # the last step is always a rung
    assert seen[16] == [128, 256, 512, 1000, 2000]
    for bs in (8, 32):  # each rung at the first step past 125 x 2^k examples: within one batch of it
        assert all(0 <= a - b < bs for a, b in zip(seen[bs], [125, 250, 500, 1000, 2000]))
    assert rung_count(2, TrainingConfig(first_rung=0.125)) == 5
    # a longer trial only adds rungs at the top: fidelities stay comparable across epochs
    _, r3 = rung_steps(1000, TrainingConfig(epochs=3, batch_size=16))
    assert [examples_after(s, 1000, 16) for s in r3] == [128, 256, 512, 1000, 2000, 3000]


def test_evenly_spaced_rungs_remain_available():
    total, rungs = rung_steps(100, TrainingConfig(epochs=1.5, batch_size=10, evals_per_epoch=2))
    assert total == 15 and rungs == [5, 10, 15]


def test_startup_points_user_then_portfolio_in_order_then_uncovered_methods_cheapest_first(tmp_path):
    from autotune.config.loader import load_job
    from autotune.search.tuner import startup_points

    job = tmp_path / "j.yaml"
    job.write_text(textwrap.dedent("""
        name: j
        search:
          initial_points: [{method: full, knobs: {learning_rate: 5.0e-5}}]
          space:
            methods:
              full: {learning_rate: {low: 2.0e-5, high: 2.0e-4, log: true}}
              sparse: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}
              head: {learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}}
              lora: {learning_rate: {low: 3.0e-4, high: 5.0e-3, log: true}, rank: {low: 2, high: 16}}
            portfolio:
              - {method: lora, knobs: {learning_rate: 2.0e-3, rank: 8}}
              - {method: lora, knobs: {learning_rate: 9.0e-1, rank: 64}}   # outside the space: sampled instead
              - {method: bitfit_not_here, knobs: {}}
    """))
    with pytest.raises(Exception):  # a portfolio method missing from the space is fine, an unknown one is not
        load_job(job)
    job.write_text("".join(l for l in job.read_text().splitlines(True) if "bitfit_not_here" not in l))
    points = startup_points(load_job(job))
    # the user's point first, then the portfolio as given, then one trial per uncovered method, cheapest first
    assert points == [
        {"method": "full", "full.learning_rate": 5.0e-5},
        {"method": "lora", "lora.learning_rate": 2.0e-3, "lora.rank": 8},
        {"method": "lora"},
        {"method": "head"},
        {"method": "sparse"},
    ]
    job.write_text(job.read_text().replace("search:\n", "search:\n  portfolio: false\n"))
    assert startup_points(load_job(job)) == [
        {"method": "full", "full.learning_rate": 5.0e-5}, {"method": "head"}, {"method": "lora"}, {"method": "sparse"}]


def test_shipped_portfolio_lies_inside_the_default_space():
    from autotune.config.loader import load_job

    job = load_job("pipelines/demo.yaml")
    assert job.space.portfolio, "the default space ships a portfolio"
    assert [m for m, _ in job.space.portfolio] == ["head", "loha", "full", "lora", "sparse"]  # head (seconds) first
    for method, knobs in job.space.portfolio:
        raw = next(p for p in job.space_raw.portfolio if p.method == method and set(knobs) <= set(p.knobs))
        assert knobs == {k: v for k, v in raw.knobs.items() if k in knobs} and len(knobs) == len(raw.knobs), raw


def test_clock_reserves_time_for_validate_and_deploy_from_what_trials_measure():
    now = time.time()
    clock = SearchClock(started_at=now, job_deadline=now + 300)
    before = clock.reserve_s()
    clock.observe("head", {"setup_seconds": 10.0, "eval_seconds": 4.0, "rung": 1}, 30.0)
    assert clock.reserve_s() > before  # slower model, bigger reserve
    assert clock.deadline() == pytest.approx(now + 300 - clock.reserve_s())
    assert clock.can_start_trial()
    clock.first_rung_s["head"] = 1.0
    clock.first_rung_s["full"] = clock.left() - 5
    assert clock.can_start_trial()
    clock.first_rung_s["full"] = clock.left() + 5  # the slowest method's first rung no longer fits
    assert not clock.can_start_trial()  # the next trial may be a full one: none starts
    assert SearchClock().deadline() is None and SearchClock().can_start_trial()


def test_best_rule_counts_every_rung_and_breaks_ties_by_size():
    r = lambda n, st, best: SimpleNamespace(number=n, status=st, best=best)  # noqa: E731
    records = [
        r(0, "finished", {"val_accuracy": 0.80, "trainable_params": 100}),
        r(1, "stopped", {"val_accuracy": 0.86, "trainable_params": 5000}),  # cut by the budget: still counts
        r(2, "pruned", {"val_accuracy": 0.86, "trainable_params": 700}),  # same score, smaller: wins
        r(3, "failed", {"val_accuracy": 0.99, "trainable_params": 1}),  # a failed trial never wins
        r(4, "running", {}),
    ]
    assert best_record(records, "val_accuracy", "max").number == 2
    assert best_record(records, "val_accuracy", "min").number == 0
    assert best_record([records[3], records[4]], "val_accuracy", "max") is None


def test_measured_after_search_time_is_the_floor_of_the_reserve(cache_env):
    from autotune.config.job import ModelConfig
    from autotune.search.budget import history_key, measured_after_search, record_after_search

    key = history_key(ModelConfig(num_hidden_layers=3), 600, False, False)
    assert measured_after_search(key) is None
    record_after_search(key, 80.0)
    assert measured_after_search(key) == 80.0
    assert measured_after_search(history_key(ModelConfig(), 600, False, False)) is None  # another model: not measured
    clock = SearchClock(job_deadline=time.time() + 300, measured_after_s=measured_after_search(key))
    assert clock.reserve_s() == pytest.approx(94.0)  # the last real run, plus 15% and 2 s, replaces the estimate
    clock.observe("lora", {"setup_seconds": 30.0, "eval_seconds": 20.0, "rung": 1}, 60.0)
    assert clock.reserve_s() == pytest.approx(94.0)  # slow trials under load do not inflate a measured reserve


def test_fit_plan_shortens_a_trial_to_end_by_the_deadline():
    from autotune.training.loop import fit_plan

    rungs = [8, 16, 32, 63, 126]
    # 100 steps left at 1 s/step, 40 s left, 5 s for the final evaluation: end at step 26 + 35 = 61
    assert fit_plan(26, 126, rungs, 1.0, 40.0, 5.0) == (61, [8, 16, 32, 61])
    assert fit_plan(26, 126, rungs, 0.1, 40.0, 5.0) == (126, rungs)  # fits: the plan stays
    assert fit_plan(26, 126, rungs, 1.0, 2.0, 5.0) == (27, [8, 16, 27])  # never below one more step


def test_a_budget_ends_the_trial_annealed_and_evaluated(tiny_model_dir, data):  # noqa: F811
    from autotune.config.job import ModelConfig
    from autotune.methods import REGISTRY, ApplyContext
    from autotune.training.loop import train
    from autotune.training.model import build_model

    model = build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["neg", "pos"])
    prepared = REGISTRY["full"].apply(model, REGISTRY["full"].Params(), ApplyContext())
    reports = []
    start = time.time()
    # 200 epochs would take far longer than the 3 s budget: the trial ends in time, at a final rung
    train(prepared, data, TrainingConfig(epochs=200, batch_size=8), 1e-3, 0, lambda m, r: reports.append(m),
          deadline=start + 3.0)
    took = time.time() - start
    last = reports[-1]
    assert took < 6.0, took
    assert last["rung"] == last["total_rungs"] and last["step"] < last["planned_steps"] == 4000


def test_the_plan_records_where_the_seconds_went():
    start = time.time() - 10
    clock = SearchClock(started_at=start, job_deadline=start + 100, measured_after_s=20.0)
    assert not clock.expired() and clock.expired_at is None
    plan = clock.plan(start + 40)
    assert plan == {"search_deadline_s": pytest.approx(100 - 25.0), "search_ended_s": pytest.approx(40.0),
                    "reserved_after_search_s": pytest.approx(25.0)}
    late = SearchClock(started_at=start, job_deadline=start + 20, measured_after_s=20.0)  # due 5 s ago
    assert late.expired() and late.plan(time.time())["deadline_seen_s"] == pytest.approx(10.0, abs=1.0)


def test_the_driver_imports_what_rebuilding_the_model_takes(tiny_model_dir):
    import subprocess
    import sys

    # a fresh interpreter: after the warm-up, building the model imports nothing of transformers' or peft's
    code = (f"from autotune.config.job import ModelConfig; from autotune.training.model import warm_model_imports, build_model;"
            f"import sys; cfg = ModelConfig(name_or_path={str(tiny_model_dir)!r}); warm_model_imports(cfg);"
            f"before = set(sys.modules); build_model(cfg, ['a', 'b']);"
            f"new = [m for m in set(sys.modules) - before if m.startswith(('transformers', 'peft'))]; print(new)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("before", ["", "sleep 7 && exec "])
def test_the_job_clock_starts_with_the_process_not_with_a_shell_that_exec_d_it(before):
    """`bash -c 'pip install ... && autotune submit ...'` and container entrypoints exec the job into a process
    that started earlier: the budget counts from the job's own start, not from the shell's."""
    import subprocess
    import sys

    probe = ("import time; from autotune.search.budget import process_start_time; "
             "print(time.time() - process_start_time())")
    out = subprocess.run(["bash", "-c", f"{before}{sys.executable} -c '{probe}'"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    elapsed = float(out.strip().splitlines()[-1])
    assert 0.0 < elapsed < 5.0  # interpreter start-up and imports count; the shell's 7 s do not
