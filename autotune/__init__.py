"""AutoTune: search over fine-tuning methods (full, head, layer unfreezing, LoRA, sparse, ...) and their
knobs with Optuna inside Ray Tune, log everything to MLflow, ship the best model as a verified artifact.

`import autotune` stays light: torch, ray, transformers, peft and mlflow load only when work needs them."""

import time as _time

__version__ = "0.1.0"

# When this package was first imported: with the process's OS start time, what a wall-clock budget counts
# from (see autotune.search.budget.process_start_time).
IMPORTED_AT = _time.time()
