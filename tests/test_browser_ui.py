"""A finished job as a person sees it in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver (no browser or driver downloads), over

- the MLflow UI that `autotune ui FOLDER` starts, at the link it prints: the job's run with its trial runs
  nested under it (shown once the job's row is expanded) and the objective metric in the table; a trial run's
  page with its metrics and parameters; the registered model with its `champion` alias and the model
  version's page with its aliases and signature;
- optuna-dashboard on the job folder's optuna.db: the study page names the best trial, the trials page lists
  every trial.

Every page is saved as a screenshot under the test's tmp folder and, when AUTOTUNE_SCREENSHOTS names a
folder, copied there to look at. The test skips only where Chromium or chromedriver is missing (and fails in
CI, whose machine README's prerequisites install them)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster_env import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
WAIT_S = 60  # for one page or element; a loaded 2-core machine renders MLflow's pages in a few seconds

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"),
                       reason=f"needs Debian's headless Chromium: {', '.join(MISSING)} missing "
                              f"(apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser_present():
    if MISSING:  # only in CI (skipped elsewhere)
        pytest.fail(f"the browser test needs {', '.join(MISSING)}: .ci/run must install chromium chromium-driver")


@pytest.fixture(scope="module")
def job(browser_present, tiny_model_dir, synthetic_csv, tmp_path_factory):
    """Preprocess, a 2-trial head-only search (one rung each), validate and deploy: a parent run with two
    nested trial runs, a registered model version with `champion`, an Optuna study (~30 s)."""
    from autotune import api
    from tests.tiny_jobs import tiny_job

    path = tiny_job(tmp_path_factory.mktemp("browser"), tiny_model_dir, synthetic_csv, "browser", """
        stages: [preprocess, tune, validate, deploy]
        objective: {metric: val_accuracy}
        budget: {num_trials: 2}
        training: {epochs: 1, evals_per_epoch: 1}
        validate: {diagnostics: "off", bootstrap_samples: 100}
    """)
    summary = api.submit(path)
    return Path(summary["output_dir"]), summary


@pytest.fixture()
def shots(tmp_path, request, driver):
    """save(driver, name): a PNG of the browser's viewport in tmp_path/screenshots, also copied to
    $AUTOTUNE_SCREENSHOTS when set. A test that fails leaves FAILED-<test>.png of the page it was on."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    extra = Path(os.environ["AUTOTUNE_SCREENSHOTS"]) if os.environ.get("AUTOTUNE_SCREENSHOTS") else None
    if extra:
        extra.mkdir(parents=True, exist_ok=True)

    def save(drv, name: str) -> Path:
        png = folder / f"{name}.png"
        assert drv.save_screenshot(str(png)), f"screenshot {png} not written"
        if extra:
            shutil.copy2(png, extra / png.name)
        return png

    failed_before = request.session.testsfailed
    yield save
    if request.session.testsfailed > failed_before:  # the call's report is logged before this teardown
        with contextlib.suppress(Exception):  # a browser that died has no page to save
            save(driver, f"FAILED-{request.node.name}")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """SIGTERM, not SIGINT: a process started from a background job inherits SIGINT ignored (POSIX), and then
    Ctrl-C's KeyboardInterrupt never comes; `autotune ui` handles SIGTERM itself."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def mlflow_ui(job):
    """`autotune ui FOLDER` at a free port, started and not waited for: its MLflow server boots (seconds of
    CPU) while optuna-dashboard is looked at."""
    folder, _ = job
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "autotune.cli", "ui", str(folder), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield ui, port
    finally:
        _stop(ui)  # SIGTERM: autotune ui stops its mlflow server


@pytest.fixture(scope="module")
def runs_view(mlflow_ui) -> str:
    """The link `autotune ui` prints once its server's /health answers."""
    ui, port = mlflow_ui
    assert ui.stdout.readline() == f"starting the MLflow UI on 127.0.0.1:{port} (one worker) ...\n"
    line = ui.stdout.readline()
    assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}/#/experiments/"), \
        line + (ui.stderr.read() if ui.poll() is not None else "")
    return line.split()[2]


