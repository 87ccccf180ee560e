"""Our OptunaSearch: Ray Tune's Optuna searcher plus what a truthful, resumable, budgeted search needs.

- Each Optuna trial records the Ray trial id and the job (MLflow parent run) that asked for it.
- Trials the scheduler stopped early are told to Optuna as PRUNED (stock OptunaSearch says COMPLETE).
- No trial starts when the budget cannot hold a first rung (`driver["can_start"]`).
- After a crash, an Optuna trial that was asked for but never reached Tune's saved state (an orphan) is
  adopted by the next suggestion: same Optuna trial, same parameters - one trial, one record - instead of
  a failed twin plus a re-run.

Driver-local hooks live in `self.driver`, which is neither saved with the searcher state nor overwritten
by a restore (Ray pickles `__dict__` on save and `update()`s it on restore).
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch  # must be imported explicitly in Ray 2.60

from autotune.search.callbacks_keys import JOB_RUN_ATTR, NUMBER_KEY


class AutotuneOptunaSearch(OptunaSearch):
    def __init__(self, *args, job_run: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.job_run = job_run
        self.driver: dict = {"can_start": None, "orphans": []}

    # --- state: never save or clobber the driver-local hooks -------------------------------------------
    def save(self, checkpoint_path: str):
        driver = self.__dict__.pop("driver", None)
        try:
            super().save(checkpoint_path)
        finally:
            self.driver = driver

    def restore(self, checkpoint_path: str):
        driver = self.__dict__.get("driver") or {"can_start": None, "orphans": []}
        super().restore(checkpoint_path)
        self.driver = driver

    # --- Tune hooks ------------------------------------------------------------------------------------
    def suggest(self, trial_id):
        can_start = self.driver.get("can_start")
        if can_start is not None and not can_start():
            return self.FINISHED  # the budget cannot hold another trial's first rung
        if trial_id not in self._ot_trials and self.driver.get("orphans"):
            import optuna

            orphan = self.driver["orphans"].pop(0)  # its stored parameters come back from define-by-run
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
        config = super().suggest(trial_id)
        if isinstance(config, dict) and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr(JOB_RUN_ATTR, self.job_run)  # which job asked: a shared study has many
            # the Optuna trial number names the trial everywhere (console, MLflow, trials.csv)
            config = {**config, NUMBER_KEY: ot_trial.number}
        return config

    def on_trial_complete(self, trial_id, result=None, error=False):
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result and not error and result.get("rung", 0) < result.get("total_rungs", 0):
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception:  # noqa: BLE001 - the study refuses a second tell; keep going
                pass
            self._completed_trials.add(trial_id)
            return
        return super().on_trial_complete(trial_id, result, error)
