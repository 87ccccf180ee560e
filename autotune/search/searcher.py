"""Our OptunaSearch: Ray Tune's Optuna searcher plus what a truthful, resumable, budgeted search needs.

- Each Optuna trial records the Ray trial id and the job (MLflow parent run) that asked for it.
- Trials the scheduler stopped early are told to Optuna as PRUNED (stock OptunaSearch says COMPLETE).
- Optuna holds the values MLflow shows: every rung's value is an intermediate value at step = rung (the
  stock searcher uses Ray's iteration count and never reports the result a trial ended on), so a finished
  trial's final rung is among them and a pruned or stopped trial's value is that of the rung it was cut at.
  The study names its objective (`set_metric_names`), points at the MLflow job run and states AutoTune's
  best-trial rule; each trial carries its best rung's value and trainable parameters as user attrs.
  Where Optuna cannot follow that rule: its `best_trial` is the best FINAL value among COMPLETE trials, while
  AutoTune takes the best value at ANY rung of any trial that did not fail, ties to fewer trainable
  parameters - the study attr `autotune.best_trial` names AutoTune's pick.
- No trial starts when the budget cannot hold a first rung (`driver["can_start"]`).
- After a crash, an Optuna trial that was asked for but never reached Tune's saved state (an orphan) is
  adopted by the next suggestion: same Optuna trial, same parameters - one trial, one record - instead of
  a failed twin plus a re-run.

Driver-local hooks live in `self.driver`, which is neither saved with the searcher state nor overwritten
by a restore (Ray pickles `__dict__` on save and `update()`s it on restore).

No secret at rest: Ray keeps this object in tuner.pkl (pickled with the Tuner) and in searcher-state-*.pkl,
and the stock searcher pickles its Optuna storage - the storage URL with its password - directly and
through the study and every Optuna trial it holds. Here both pickles carry the study name and the Optuna
trial ids only; the driver attaches the storage (`attach_storage`, built from AUTOTUNE_OPTUNA_STORAGE or
the job) before Ray uses the searcher again.
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch  # must be imported explicitly in Ray 2.60

from autotune.search.callbacks_keys import DEADLINE_KEY, JOB_RUN_ATTR, NUMBER_KEY


class AutotuneOptunaSearch(OptunaSearch):
    def __init__(self, *args, job_run: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.job_run = job_run
        self.driver: dict = {"can_start": None, "orphans": []}

    # --- state: what Ray keeps holds no storage (no URL, no password) and no driver-local hook ----------
    def _portable_state(self) -> dict:
        state = self.__dict__.copy()
        state.pop("driver", None)
        state["_storage"] = None
        state["_ot_study"] = None
        # an Optuna Trial pickles its study, and with it the storage: keep the trial ids only
        state["_ot_trials"] = {tid: getattr(t, "_trial_id", t) for tid, t in self._ot_trials.items()}
        return state

    def __getstate__(self):  # tuner.pkl: Ray pickles the Tuner, this searcher included
        return self._portable_state()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.driver = {"can_start": None, "orphans": []}

    def save(self, checkpoint_path: str):  # searcher-state-*.pkl
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self._portable_state(), fh)

    def restore(self, checkpoint_path: str):
        live = {k: self.__dict__.get(k) for k in ("driver", "_storage", "_ot_study")}
        super().restore(checkpoint_path)
        self.driver = live["driver"] or {"can_start": None, "orphans": []}
        if live["_ot_study"] is not None:  # the storage this driver attached, not one from the file
            self._storage, self._ot_study = live["_storage"], live["_ot_study"]
            self._bind_trials()

    def attach_storage(self, storage) -> None:
        """Give a searcher read back from Ray's files its Optuna storage (an RDBStorage or its URL) again."""
        import optuna

        if isinstance(storage, str):
            storage = optuna.storages.RDBStorage(storage)
        if isinstance(self._mode, list):
            directions = {"directions": ["minimize" if m == "min" else "maximize" for m in self._mode]}
        else:
            directions = {"direction": "minimize" if self._mode == "min" else "maximize"}
        self._storage = storage
        self._ot_study = optuna.create_study(storage=storage, sampler=self._sampler, pruner=optuna.pruners.NopPruner(),
                                             study_name=self._study_name, load_if_exists=True, **directions)
        self._bind_trials()

    def _bind_trials(self) -> None:
        import optuna

        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, t) if isinstance(t, int) else t
                           for tid, t in self._ot_trials.items()}

    # --- Tune hooks ------------------------------------------------------------------------------------
    def suggest(self, trial_id):
        can_start = self.driver.get("can_start")
        if can_start is not None and not can_start():
            return self.FINISHED  # the budget cannot hold another trial's first rung
        if trial_id not in self._ot_trials and self.driver.get("orphans"):
            import optuna

            orphan = self.driver["orphans"].pop(0)  # its stored parameters come back from define-by-run
            self._ot_study._thread_local.cached_all_trials = None  # as ask() does: the sampler reads the study anew
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
        config = super().suggest(trial_id)
        if isinstance(config, dict) and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr(JOB_RUN_ATTR, self.job_run)  # which job asked: a shared study has many
            # the Optuna trial number names the trial everywhere (console, MLflow, trials.csv)
            config = {**config, NUMBER_KEY: ot_trial.number}
            deadline = self.driver.get("deadline")
            if deadline is not None and deadline() is not None:  # budget-aware trials: plan to end in time
                config[DEADLINE_KEY] = round(deadline(), 1)
        return config

    # --- what Optuna records: the values MLflow shows, rung by rung --------------------------------------
    def on_trial_result(self, trial_id, result):
        self._report_rung(trial_id, result)

    def _report_rung(self, trial_id, result) -> None:
        """The rung's objective as an intermediate value at step = rung (the MLflow metric's step)."""
        import warnings

        if isinstance(self._metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if not result or self._metric not in result or "rung" not in result:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a rung replayed after a restore is already reported: kept as is
            self._ot_trials[trial_id].report(float(result[self._metric]), int(result["rung"]))

    def describe_study(self, attrs: dict) -> None:
        """Name the objective (optuna-dashboard shows it instead of "Objective 0") and set study user attrs."""
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(self._metric if isinstance(self._metric, list) else [self._metric])
        for key, value in attrs.items():
            self._ot_study.set_user_attr(key, value)

    def _annotate_trial(self, trial_id) -> None:
        """The trial's best rung (AutoTune's candidate) as user attrs, from the driver's record of it."""
        attrs_of = self.driver.get("trial_attrs")
        if attrs_of is None or trial_id not in self._ot_trials:
            return
        try:
            for key, value in (attrs_of(trial_id) or {}).items():
                self._ot_trials[trial_id].set_user_attr(key, value)
        except Exception:  # noqa: BLE001 - annotations never stop a search
            pass

    def close_unstarted(self, started: set[str], reason: str) -> None:
        """Trials suggested but never started before the search ended (the budget ran out between Tune asking
        for a trial and starting it): told FAIL with why, so the study holds no trial RUNNING forever."""
        from optuna.trial import TrialState

        for trial_id, ot_trial in list(self._ot_trials.items()):
            if trial_id in self._completed_trials or trial_id in started or not hasattr(ot_trial, "set_user_attr"):
                continue
            try:
                ot_trial.set_user_attr("autotune.stop_reason", f"never started: {reason}")
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - already finished in the storage
                pass
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False, stopped=False):
        """`stopped`: the budget or an interrupt ended the trial (not its plan, not ASHA): PRUNED in Optuna with
        the rung it reached, as its MLflow run and the state say - even when that rung was its re-planned last."""
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        disk_full = self.driver.get("disk_full")
        if error and disk_full is not None and disk_full() is not None:
            return  # the disk, not the trial: the search stops, the Optuna trial stays RUNNING and resumes with it
        if not error:
            self._report_rung(trial_id, result)  # the rung it ended on: Ray hands it here, not to on_trial_result
        self._annotate_trial(trial_id)
        if result and not error and (stopped or result.get("rung", 0) < result.get("total_rungs", 0)):
            try:  # Optuna takes a PRUNED trial's value from its last intermediate value: the rung it ended on
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception:  # noqa: BLE001 - the study refuses a second tell; keep going
                pass
            self._completed_trials.add(trial_id)
            return
        return super().on_trial_complete(trial_id, result, error)
