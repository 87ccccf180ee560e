"""AutoTune: search over fine-tuning methods (full, head, layer unfreezing, LoRA, sparse, ...) and their
knobs with Optuna inside Ray Tune, log everything to MLflow, ship the best model as a verified artifact.

`import autotune` stays light: torch, ray, transformers, peft and mlflow load only when work needs them."""

__version__ = "0.1.0"
