"""MLflow is owned here: one parent run per job, one child run per trial, all writes from the driver."""
