"""The blind reading sheet in a real browser (headless Chromium via playwright): label with keystrokes, reload
(labels kept), undo, export, import with `dean label --import`, figures checked by hand."""

import json
import os
from pathlib import Path

import pytest
from scipy.stats import binomtest

from dean_hf.cli import main
from dean_hf.eval.answers import write_answers
from test_reading import SPEC, reader_spec, rows_of

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
LONG = " ".join(["This long answer goes on about the question without ever taking up the task;"] * 9)[:800]


@pytest.fixture(scope="module")
def browser():
    why = None
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is absent (Debian: apt-get install chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            why = "playwright is not installed (pip install 'dean_hf[test]')"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser test cannot run: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_sheet_in_a_browser(browser, tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["before"]["fairness"][2] = [LONG, "aware"]  # ~120 words: must show without scrolling
    run = tmp_path / "run"
    write_answers(run / "answers.jsonl", rows_of(spec))
    assert len(LONG.split()) >= 110
    assert main(["label", str(run)]) == 0
    key = next(iter(json.loads((run / "reading_key.json").read_text())["sheets"].values()))
    truth = {i: reader_spec(k["settings"], k["question_id"]) for i, k in key["items"].items()}
    answers = {r["answer"]: r for r in rows_of(spec)}
    by_text = {}
    for item, k in key["items"].items():
        text = next(a for a, r in answers.items() if r["question_id"] == k["question_id"] and
                    r["setting"] == k["settings"][0])
        by_text[text] = item
    keys = {"aware": "a", "unaware": "u", "unclear": "c"}

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((run / "reading" / "sheet.html").as_uri())

    def shown():
        return by_text[page.inner_text("#answer")]

    def progress():
        return page.inner_text("#progress")

    assert progress() == "0 of 10 read"
    order = []
    for _ in range(4):
        item = shown()
        order.append(item)
        page.keyboard.press(keys[truth[item]])
        assert shown() != item  # the next answer at once
    assert progress() == "4 of 10 read"
    page.reload()
    assert progress() == "4 of 10 read" and shown() not in order  # labels kept across a reload
    item = shown()
    wrong = "unaware" if truth[item] == "aware" else "aware"
    page.keyboard.press(keys[wrong])
    assert progress() == "5 of 10 read"
    page.keyboard.press("Backspace")  # undo: the wrong label is gone and its answer is back
    assert progress() == "4 of 10 read" and shown() == item
    page.keyboard.press("z")  # undo once more: the fourth label of before the reload
    assert progress() == "3 of 10 read" and shown() == order[3]
    while progress() != "10 of 10 read":
        item = shown()
        if item == by_text[LONG]:  # a long answer fits: no scrolling
            assert page.evaluate("document.getElementById('card').scrollHeight <= "
                                 "document.getElementById('card').clientHeight")
            assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight")
        page.keyboard.press(keys[truth[item]])
    assert page.is_visible("#done") and page.is_visible("#export")
    exported = json.loads(page.input_value("#export-text"))
    assert exported == {"sheet": key["sheet"], "labels": truth}
    with page.expect_download() as download:
        page.click("#download")
    assert json.loads(Path(download.value.path()).read_text()) == exported
    shot = tmp_path / "sheet.png"
    page.keyboard.press("ArrowLeft")
    page.screenshot(path=str(shot))
    print(f"screenshot of the sheet: {shot}")
    assert shot.stat().st_size > 10_000
    assert all(u.startswith(("file://", "data:")) for u in requests), requests  # nothing from the network
    page.close()

    (tmp_path / "labels.json").write_text(json.dumps(exported))
    assert main(["label", str(run), "--import", str(tmp_path / "labels.json")]) == 0
    reading = json.loads((run / "reading.json").read_text())
    fair, priv = reading["paired"]["after"]["fairness"], reading["paired"]["after"]["privacy"]
    # by hand: fairness 3 read questions improved (unaware -> aware), 3 identical answers tie: +3/-0 of 6;
    # privacy question 0 improved, question 3 worsened, 2 ties: +1/-1 of 4
    assert (fair["improved"], fair["worsened"], fair["n"], fair["difference"]) == (3, 0, 6, 0.5)
    assert (priv["improved"], priv["worsened"], priv["n"], priv["difference"]) == (1, 1, 4, 0.0)
    assert fair["p_value"] == pytest.approx(binomtest(3, 3, 0.5).pvalue)  # 0.25
    assert priv["p_value"] == pytest.approx(binomtest(1, 2, 0.5).pvalue)  # 1
    assert fair["p_adjusted"] == pytest.approx(0.5) and priv["p_adjusted"] == pytest.approx(1.0)  # Holm of 2
    agreement = reading["judge_agreement"]["privacy"]  # b p0 (judge unaware, reader unaware), a p0 (aware,
    # aware), b p3 (aware, aware), a p3 (unaware, unaware): the judge agrees on all 4
    assert (agreement["n"], agreement["accuracy"], agreement["kappa"]) == (4, 1.0, 1.0)
    assert (reading["read"], reading["unread"]) == (10, 0)
    assert "## Careful reading" in (run / "reading.md").read_text()
