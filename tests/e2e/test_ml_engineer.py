"""The ML engineer's path, as the README tells it: their own torch model as a task
(tests/fixtures/breast_cancer_mlp.py, a TorchTask on scikit-learn's breast-cancer data) ->
``check-task`` -> ``serve`` (a real uvicorn Prover on loopback, transcripts public) ->
``verify`` with ε as a share of Var f -> the ``/audit`` page in headless Chromium, which must
show the task, ε as typed, the verdict and a date."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.signing import generate_key, save_private_key
from prover_service.app import create_app
from prover_service.cli import app as prover_cli
from prover_service.settings import Settings
from tests.databases import db_url
from tests.serving import serve, verifier_db
from verifier_client.cli import app as verifier_cli

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
FACTORY = f"{Path(__file__).parents[1] / 'fixtures' / 'breast_cancer_mlp.py'}:make_task"
ISO_DATE = re.compile(r"\b20\d\d-\d\d-\d\d \d\d:\d\d UTC\b")


def _browser():  # type: ignore[no-untyped-def]
    from selenium.webdriver.chrome.options import Options as ChromeOptions
    from selenium.webdriver.chrome.service import Service

    opts = ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=opts)


def test_own_task_to_check_task_serve_verify_and_the_audit_page(tmp_path: Path) -> None:
    runner = CliRunner()
    # 1. check-task (in this process; serve repeats its short check): tau covers the runs
    checked = runner.invoke(prover_cli, ["check-task", "--task", FACTORY, "--rows", "4",
                                         "--no-processes", "--json"])  # fmt: skip
    assert checked.exit_code == 0, (checked.stdout[-800:], checked.stderr[-800:])
    # 2. serve it (serve's own start-up check of tau runs too), transcripts public
    save_private_key(generate_key(), tmp_path / "p.pem")
    save_private_key(generate_key(), tmp_path / "v.pem")
    settings = Settings(db=db_url(tmp_path, "p"), key_file=tmp_path / "p.pem",
                        array_dir=tmp_path / "arrays", tasks=[FACTORY],
                        public_transcripts=True)  # fmt: skip
    with serve(create_app(settings)) as url:
        # 3. verify, epsilon as a share of Var f (given small sizes: the test stays quick)
        out = runner.invoke(verifier_cli, [
            "verify", "--prover", url, "--task", FACTORY, "--epsilon", "50%", "--budget", "200",
            "--pilot", "8", "--pairs", "200", "--spot-checks", "40",
            "--key", str(tmp_path / "v.pem"),
            "--db", verifier_db(tmp_path), "--seed", "3", "--json", "--no-progress",
        ])  # fmt: skip
        assert out.exit_code in (0, 1), (out.stdout[-800:], out.stderr[-800:])
        result = json.loads(out.stdout)
        assert result["relative"] and result["epsilon"] == 0.5
        sid, verdict = result["session"], result["verdict"]
        # 4. the audit pages, in Chromium
        driver = _browser()
        try:
            driver.get(f"{url}/audit")
            (row,) = driver.find_elements("css selector", "#sessions tr")[1:]
            assert row.find_element("css selector", "td.task").text == "breast-cancer-mlp"
            assert row.find_element("css selector", "td.epsilon").text.startswith("50 % of Var f (")
            assert row.find_element("css selector", "td.verdict").text.startswith(verdict)
            assert ISO_DATE.search(row.find_element("css selector", "td.date").text)
            driver.get(f"{url}/audit/sessions/{sid}")
            trust = driver.find_element("id", "trust").text
            assert "breast-cancer-mlp" in trust and "\u03b5 = 50 % of Var f (" in trust
            assert verdict.upper() in trust and ISO_DATE.search(trust)
            assert driver.find_element("id", "outcome").text == "PASSED"
        finally:
            driver.quit()