@pytest.fixture(scope="module")
def dashboard(job, tmp_path_factory):
    """optuna-dashboard on the folder's optuna.db at 127.0.0.1 and a free port, once its API answers; its
    wsgiref server (optuna-dashboard picks gunicorn where that is installed, and gunicorn also opens a control
    socket under ~/.gunicorn)."""
    folder, _ = job
    port, log = free_port(), tmp_path_factory.mktemp("optuna-dashboard") / "log"
    with log.open("w") as out:
        dash = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"),
                                 f"sqlite:///{folder / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port),
                                 "--server", "wsgiref"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + WAIT_S
        while True:  # poll until the API answers: it has opened the storage
            assert dash.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + "/api/studies", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"optuna-dashboard did not answer within {WAIT_S} s: {log}"
            time.sleep(0.2)
        yield base
    finally:
        _stop(dash, signal.SIGTERM)


@pytest.fixture(scope="module")
def driver(browser_present, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    folder = tmp_path_factory.mktemp("chromium")
    profile = folder / "profile"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1920,1080", f"--user-data-dir={profile}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    # an explicit driver path: Selenium Manager (which would download a driver) is never consulted
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log"))
    drv = webdriver.Chrome(service=service, options=opts)
    drv.set_page_load_timeout(WAIT_S)
    try:
        yield drv
    finally:
        drv.quit()


def wait(driver, what: str, condition, timeout: float = WAIT_S):
    """WebDriverWait for `condition` (a truthy value); a timeout fails the test naming what was missing (the
    shots fixture then saves the page as FAILED-<test>.png). React re-renders replace elements between a find
    and a read of their text: a stale element is one more poll, never a failure (the CI run at a666852 failed
    on exactly that)."""
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                            TimeoutException)
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException)).until(condition)
    except TimeoutException:
        pass
    pytest.fail(f"{what}: not shown within {timeout:.0f} s at {driver.current_url}")


def click(driver, what: str, find) -> None:
    """Click the element `find(driver)` returns, finding it again if a re-render replaced it before the click."""
    wait(driver, what, lambda d: find(d).click() or True)


