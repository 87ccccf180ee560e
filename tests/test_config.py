"""Job and search-space validation: exact messages, every problem at once, exit code 2, no heavy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune.config import load_job
from autotune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_job(path)
    return info.value.problems


def test_shipped_pipelines_and_spaces_validate():
    shipped = sorted((REPO / "pipelines").glob("*.yaml"))
    assert shipped, "no shipped pipelines"
    for path in shipped:
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path.name} must open with a comment saying what it is for"
        assert "autotune submit" in path.read_text(), f"{path.name} must say the command that runs it"
        load_job(path)
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        assert path.read_text().startswith("#"), f"{path.name} must open with a comment"
        from autotune.config.loader import load_space_file
        from autotune.config.space import compile_space

        compiled, errs = compile_space(load_space_file(path), str(path))
        assert errs == [] and compiled is not None


def test_unknown_keys_and_bad_values_all_reported(tmp_path):
    job = write(tmp_path, """
        name: t
        budget: {num_trials: 0, max_concurent_trials: 2}
        training: {epochs: -1}
        objective: {metric: accuracy}
    """)
    got = problems(job)
    src = str(job)
    assert f"{src}: budget.num_trials: must be >= 1 (got 0)" in got
    assert any(l.startswith(f"{src}: budget.max_concurent_trials: unknown key (allowed: ") and "max_concurrent_trials" in l for l in got)
    assert f"{src}: training.epochs: must be > 0 (got -1)" in got
    assert f"{src}: objective.metric: must be one of 'val_accuracy', 'val_macro_f1' or 'val_loss' (got 'accuracy')" in got
    assert len(got) == 4


def test_split_must_sum_to_one(tmp_path):
    job = write(tmp_path, "name: t\ndata: {split: {train: 0.8, validation: 0.3, test: 0.1}}\n")
    assert problems(job) == [
        f"{job}: data.split: train + validation + test must equal 1 (got 0.8 + 0.3 + 0.1 = 1.2)"
    ]


def test_space_errors_name_the_space_file_and_path(tmp_path):
    space = write(tmp_path, """
        methods:
          lora:
            rank: {low: 0, high: 8}
            alpha: {low: 32.0, high: 8.0}
            learning_rate: {low: 0.0, high: 1.0e-3, log: true}
            dropout: {low: 0.0, high: 0.1, log: true}
            sparsity: 0.5
          full:
            rank: 4
          magic:
            learning_rate: 1.0e-3
          head:
            learning_rate: {choices: [1.0e-3, -1.0]}
    """, name="space.yaml")
    job = write(tmp_path, "name: t\nsearch: {space: space.yaml}\n")
    got = problems(job)
    s = str(space.resolve())
    assert f"{s}: methods.lora.rank.low: must be >= 1 (got 0)" in got
    assert f"{s}: methods.lora.alpha: low <= high must hold (got low=32.0, high=8.0)" in got
    assert f"{s}: methods.lora.learning_rate.low: must be > 0 (got 0.0)" in got
    assert f"{s}: methods.lora.dropout.low: must be > 0 when log is true (got 0.0)" in got
    assert any(l.startswith(f"{s}: methods.lora.sparsity: unknown knob for method lora (allowed: ") for l in got)
    assert any(l.startswith(f"{s}: methods.full.rank: unknown knob for method full") for l in got)
    assert f"{s}: methods.magic: unknown method (known: adalora, bitfit, full, head, ia3, ln_tuning, loha, lokr, lora, qlora, sparse, vera, zero_shot)" in got
    assert f"{s}: methods.head.learning_rate.choices[1]: must be > 0 (got -1.0)" in got


def test_inline_space_errors_use_job_path(tmp_path):
    job = write(tmp_path, """
        name: t
        search:
          space:
            methods:
              sparse: {sparsity: {low: 0.5, high: 0.999999}}
    """)
    assert problems(job) == [f"{job}: search.space.methods.sparse.sparsity.high: must be <= 0.99999 (got 0.999999)"]


def test_range_on_non_numeric_knob_and_int_bounds(tmp_path):
    job = write(tmp_path, """
        name: t
        search:
          space:
            methods:
              sparse: {selection: {low: 1, high: 2}}
              lora: {rank: {low: 2.5, high: 8}}
    """)
    got = problems(job)
    assert any("search.space.methods.sparse.selection: a range needs a numeric knob" in l for l in got)
    assert f"{job}: search.space.methods.lora.rank.low: must be an integer (got 2.5)" in got


def test_missing_files_and_yaml_syntax(tmp_path):
    job = write(tmp_path, "name: t\ndata: {path: nope.csv}\nsearch: {space: nope.yaml}\n")
    got = problems(job)
    assert len(got) == 1 and "search.space: file not found (got 'nope.yaml'" in got[0]
    bad = write(tmp_path, "name: t\nbudget: {num_trials: 3\n", name="bad.yaml")
    got = problems(bad)
    assert got[0].startswith(f"{bad}: not valid YAML at line ")


def test_full_method_selectors_are_exclusive(tmp_path):
    job = write(tmp_path, """
        name: t
        search:
          space:
            methods:
              full: {unfreeze_last_k: 1, layers: [0]}
    """)
    assert problems(job) == [f"{job}: search.space.methods.full: give either unfreeze_last_k or layers, not both"]


def test_cli_validate_exit_code_2_without_traceback(tmp_path):
    job = write(tmp_path, "name: t\nbudget: {num_trials: 0}\nseed: abc\n")
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{job}: budget.num_trials: must be >= 1 (got 0)" in proc.stderr
    assert f"{job}: seed: must be an integer (got 'abc')" in proc.stderr


def test_import_and_validate_stay_light():
    code = (
        "import sys, autotune, autotune.cli, autotune.api\n"
        "from autotune.config import load_job\n"
        f"load_job({str(REPO / 'pipelines' / 'demo.yaml')!r})\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'peft', 'mlflow') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_initial_points_must_lie_in_the_space(tmp_path):
    job = write(tmp_path, """
        name: t
        search:
          space:
            methods:
              lora: {rank: {low: 2, high: 8}, target_modules: {choices: [[query, value]]}, dropout: 0.1}
          initial_points:
            - {method: lora, knobs: {rank: 16}}
            - {method: lora, knobs: {target_modules: [key]}}
            - {method: lora, knobs: {dropout: 0.2}}
            - {method: full, knobs: {}}
    """)
    assert problems(job) == [
        f"{job}: search.initial_points[0].knobs.rank: must lie in the space's range [2, 8] (got 16)",
        f"{job}: search.initial_points[1].knobs.target_modules: must be one of the space's choices ['query,value'] (got ['key'])",
        f"{job}: search.initial_points[2].knobs.dropout: must be a knob the space searches for lora (rank, target_modules) (got 0.2)",
        f"{job}: search.initial_points[3].method: must be a method of the search space (lora) (got 'full')",
    ]


def test_range_endpoints_are_checked_with_fixed_knobs(tmp_path):
    job = write(tmp_path, """
        name: t
        search:
          space:
            methods:
              full: {layers: [1], unfreeze_last_k: {choices: [null, 2]}}
    """)
    assert problems(job) == [f"{job}: search.space.methods.full.unfreeze_last_k = 2: give either unfreeze_last_k or layers, not both"]
