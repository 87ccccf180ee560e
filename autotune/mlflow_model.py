"""The deploy artifact as an MLflow model: `mlflow.pyfunc.load_model("models:/NAME@champion")` and
`mlflow models serve -m models:/NAME@champion` classify texts with it.

The artifact directory itself is the MLflow model directory: beside the transformers files (config.json,
model.safetensors, tokenizer, modeling_autotune.py) it holds MLmodel, this file, requirements.txt,
python_env.yaml, conda.yaml and the input examples, all listed in MANIFEST.json. Nothing is pickled:
MLflow's pyfunc would cloudpickle a PythonModel *object*; given this file's path instead ("models from
code"), it copies the file into the model and runs it at load time, and the `set_model` call at the
bottom hands MLflow the model object. The weights stay safetensors and load with torch + transformers
only: the served model needs neither the `autotune` package nor a network.

Input: a DataFrame with a string column `text`. Output: one row per text with `label` (the label name),
`score` (its probability) and `probabilities` (label name -> probability).

This file is imported by the deploy stage (`save_mlflow_files`) and run by MLflow at load time, where the
module has another name: keep the top level to the standard library, mlflow and pandas.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

INPUT_COLUMN = "text"
CODE_FILE = "mlflow_model.py"  # this file's name inside the model directory
BATCH_SIZE = 32  # texts per forward pass
INPUT_EXAMPLE = ["an example sentence to classify", "another, somewhat longer example sentence to classify"]


class TextClassifier(mlflow.pyfunc.PythonModel):
    """Tokenize, run the encoder + pooling + head, softmax; label names come from config.json."""

    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        # MLflow runs a models-from-code file from the model directory's root, where the weights are
        root = Path(__file__).resolve().parent
        self.model = _model_class(root).from_pretrained(root).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(root)
        # truncate as training did (the deploy stage writes the training max_length into the tokenizer)
        self.max_length = min(int(self.tokenizer.model_max_length),
                              int(getattr(self.model.config, "max_position_embeddings", 512)))
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        texts = _texts(model_input)
        probs = []
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH_SIZE):
                enc = self.tokenizer(texts[i : i + BATCH_SIZE], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt")
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                probs.extend(torch.softmax(logits.float(), dim=-1).tolist())
        best = [max(range(len(p)), key=p.__getitem__) for p in probs]
        return pd.DataFrame({
            "label": [self.labels[b] for b in best],
            "score": [p[b] for p, b in zip(probs, best)],
            "probabilities": [dict(zip(self.labels, p)) for p in probs],
        }, columns=["label", "score", "probabilities"])


def _model_class(root: Path):
    """AutotuneForSequenceClassification from the artifact's own modeling_autotune.py, imported without
    writing bytecode into the model directory (its MANIFEST lists every file) and without transformers'
    remote-code cache under $HOME (unwritable in many serving containers)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"autotune_served_modeling_{id(root)}", root / "modeling_autotune.py")
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module.AutotuneForSequenceClassification


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = model_input[INPUT_COLUMN] if INPUT_COLUMN in model_input else model_input.iloc[:, 0]
        return [str(t) for t in column]
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


# --- used by the deploy stage only ------------------------------------------------------------------
def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Map, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score"),
                        ColSpec(Map("double"), "probabilities")]),
    )


def pip_requirements() -> list[str]:
    """What the served model imports, pinned to the versions that trained and checked it (local version
    labels such as `+cpu` dropped: pip resolves them from an index, not from PyPI's names)."""
    from importlib.metadata import version

    from packaging.version import Version

    return [f"{name}=={Version(version(name)).public}"
            for name in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas")]


def save_mlflow_files(staging: Path) -> list[Path]:
    """Write the MLflow half of the model (MLmodel, this code file, environment files, input examples)
    into `staging`, an empty or missing directory; returns the files, to be copied beside the weights.

    Explicit pip requirements: MLflow infers none (that would load the model in a subprocess). An empty
    uv project path: MLflow copies no uv.lock / pyproject.toml from the caller's working directory."""
    import shutil
    import tempfile

    from mlflow.models import Model

    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as no_uv_project:
        mlflow.pyfunc.save_model(
            path=str(staging), python_model=str(Path(__file__).resolve()), signature=signature(),
            input_example=pd.DataFrame({INPUT_COLUMN: INPUT_EXAMPLE}), pip_requirements=pip_requirements(),
            uv_project_path=no_uv_project, metadata={"autotune.format": "autotune-artifact/1"},
        )
    # MLflow records the absolute path of the source file; it loads the file by its name only
    mlmodel = staging / "MLmodel"
    model = Model.load(str(mlmodel))
    model.flavors["python_function"]["model_code_path"] = CODE_FILE
    model.model_size_bytes = None  # measured before the weights join: would understate the model
    model.save(str(mlmodel))
    files = sorted(staging.iterdir())
    if any(not f.is_file() for f in files):
        raise RuntimeError(f"unexpected folders in the MLflow model files: {[f.name for f in files if not f.is_file()]}")
    return files


if __name__ != "autotune.mlflow_model":  # run by MLflow as a models-from-code file
    mlflow.models.set_model(TextClassifier())
