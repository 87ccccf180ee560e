"""Keys shared by the searcher, the callbacks and the trainable (kept free of Ray imports)."""

NUMBER_KEY = "trial_number"  # Optuna trial number, added to every trial's config by the searcher
JOB_RUN_ATTR = "autotune_job_run"  # Optuna user attr: the MLflow parent run of the job that asked for the trial
DEADLINE_KEY = "autotune_deadline"  # absolute time the search ends (budget): the trial plans to finish by then
