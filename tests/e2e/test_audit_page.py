"""The /audit page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium): it loads, shows the signed head and the sessions, draws the per-target
bounds chart and the noise-stability fit (a dot per level, the fitted curve, labelled axes) for
an accepted and an aborted session, and shows a tampered transcript as failed; on SQLite and on
PostgreSQL. A screenshot of the accepted session's whole page is written to
``$VDA_AUDIT_SCREENSHOT`` if set (docs/audit-page.png:
``VDA_AUDIT_SCREENSHOT=$PWD/docs/audit-page.png pytest tests/e2e/test_audit_page.py -k sqlite``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from protocol.messages import Challenge
from protocol.signing import generate_key, save_private_key
from prover_service.app import create_app
from prover_service.settings import Settings
from prover_service.tables import SessionRow
from tests.databases import db_url, on_both_databases
from tests.serving import serve, verifier_db
from verifier_client.client import ProverClient
from verifier_client.run import Options, run_verification
from verifier_client.store import VerifierStore

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
TASK = "planted:n_train=20,n_targets=2"
KEY = generate_key()


def _browser():  # type: ignore[no-untyped-def]
    from selenium.webdriver.chrome.options import Options as ChromeOptions
    from selenium.webdriver.chrome.service import Service

    opts = ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1400"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=opts)


def _verify(url: str, root: Path, epsilon: float, seed: int, relative: bool = False) -> dict:  # type: ignore[type-arg]
    opts = Options(task=TASK, epsilon=epsilon, protocol="interactive", budget=400,
                   max_prover_trainings=20_000,
                   poll_s=0.02, seed=seed.to_bytes(8, "little"),
                   secrets_seed=seed.to_bytes(8, "little"), relative=relative)  # fmt: skip
    with httpx.Client(base_url=url, timeout=60) as http:
        store = VerifierStore(verifier_db(root))
        return run_verification(ProverClient(http, key=KEY), store, KEY, opts, url)


def _check_stability_chart(driver, svc, session_id: str) -> None:  # type: ignore[no-untyped-def]
    """One dot per level at the recomputed h(rho), the fitted curve drawn, both axes labelled."""
    challenge = json.loads(svc.sessions.read(session_id).challenge_json)["payload"]
    rhos = Challenge.model_validate(challenge).design(20).rhos
    chart = driver.find_element("css selector", "#stability svg.chart.stability")
    dots = chart.find_elements("css selector", "circle.level")
    assert len(dots) == len(rhos) == 3
    assert all(d.is_displayed() and d.size["width"] > 0 for d in dots)
    ys = [float(d.get_attribute("cy")) for d in dots]
    assert len(set(ys)) > 1, "the levels' h(rho) differ: the dots are placed by value"
    curve = chart.find_elements("css selector", "polyline.fit")
    assert curve and all(len(c.get_attribute("points").split()) > 2 for c in curve)
    assert chart.find_elements("css selector", "rect.h1")
    labels = {t.get_attribute("class"): t.text for t in chart.find_elements("css selector",
              "text.axis-label")}  # fmt: skip
    assert "\u03c1" in labels["axis-label x"] and "h(\u03c1)" in labels["axis-label y"]
    assert "Derived here" in driver.find_element("id", "stability-note").text


ISO_DATE = re.compile(r"\b20\d\d-\d\d-\d\d \d\d:\d\d UTC\b")


def _check_what_to_trust_in_the_list(driver, svc, accepted, aborted) -> None:  # type: ignore[no-untyped-def]
    """The list: a task column, dates (not epochs), epsilon as typed, delta rounded."""
    heads = [th.text for th in driver.find_elements("css selector", "#sessions th")]
    assert "task" in heads and "date" in heads and "ε asked" in heads
    name = next(iter(svc.tasks.values())).name
    rows = {r.find_element("css selector", "a").get_attribute("href").rsplit("/", 1)[1]: r
            for r in driver.find_elements("css selector", "#sessions tr")[1:]}  # fmt: skip
    for result in (accepted, aborted):
        row = rows[result["session"]]
        assert row.find_element("css selector", "td.task").text == name
        assert ISO_DATE.search(row.find_element("css selector", "td.date").text)
        assert row.find_element("css selector", "td.verdict").text.startswith(result["verdict"])
    shown = rows[aborted["session"]].find_element("css selector", "td.epsilon").text
    assert shown.startswith("0.1 % of Var f (") and "absolute)" in shown, shown
    assert rows[aborted["session"]].find_element("css selector", "td.delta").text == "0.05"
    assert rows[accepted["session"]].find_element("css selector", "td.epsilon").text == \
        "0.6 (absolute)"  # fmt: skip
    assert ISO_DATE.search(driver.find_element("id", "head-date").text)


def _check_what_to_trust(driver, svc, result) -> None:  # type: ignore[no-untyped-def]
    """A session page says what was asked, the verdict, the bound, who trained what, when,
    and that the signatures and the log passed, in words and rounded figures."""
    rows = {tr.find_element("css selector", "th").text: tr.find_element("css selector", "td").text
            for tr in driver.find_elements("css selector", "#trust tr")}  # fmt: skip
    assert next(iter(svc.tasks.values())).name in rows["task"]
    if result["relative"]:
        assert rows["asked"].startswith("ε = 0.1 % of Var f (") and "absolute)" in rows["asked"]
        assert "δ = 0.05 in total: 0.0375 for the certificate, 0.0125 for the lower bound " \
            "on Var f" in rows["asked"], rows["asked"]  # fmt: skip
    else:
        assert rows["asked"].startswith("ε = 0.6 (absolute)") and "δ = 0.05" in rows["asked"]
    assert rows["verdict"].startswith(result["verdict"].upper())
    assert "it matches" in rows["verdict"]
    cert = result["certified_epsilon"]
    if cert is not None:
        assert f"≤ {cert:.3g}, at 95 % confidence" in rows["certified bound"]
    assert rows["attribution"].startswith("ridge with 400 trainings, by the Prover")
    prover, verifier = result["prover_trainings"], len(result["spot_checks"]["indices"]) \
        if result.get("spot_checks") and "indices" in result["spot_checks"] else None  # fmt: skip
    assert f"Prover {prover:,} (the challenge)" in rows["trainings"]
    if verifier is not None:
        assert f"Verifier {verifier:,}" in rows["trainings"]
    assert len(ISO_DATE.findall(rows["when"])) == 2, rows["when"]
    assert rows["signatures and hashes"] == "all passed"
    assert rows["transparency log"] == "every message included"


@on_both_databases
def test_audit_page_in_chromium(tmp_path: Path) -> None:
    save_private_key(generate_key(), tmp_path / "p.pem")
    settings = Settings(db=db_url(tmp_path, "p"), key_file=tmp_path / "p.pem",
                        array_dir=tmp_path / "arrays", tasks=[TASK],
                        public_transcripts=True)  # fmt: skip
    app = create_app(settings)
    assert app.state.service.checks.wait(timeout=600)  # the start-up task check (background)
    with serve(app) as url:
        accepted = _verify(url, tmp_path, 0.6, 1)
        aborted = _verify(url, tmp_path, 0.001, 2, relative=True)  # 0.1 % of Var f
        assert (accepted["verdict"], aborted["verdict"]) == ("accept", "abort"), aborted["reason"]
        driver = _browser()
        try:
            t0 = time.perf_counter()
            driver.get(f"{url}/audit")
            load_s = time.perf_counter() - t0
            size = int(driver.find_element("id", "log-size").text)
            assert size == 7  # attribution + 2 x (challenge, response, verdict)
            links = driver.find_elements("css selector", "#sessions a")
            assert len(links) == 2
            _check_what_to_trust_in_the_list(driver, app.state.service, accepted, aborted)
            for result in (accepted, aborted):
                driver.get(f"{url}/audit/sessions/{result['session']}")
                assert driver.find_element("id", "outcome").text == "PASSED"
                bars = driver.find_elements("css selector", "svg.chart rect.bound")
                assert len(bars) == 2 and all(b.size["height"] > 0 for b in bars)
                _check_stability_chart(driver, app.state.service, result["session"])
                assert len(driver.find_elements("css selector", "#proofs tr")) == 1 + 4
                _check_what_to_trust(driver, app.state.service, result)
            driver.get(f"{url}/audit/sessions/{accepted['session']}")
            shot = os.environ.get("VDA_AUDIT_SCREENSHOT")
            if shot:
                tall = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1100, int(tall) + 200)
                driver.save_screenshot(shot)
            # tamper with the stored response: the page recomputes and shows it failed
            svc = app.state.service
            row = svc.sessions.read(accepted["session"])
            assert row.response_json is not None
            forged = row.response_json.replace('"device_class":"', '"device_class":"x')
            with svc.db.begin() as s:
                s.execute(update(SessionRow).where(SessionRow.id == row.id)
                          .values(response_json=forged))  # fmt: skip
            driver.get(f"{url}/audit/sessions/{accepted['session']}")
            assert driver.find_element("id", "outcome").text == "FAILED"
            failed = driver.find_elements("css selector", "#checks td.failed")
            assert failed, "a tampered transcript shows a failed check"
        finally:
            driver.quit()
    print(f"audit page load {load_s:.3f} s")  # noqa: T201