def text_of(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def close_assistant(driver) -> None:
    """MLflow 3.17 opens its Assistant panel on a first visit (a quarter of the screen): close it; the browser
    remembers."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "[data-assistant-ui] button[aria-label='Close']"):
        if button.is_displayed():
            button.click()
    wait(driver, "assistant panel closed", lambda d: not any(
        b.is_displayed() for b in d.find_elements(By.CSS_SELECTOR, "[data-assistant-ui] button[aria-label='Close']")))


def mlflow_client(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def test_optuna_dashboard_names_the_best_trial_and_lists_all(job, mlflow_ui, dashboard, driver, shots):
    """Runs first: the MLflow server of `autotune ui` (mlflow_ui, not waited for) boots meanwhile."""
    import optuna
    from selenium.webdriver.common.by import By

    folder, summary = job
    study = optuna.load_study(study_name=summary["job"], storage=f"sqlite:///{folder / 'optuna.db'}")
    best_number = int(summary["best_trial"].split()[1])
    # one rung per trial and head-only trials: Optuna's best trial (best final value) is AutoTune's pick
    assert study.best_trial.number == best_number
    with urllib.request.urlopen(dashboard + "/api/studies", timeout=10) as resp:
        ids = {s["study_name"]: s["study_id"] for s in json.load(resp)["study_summaries"]}
    study_id = ids[summary["job"]]

    driver.get(f"{dashboard}/dashboard/studies/{study_id}")
    card = wait(driver, "the study's best trial", lambda d: [
        e for e in d.find_elements(By.XPATH, f"//*[normalize-space(text())='Best Trial (number={best_number})']")])[0]
    assert f"{summary['job']} (id={study_id})" in text_of(driver)
    assert summary["objective"] in text_of(driver)  # the named objective, not "Objective 0"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    shown = card.find_element(By.XPATH, "..").text.splitlines()  # the card: heading, value, params
    params = ", ".join(f"{k}: {v}" for k, v in study.best_trial.params.items())
    assert float(shown[1]) == pytest.approx(study.best_value) and f"Params = [{params}]" in shown, shown
    shots(driver, "1-optuna-study")

    driver.get(f"{dashboard}/dashboard/studies/{study_id}/trials")
    wait(driver, "the study's trial list", lambda d: f"{len(study.trials)} Trials" in text_of(d))
    lines = text_of(driver).splitlines()
    for t in study.trials:
        assert f"Trial {t.number}" in lines, t.number
        assert lines[lines.index(f"Trial {t.number}") + 1] == t.state.name.capitalize()
    assert lines[lines.index(f"Trial {best_number}") + 2] == "Best Trial"
    shots(driver, "2-optuna-trials")


def test_mlflow_runs_view_nests_trials_and_a_trial_page_shows_its_metrics(job, runs_view, driver, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folder, summary = job
    metric = summary["objective"]
    assert metric == "val_accuracy"
    parent = summary["mlflow_run_id"]
    client = mlflow_client(folder)
    trials = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(trials) == 2

    driver.get(runs_view)
    left = ".ag-pinned-left-cols-container"  # the runs table's pinned columns: run names, one row per run
    wait(driver, "the job's run in the runs table",
         lambda d: d.find_elements(By.CSS_SELECTOR, f"{left} [row-id='{parent}']"))
    close_assistant(driver)
    assert f"{len(trials) + 1} matching runs" in text_of(driver)
    shown = wait(driver, "the runs table's rows", lambda d: {
        r.get_attribute("row-id") for r in d.find_elements(By.CSS_SELECTOR, f"{left} [row-id]")})
    assert shown == {parent}, "trial runs must be nested under the job's run, not listed beside it"
    click(driver, "the job run's expand button", lambda d: d.find_element(  # expand the job's run
        By.CSS_SELECTOR, f"{left} [row-id='{parent}'] [col-id='attributes.`Run Name`'] button"))
    wait(driver, "trial runs under the expanded job run", lambda d: {
        r.get_attribute("row-id") for r in d.find_elements(By.CSS_SELECTOR, f"{left} [row-id]")}
        == {parent} | {t.info.run_id for t in trials})

    # the objective metric is a column of its own choosing (MLflow 3.17 shows none by default): pick it, and the
    # job run's best.<metric>, in the Columns selector as a person would
    click(driver, "the Columns selector", lambda d: d.find_element(
        By.CSS_SELECTOR, "[data-testid='column-selection-dropdown']"))
    search = wait(driver, "the column search box", lambda d: [
        e for e in d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']") if e.is_displayed()])[0]
    for name in (metric, f"best.{metric}"):
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(name)
        wait(driver, f"metric {name} in the column selector", lambda d: [
            e for e in d.find_elements(By.XPATH, "//div[@role='dialog']//span[contains(@class, 'tree-title')]")
            if e.text.strip() == name])[0].click()
        wait(driver, f"column {name} in the runs table", lambda d: d.find_elements(
            By.CSS_SELECTOR, f".ag-header-cell[col-id='metrics.`{name}`']"))
    search.send_keys(Keys.ESCAPE)
    wait(driver, "column selector closed", lambda d: not [
        e for e in d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']") if e.is_displayed()])

    def cell(run_id: str, name: str) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, f".ag-center-cols-container [row-id='{run_id}'] "
                                                      f"[col-id='metrics.`{name}`']")
        return found[0].text.strip() if found and found[0].is_displayed() else ""

    for t in trials:
        value = t.data.metrics[metric]
        shown = wait(driver, f"{metric} of {t.info.run_name}", lambda d: cell(t.info.run_id, metric))
        assert float(shown) == pytest.approx(value, abs=5e-3), (t.info.run_name, shown, value)
    best = wait(driver, f"best.{metric} of the job run", lambda d: cell(parent, f"best.{metric}"))
    assert float(best) == pytest.approx(summary["objective_value"], abs=5e-3)
    shots(driver, "3-mlflow-runs-view")

    # a trial's page, opened from its link in the table
    trial = max(trials, key=lambda t: int(t.data.params["trial_number"]))
    click(driver, f"{trial.info.run_name}'s link", lambda d: d.find_element(
        By.CSS_SELECTOR, f"{left} a[href$='/runs/{trial.info.run_id}']"))
    wait(driver, f"{trial.info.run_name}'s page", lambda d: trial.info.run_name in text_of(d)
         and f"Metrics ({len(trial.data.metrics)})" in text_of(d)
         and f"Parameters ({len(trial.data.params)})" in text_of(d))
    page = text_of(driver)
    lines = page.splitlines()  # the Metrics and Parameters tables: a name, then its value on the next line
    for key, value in {**trial.data.params, **trial.data.metrics}.items():
        assert key in lines, f"{key} not on the trial's page"
        shown = lines[lines.index(key) + 1]
        assert (float(shown) == pytest.approx(value) if isinstance(value, float) else shown == value), (key, shown)
    assert "Parent run" in page and lines[lines.index("Parent run") + 1] == client.get_run(parent).info.run_name
    assert trial.data.tags["mlflow.note.content"].splitlines()[0] in page  # why the trial ended
    shots(driver, "4-mlflow-trial-run")


def test_registered_model_shows_champion_and_the_version_its_signature(job, runs_view, driver, shots):
    from mlflow.models import Model
    from selenium.webdriver.common.by import By

    folder, summary = job
    client = mlflow_client(folder)
    name = summary["registered"].split()[0]
    version = client.get_model_version_by_alias(name, "champion")
    assert set(version.aliases) == {"champion", "challenger"}
    base = runs_view.split("/#/")[0]

    driver.get(f"{base}/#/models/{name}")
    wait(driver, f"the versions of registered model {name}", lambda d: f"Version {version.version}"
         in text_of(d))
    close_assistant(driver)
    wait(driver, f"version {version.version}'s row with its aliases", lambda d: [
        r for r in d.find_elements(By.CSS_SELECTOR, "[role='row'], tr") if f"Version {version.version}" in r.text
        and all(f"@\u00a0{a}" in r.text or f"@ {a}" in r.text for a in version.aliases)])
    shots(driver, "5-mlflow-registered-model")

    click(driver, f"version {version.version}'s link", lambda d: d.find_element(
        By.CSS_SELECTOR, f"a[href$='#/models/{name}/versions/{version.version}']"))
    for alias in version.aliases:
        wait(driver, f"alias {alias} on the version page",
             lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, f"[title='{alias}']") if alias in e.text])
    source_run = client.get_run(version.run_id).info.run_name
    assert source_run in text_of(driver) and "Source Run" in text_of(driver)
    signature = Model.load(Path(client.get_model_version_download_uri(name, version.version)
                                .removeprefix("file://")) / "MLmodel").signature
    inputs, outputs = signature.inputs.input_names(), signature.outputs.input_names()
    for heading in (f"Inputs ({len(inputs)})", f"Outputs ({len(outputs)})"):
        def toggle(d, heading=heading):
            found = d.find_element(By.XPATH, f"//*[@role='cell']//div[normalize-space(.)='{heading}']")
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", found)
            return found

        click(driver, f"schema {heading}", toggle)

    def schema_cells(d) -> list[str]:  # "text (required)", "string", ...
        return [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "[role='cell']") if e.text.strip()]

    cells = wait(driver, "the signature's columns", lambda d: (lambda c: c if set(inputs + outputs) <= {
        x.split()[0] for x in c} else None)(schema_cells(d)))
    assert {"string", "double"} <= set(cells)  # their types beside them
    shots(driver, "6-mlflow-model-version")
