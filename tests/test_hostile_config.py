"""Hostile job files (issue 12, "Bad input that still gets through or hurts"): bad job files generated from
every shipped pipeline, one class of damage each. Every one must be refused as bad input (ConfigError,
exit 2 through the CLI) with the exact message that names the file and the YAML path, no traceback, in
bounded time and with a bounded message. Most run in-process through `autotune.api.validate`; the ones
that could hang or blow up a broken loader (FIFO, /dev/zero, alias bomb) run through the real CLI in a
subprocess with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from autotune import api
from autotune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "pipelines").glob("*.yaml"))
MAX_SECONDS = 5.0  # per file, parse to message
MAX_MESSAGE = 40_000  # characters of all problem lines together
MAX_LINES = 51  # MAX_PROBLEMS lines + "... and N more problem(s) not shown"


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    # (folder, shipped job as a dict, its text) -> (file to validate, a line the report must hold; `{job}`
    # stands for the file's path)
    make: Callable[[Path, dict, str], tuple[Path, str]]
    exact: bool = True  # the expected text is a whole problem line (else: a part of the report)
    cli: bool = False  # run through `python -m autotune.cli validate` in a subprocess
    every_pipeline: bool = True  # generate from each shipped pipeline (else the first one only)


def write(folder: Path, job, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(job if isinstance(job, str) else yaml.safe_dump(job, sort_keys=False))
    return path


def with_(base: dict, dotted: str, value) -> dict:
    """A deep copy of base with one setting replaced (sections created as needed)."""
    import copy

    out = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value
    return out


def setting(dotted: str, value, expect: str, category: str, raw: str | None = None, exact: bool = True) -> Case:
    """One setting replaced; `raw` writes the value as YAML text instead (e.g. `.inf`, `1.0e+999`)."""
    def make(folder, base, text):
        if raw is None:
            return write(folder, with_(base, dotted, value)), expect
        marker = "__RAW_VALUE__"
        dumped = yaml.safe_dump(with_(base, dotted, marker), sort_keys=False)
        return write(folder, dumped.replace(marker, raw)), expect
    return Case(category, f"{dotted}={raw or value!r}"[:60], make, exact=exact)


def inline_space(methods: dict, expect: str, category: str, name: str) -> Case:
    def make(folder, base, text):
        return write(folder, with_(base, "search.space", {"methods": methods})), expect
    return Case(category, name, make)


def text_case(category: str, name: str, build: Callable[[dict, str], str], expect: str, exact: bool = True,
              cli: bool = False, every_pipeline: bool = True) -> Case:
    def make(folder, base, text):
        return write(folder, build(base, text)), expect
    return Case(category, name, make, exact=exact, cli=cli, every_pipeline=every_pipeline)


def dump(job: dict) -> str:
    return yaml.safe_dump(job, sort_keys=False)


# --- duplicate keys: the line numbers are found in the generated text ---------------------------------------
def dup_name(folder, base, text):
    body = dump(base) + "name: someone-else\n"
    lines = body.splitlines()
    first = next(i for i, l in enumerate(lines) if l.startswith("name:")) + 1
    return write(folder, body), f"{{job}}: name: duplicate key (given again at line {len(lines)}; first at line {first}): give each key once"


def dup_nested(folder, base, text):
    job = with_(base, "budget.num_trials", 4)
    body = dump(job).replace("budget:\n", "budget:\n  num_trials: 3\n", 1)
    lines = body.splitlines()
    at = [i + 1 for i, l in enumerate(lines) if l.startswith("  num_trials:")]
    return write(folder, body), f"{{job}}: budget.num_trials: duplicate key (given again at line {at[1]}; first at line {at[0]}): give each key once"


def dup_flow(folder, base, text):
    body = dump({k: v for k, v in base.items() if k != "budget"}) + "budget: {num_trials: 3, num_trials: 30}\n"
    line = len(body.splitlines())
    return write(folder, body), f"{{job}}: budget.num_trials: duplicate key (given again at line {line}; first at line {line}): give each key once"


# --- aliases, nesting ---------------------------------------------------------------------------------------
def billion_laughs(base: dict, text: str) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + dump(base) + "description: *a9\n"  # 9**9 'lol's once expanded


def merge_alias(base: dict, text: str) -> str:
    return ("defaults: &defaults {num_trials: 2, max_concurrent_trials: 1}\n"
            + dump({k: v for k, v in base.items() if k != "budget"}) + "budget:\n  <<: *defaults\n")


def deep_flow(depth: int) -> Callable[[dict, str], str]:
    return lambda base, text: dump(base) + "description: " + "[" * depth + "]" * depth + "\n"


def deep_block(base: dict, text: str) -> str:
    return dump(base) + "".join("  " * i + "a:\n" for i in range(100)) + "  " * 100 + "a: 1\n"


# --- files that are not job files ---------------------------------------------------------------------------
def special(kind: str):
    def make(folder, base, text):
        if kind == "directory":
            p = folder / "job.yaml"
            p.mkdir()
            return p, f"{p}: is a directory, not a job file"
        if kind == "fifo":
            p = folder / "job.yaml"
            os.mkfifo(p)
            return p, f"{p}: must be a regular file (got a FIFO (named pipe))"
        if kind in ("/dev/null", "/dev/zero"):
            return Path(kind), f"{kind}: must be a regular file (got a character device)"
        if kind == "symlink to /dev/zero":
            p = folder / "job.yaml"
            p.symlink_to("/dev/zero")
            return p, f"{p}: must be a regular file (got a character device)"
        if kind == "missing":
            p = folder / "nope.yaml"
            return p, f"{p}: file not found"
        if kind == "2 MiB":
            p = write(folder, dump(base) + ("# " + "x" * 98 + "\n") * 21_000)
            return p, f"{p}: file too large ({p.stat().st_size:,} bytes; a job file may hold at most 1 MiB)"
        if kind == "not UTF-8":
            p = folder / "job.yaml"
            p.write_bytes(dump(base).encode() + b"description: caf\xe9\n")
            return p, f"{p}: must be UTF-8 text (invalid continuation byte at line {dump(base).count(chr(10)) + 1}, byte {len(dump(base)) + 16})"
        raise AssertionError(kind)
    return make


def passwd_like(folder: Path) -> Path:
    p = folder / "passwd"
    p.write_text("".join(f"user{i}:x:{1000 + i}:{1000 + i}:SECRET-CONTENT:/home/user{i}:/bin/sh\n" for i in range(300)))
    return p


def space_not_yaml(folder, base, text):
    passwd_like(folder)
    job = with_(base, "search.space", "../" + folder.name + "/passwd")
    p = write(folder, job)
    return p, f"{{job}}: search.space: must name a .yaml, .yml, .json file (got {job['search']['space']!r}, resolved to {folder / 'passwd'})"


def space_is_text(folder, base, text):
    src = passwd_like(folder)
    space = folder / "space.yaml"
    space.write_text(src.read_text())
    p = write(folder, with_(base, "search.space", "space.yaml"))
    return p, f"{space}: must be a mapping with a 'methods' key (got a string of {len(space.read_text()) - 1} characters)"


def data_path(kind: str):
    def make(folder, base, text):
        if kind == "directory":
            target = folder / "data"
            target.mkdir()
            what = "a directory"
        elif kind == "fifo":
            target = folder / "data.csv"
            os.mkfifo(target)
            what = "a FIFO (named pipe)"
        else:
            target = Path("/dev/null")
            what = "a character device"
        p = write(folder, with_(base, "data.path", str(target)))
        return p, f"{{job}}: data.path: must be a regular file (got {what}: {str(target)!r}, resolved to {target})"
    return make


def unknown_flood(base: dict, text: str) -> str:
    return dump(base) + "".join(f"k{i}: {i}\n" for i in range(9_000))  # just under MAX_NODES (20,000)


def node_flood(base: dict, text: str) -> str:
    return dump(base) + "".join(f"k{i}: {i}\n" for i in range(70_000))  # ~1 MiB, just under the size cap


def allowed(name: str) -> str:
    keys = ("budget, data, deploy, description, model, name, objective, output_dir, ray, retune, sampler, scheduler, "
            "search, seed, stages, storage, tracking, training, validate")
    return f"{{job}}: {name}: unknown key (allowed: {keys})"


CASES: list[Case] = [
    # booleans where a number is expected
    setting("budget.num_trials", True, "{job}: budget.num_trials: must be an integer, not true/false (got true)", "boolean for a number"),
    setting("training.epochs", True, "{job}: training.epochs: must be a number, not true/false (got true)", "boolean for a number"),
    setting("training.weight_decay", False, "{job}: training.weight_decay: must be a number, not true/false (got false)", "boolean for a number"),
    setting("seed", False, "{job}: seed: must be an integer, not true/false (got false)", "boolean for a number"),
    setting("budget.resources_per_trial.custom", {"big_node": True},
            "{job}: budget.resources_per_trial.custom: values must be numbers, not true/false (got true/false for big_node)",
            "boolean for a number"),
    inline_space({"lora": {"rank": True}}, "{job}: search.space.methods.lora.rank: must be an integer, not true/false (got true)",
                 "boolean for a number", "space lora.rank=true"),
    inline_space({"head": {"learning_rate": {"choices": [True, 0.01]}}},
                 "{job}: search.space.methods.head.learning_rate.choices[0]: must be a number, not true/false (got true)",
                 "boolean for a number", "space head.learning_rate choices [true]"),
    # duplicate keys
    Case("duplicate key", "top-level name twice", dup_name),
    Case("duplicate key", "budget.num_trials twice (block)", dup_nested),
    Case("duplicate key", "budget.num_trials twice (flow)", dup_flow, cli=True, every_pipeline=False),
    # non-finite numbers
    setting("training.epochs", None, "{job}: training.epochs: must be a finite number (got .inf)", "non-finite number", raw=".inf"),
    setting("training.epochs", None, "{job}: training.epochs: must be a finite number (got -.inf)", "non-finite number", raw="-.inf"),
    setting("training.weight_decay", None, "{job}: training.weight_decay: must be a finite number (got .nan)", "non-finite number", raw=".nan"),
    setting("budget.time_budget_s", None, "{job}: budget.time_budget_s: must be a finite number (got 1.0e+999)", "non-finite number", raw="1.0e+999"),
    setting("scheduler.reduction_factor", None, "{job}: scheduler.reduction_factor: must be a finite number (got inf)", "non-finite number", raw="!!float inf"),
    setting("description", None, "{job}: description: must be a finite number (got .NaN)", "non-finite number", raw=".NaN"),
    setting("search.space", None, "{job}: search.space.methods.head.learning_rate.low: must be a finite number (got -.inf)",
            "non-finite number", raw="{methods: {head: {learning_rate: {low: -.inf, high: 0.01}}}}"),
    # sizes no job needs
    setting("budget.num_trials", 10**30, "{job}: budget.num_trials: must be <= 100000 (got 1000000000000000000000000000000)", "absurd size"),
    setting("training.epochs", 1e-9, "{job}: training.epochs: must be >= 0.001 (got 1e-09)", "absurd size"),
    setting("training.epochs", 5000, "{job}: training.epochs: must be <= 1000 (got 5000.0)", "absurd size"),
    setting("seed", -1, "{job}: seed: must be >= 0 (got -1)", "absurd size"),
    setting("seed", 2**40, "{job}: seed: must be <= 4.29497e+09 (got 1099511627776)", "absurd size"),
    setting("training.batch_size", 10**9, "{job}: training.batch_size: must be <= 65536 (got 1000000000)", "absurd size"),
    setting("validate.bootstrap_samples", 10**12, "{job}: validate.bootstrap_samples: must be <= 100000 (got 1000000000000)", "absurd size"),
    setting("budget.max_concurrent_trials", 10**7, "{job}: budget.max_concurrent_trials: must be <= 10000 (got 10000000)", "absurd size"),
    setting("budget.num_trials", None, "{job}: budget.num_trials: must be an integer of at most 64 digits (got 5000 characters)",
            "absurd size", raw="9" * 5000),
    # aliases
    text_case("YAML alias", "billion laughs", billion_laughs,
              "{job}: a1[0]: YAML aliases are not allowed (*a0 at line 2, column 10): write the value out in full",
              cli=True, every_pipeline=False),
    text_case("YAML alias", "billion laughs (in-process)", billion_laughs,
              "{job}: a1[0]: YAML aliases are not allowed (*a0 at line 2, column 10): write the value out in full"),
    text_case("YAML alias", "merge key from an anchor", merge_alias,
              "{job}: budget.<<: YAML aliases are not allowed (*defaults at line", exact=False),
    # nesting
    text_case("deep nesting", "10,000 nested lists", deep_flow(10_000), "{job}: not valid YAML at line ", exact=False),
    text_case("deep nesting", "40 nested lists", deep_flow(40), "{job}: description" + "[0]" * 31 + ": nested deeper than 32 levels (at line ",
              exact=False),
    text_case("deep nesting", "100 nested mappings", deep_block, "{job}: a" + ".a" * 31 + ": nested deeper than 32 levels (at line ",
              exact=False),
    # files that are not (small, regular) job files
    Case("not a regular file / too large", "directory", special("directory")),
    Case("not a regular file / too large", "/dev/null", special("/dev/null"), every_pipeline=False),
    Case("not a regular file / too large", "/dev/zero", special("/dev/zero"), cli=True, every_pipeline=False),
    Case("not a regular file / too large", "FIFO", special("fifo"), cli=True, every_pipeline=False),
    Case("not a regular file / too large", "symlink to /dev/zero", special("symlink to /dev/zero"), every_pipeline=False),
    Case("not a regular file / too large", "missing", special("missing"), every_pipeline=False),
    Case("not a regular file / too large", "2 MiB", special("2 MiB")),
    Case("not a regular file / too large", "not UTF-8", special("not UTF-8")),
    Case("not a regular file / too large", "data.path is a directory", data_path("directory")),
    Case("not a regular file / too large", "data.path is a FIFO", data_path("fifo")),
    Case("not a regular file / too large", "data.path is /dev/null", data_path("/dev/null"), every_pipeline=False),
    # huge or foreign values echoed back
    text_case("echoed values", "9,000 unknown keys", unknown_flood, "... and 8950 more problem(s) not shown",
              every_pipeline=False),
    text_case("echoed values", "70,000 unknown keys", node_flood,
              "{job}: more than 20,000 keys and values (at line ", exact=False, every_pipeline=False),
    setting("name", "x" * 500_000, "{job}: name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ (got '" + "x" * 200 + "'... (500000 characters))",
            "echoed values"),
    setting("description", list(range(10_000)), "{job}: description: must be a string (got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...])",
            "echoed values"),
    setting("stages", ["preprocess"] * 10_000, "{job}: stages: must be the first stages of ", "echoed values", exact=False),
    Case("echoed values", "search.space is /etc/passwd-like", space_not_yaml),
    Case("echoed values", "search.space file holds a passwd-like text", space_is_text),
    # not YAML
    text_case("not valid YAML", "unclosed flow mapping", lambda b, t: dump(b) + "budget: {num_trials: 3\n",
              "{job}: not valid YAML at line ", exact=False),
    text_case("not valid YAML", "control character", lambda b, t: "name: t\ndescription: a\x07b\n",
              "{job}: not valid YAML at line 2, column 15: character U+0007: control characters are not allowed"),
    text_case("not valid YAML", "tab indentation", lambda b, t: "name: t\nbudget:\n\tnum_trials: 3\n",
              "{job}: not valid YAML at line 3, column 1: ", exact=False),
    text_case("not valid YAML", "two documents", lambda b, t: dump(b) + "---\nname: other\n",
              "{job}: not valid YAML at line ", exact=False),
    text_case("not valid YAML", "python object tag", lambda b, t: dump(b) + "description: !!python/object/apply:os.system [ls]\n",
              "{job}: not valid YAML at line ", exact=False),
    text_case("not valid YAML", "impossible date", lambda b, t: dump({k: v for k, v in b.items() if k != "name"}) + "name: 2001-13-45\n",
              "{job}: name: not a valid date or time (month must be in 1..12; quote it to mean text) (got '2001-13-45')"),
    text_case("not valid YAML", "undefined alias", lambda b, t: dump(b) + "description: *nowhere\n",
              "{job}: description: YAML aliases are not allowed (*nowhere at line ", exact=False),
    # the allowed-keys list speaks YAML
    setting("validate_stage", {}, allowed("validate_stage"), "allowed keys"),
    setting("validat", {}, allowed("validat"), "allowed keys"),
]


@pytest.fixture(scope="module")
def cli_start_s(tmp_path_factory) -> float:
    """Seconds the CLI takes to validate a good job (interpreter start, imports): the time bound of a CLI
    case is on the work beyond that, not on how busy the machine is."""
    job = write(tmp_path_factory.mktemp("good"), yaml.safe_load(SHIPPED[0].read_text()))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(job)], capture_output=True, check=True, timeout=120)
    return time.monotonic() - start


def generated() -> list:
    out = []
    for case in CASES:
        for shipped in SHIPPED if case.every_pipeline else SHIPPED[:1]:
            out.append(pytest.param(case, shipped, id=f"{case.category}-{case.name}-{shipped.stem}"))
    return out


def test_the_shipped_pipelines_are_a_valid_starting_point(tmp_path):
    """The damage below is the only thing wrong with each generated file."""
    assert SHIPPED
    for shipped in SHIPPED:
        api.validate(write(tmp_path, yaml.safe_load(shipped.read_text()), name=shipped.name))


@pytest.mark.parametrize("case,shipped", generated())
def test_hostile_job_file_is_refused_cleanly(case: Case, shipped: Path, tmp_path, request):
    text = shipped.read_text()
    job, expected = case.make(tmp_path, yaml.safe_load(text), text)
    expected = expected.replace("{job}", str(job))
    allowed_s = MAX_SECONDS
    if case.cli:
        allowed_s += request.getfixturevalue("cli_start_s")
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(job)],
                              capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - start
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        lines = [l[2:] for l in proc.stderr.splitlines()[1:]]
    else:
        start = time.monotonic()
        with pytest.raises(ConfigError) as info:
            api.validate(job)
        seconds = time.monotonic() - start
        lines = info.value.problems
    report = "\n".join(lines)
    assert seconds < allowed_s, f"took {seconds:.1f} s"
    assert len(lines) <= MAX_LINES and len(report) <= MAX_MESSAGE, f"{len(lines)} lines, {len(report)} characters"
    assert "Traceback" not in report
    if case.exact:
        assert expected in lines, report[:3000]
    else:
        assert expected in report, report[:3000]
    assert "SECRET-CONTENT" not in report  # another file's contents are never echoed


def test_a_flood_of_problems_says_how_many_were_left_out(tmp_path):
    job = write(tmp_path, unknown_flood(yaml.safe_load(SHIPPED[0].read_text()), ""))
    with pytest.raises(ConfigError) as info:
        api.validate(job)
    assert len(info.value.problems) == 51
    assert info.value.problems[-1] == "... and 8950 more problem(s) not shown"
    assert info.value.total == 9_000


def test_cli_says_not_valid_yaml_with_a_position_never_a_question_mark(tmp_path):
    job = write(tmp_path, "name: t\ndescription: a\x00b\n")
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(job)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{job}: not valid YAML at line 2, column 15: character U+0000: control characters are not allowed" in proc.stderr
    assert "at ?" not in proc.stderr


# --- the data file: the same care where the job points at it ------------------------------------------------
def test_a_label_spelled_nan_is_a_missing_label_not_a_class(tmp_path):
    from autotune.config.job import DataConfig
    from autotune.data.prepare import prepare

    rows = [f"good film {i},pos" for i in range(20)] + [f"bad film {i},neg" for i in range(20)]
    rows += ["odd film a,NaN", "odd film b,nan", "odd film c,-NaN", "odd film d, NAN "]
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    data = prepare(csv, DataConfig(path=str(csv)))
    assert data.labels == ["neg", "pos"]
    assert data.cleaning.missing_label == 4
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(f'{{"text": "t{i}", "label": "{l}"}}\n' for i, l in enumerate(["a", "b"] * 20 + ["NaN"])))
    data = prepare(jsonl, DataConfig(path=str(jsonl)))
    assert data.labels == ["a", "b"] and data.cleaning.missing_label == 1


def test_other_missing_value_words_stay_class_names(tmp_path):
    from autotune.config.job import DataConfig
    from autotune.data.prepare import prepare

    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "\n".join(f"text {i},{l}" for i, l in enumerate(["None", "NA"] * 20)) + "\n")
    assert prepare(csv, DataConfig(path=str(csv))).labels == ["NA", "None"]


def test_a_data_file_with_100k_labels_gets_a_short_message(tmp_path):
    from autotune.config.job import DataConfig
    from autotune.data.prepare import prepare
    from autotune.errors import DataError

    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"text {i},label{i}\n" for i in range(100_000)))
    with pytest.raises(DataError) as info:
        prepare(csv, DataConfig(path=str(csv)))
    msg = str(info.value)
    assert len(msg) < 1000
    assert msg.endswith(f"(too few: {{'label0': 1, 'label1': 1, 'label2': 1, 'label3': 1, 'label4': 1, 'label5': 1, "
                        f"'label6': 1, 'label7': 1, 'label8': 1, 'label9': 1, ... (99990 more)}}; 100000 of 100000 classes)")


def test_a_data_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    from autotune.config.job import DataConfig
    from autotune.data.prepare import read_table
    from autotune.errors import DataError

    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"d\.csv: must be a regular file \(got a FIFO\)$"):
        read_table(fifo, "csv", DataConfig(path=str(fifo)))
