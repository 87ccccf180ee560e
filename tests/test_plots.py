"""Study-level summaries: the Pareto front of quality vs trainable parameters, and per-method importances."""

from __future__ import annotations

import optuna

from autotune.pipeline.plots import method_importances, pareto_front


def test_pareto_front_keeps_only_undominated_points():
    points = [(770, 0.74), (8_000, 0.77), (24_000, 0.70), (14_600, 0.80), (17_000_000, 0.80), (1_700_000, 0.75)]
    assert pareto_front(points) == [(770, 0.74), (8_000, 0.77), (14_600, 0.80)]
    assert pareto_front([(10, 0.5), (5, 0.4)], maximize=False) == [(5, 0.4)]


def test_importances_are_computed_within_each_method(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(12):
        t = study.ask()
        method = t.suggest_categorical("method", ["full", "head"])
        if method == "full":
            lr = t.suggest_float("full.learning_rate", 1e-5, 1e-3, log=True)
            k = t.suggest_categorical("full.unfreeze_last_k", [1, 2])
            study.tell(t, lr * 1000 + 0.0 * k)  # only the learning rate matters
        else:
            study.tell(t, t.suggest_float("head.learning_rate", 1e-3, 1e-1, log=True))
    imp = method_importances(storage, "s", "maximize")
    assert set(imp) <= {"full", "head"} and "full" in imp
    assert max(imp["full"], key=imp["full"].get) == "full.learning_rate"
    assert all(not k.startswith("head.") for k in imp["full"])
