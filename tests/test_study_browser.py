"""The user-study sheet in a real browser: headless Chromium through selenium and the system chromedriver (no
browser download). A participant answers every question with the keyboard and the mouse and downloads the CSV; the
tally counts exactly those answers. The sheet works offline, shows every image, and gives no method away."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA_ROOT
from PIL import Image, PngImagePlugin

from experiments import study_sheet

pytestmark = pytest.mark.browser

METHODS = ("para", "lora")
# What works headless in a container, without network or a desktop session (brief of issue 20).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1024"]  # fmt: skip
PLAN = ("L", "R", "none")  # question i gets PLAN[i % 3]; even questions by mouse, odd ones by keyboard


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    """A sheet from four tiny runs (PaRa and LoRA on dog and cat, two prompts each), built twice: the second time
    after the samples got the metadata other tools write (method and settings in PNG text chunks and EXIF)."""
    out = tmp_path_factory.mktemp("study")
    argv = ["model=tiny", "logger=none", f"data.root={DATA_ROOT}", "eval.enabled=false", "sample.num_prompts=2",
            "sample.images_per_prompt=1", "sample.steps=2", f"experiment.out={out}", "experiment.subjects=[dog,cat]",
            "experiment.steps=[2,2]", f"run_dir={out}/runs/${{method.name}}/${{subject.name}}"]  # fmt: skip
    study_sheet.run(argv)
    for method in METHODS:
        for png in (out / "runs" / method).rglob("samples/*.png"):
            _tag(png, method)
    key = study_sheet.run(argv)
    return out, key, argv


def _tag(png: Path, method: str) -> None:
    """Write the method into the file the way A1111/ComfyUI-style tools do: a text chunk and EXIF."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"adapter: {method}, rank 16, steps 2")
    exif = Image.Exif()
    exif[0x010E] = f"{method} sample"  # ImageDescription
    with Image.open(png) as image:
        image.load()
        image.save(png, pnginfo=info, exif=exif)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}"]:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.execute_cdp_cmd("Network.enable", {})  # and no network at all: the sheet must not need any
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    yield driver, downloads
    driver.quit()


def _open(driver, page: Path) -> list[dict]:
    """Load the sheet; once every image has loaded, return each <img>'s src and natural size."""
    driver.get(page.as_uri())
    script = (
        "return [...document.images].map(i => ({src: i.getAttribute('src'), done: i.complete, w: i.naturalWidth}))"
    )
    deadline = time.monotonic() + 30
    while True:
        images = driver.execute_script(script)
        if all(image["done"] for image in images):
            return images
        assert time.monotonic() < deadline, "images still loading after 30 s"
        time.sleep(0.1)


def _answer_by_keyboard(driver, question: str, choice: str) -> None:
    """Tab to the question's radio group, Space picks the first (left), arrow keys move right to the others."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(100):
        if driver.execute_script("return document.activeElement.name") == question:
            break
        ActionChains(driver).send_keys(Keys.TAB).perform()
    else:
        raise AssertionError(f"Tab never reached question {question}")
    ActionChains(driver).send_keys(Keys.SPACE).perform()
    for _ in range(PLAN.index(choice)):
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()


def _answer_by_mouse(driver, question: str, choice: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    label = driver.find_element(By.CSS_SELECTOR, f"input[name='{question}'][value='{choice}']").find_element(
        By.XPATH, ".."
    )
    ActionChains(driver).scroll_to_element(label).move_to_element(label).click().perform()


def _download(driver, downloads: Path) -> Path:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    button = driver.find_element(By.TAG_NAME, "button")
    ActionChains(driver).scroll_to_element(button).move_to_element(button).click().perform()
    target = downloads / "answers.csv"
    deadline = time.monotonic() + 30
    while not target.is_file() or list(downloads.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"no answers.csv in {downloads}: {list(downloads.iterdir())}"
        time.sleep(0.1)
    return target


def test_participant_answers_every_question_and_the_tally_counts_exactly_those_answers(sheet, browser):
    from selenium.webdriver.common.by import By

    out, key, argv = sheet
    driver, downloads = browser
    _open(driver, out / "sheet" / "index.html")
    driver.save_screenshot(str(out / "sheet_screenshot.png"))  # the first screen, next to the sheet
    questions = [s.get_attribute("data-q") for s in driver.find_elements(By.CSS_SELECTOR, "section[data-q]")]
    assert sorted(questions) == sorted(key["question"]) and len(questions) == 4  # 2 subjects x 2 prompts
    plan = {q: PLAN[i % 3] for i, q in enumerate(questions)}
    for i, question in enumerate(questions):
        (_answer_by_keyboard if i % 2 else _answer_by_mouse)(driver, question, plan[question])
    picked = {
        q: driver.execute_script(f"return document.querySelector('input[name={q}]:checked').value") for q in plan
    }
    assert picked == plan

    answers = pd.read_csv(_download(driver, downloads), dtype=str, keep_default_na=False)
    assert list(answers.columns) == ["question", "choice"]
    assert dict(zip(answers["question"], answers["choice"], strict=True)) == plan

    study_sheet.run([*argv, f"experiment.responses={downloads / 'answers.csv'}"])
    tallied = pd.read_csv(out / "preferences.csv")
    truth = {row["question"]: row for row in json.loads((out / "answer_key.json").read_text())}
    preferred = {
        q: {"L": truth[q]["left"], "R": truth[q]["right"]}.get(choice, "no preference") for q, choice in plan.items()
    }
    expected = {("all", m): n for m, n in Counter(preferred.values()).items()}
    expected |= {(s, m): n for (s, m), n in Counter((truth[q]["subject"], m) for q, m in preferred.items()).items()}
    assert {(r.subject, r.preferred): r.answers for r in tallied.itertuples()} == expected


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href", "action", "srcset") and value]


def test_sheet_works_offline_shows_every_image_and_names_no_method(sheet, browser):
    out, key, _ = sheet
    driver, _ = browser
    folder = out / "sheet"
    page = (folder / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.links and all(":" not in link and not link.startswith("//") for link in parser.links)
    assert not re.search(r"\b(https?|wss?|ftp):|(?<![a-z])url\(", page, re.IGNORECASE)  # nor in scripts or styles

    images = _open(driver, folder / "index.html")  # with the browser's network switched off
    assert len(images) == page.count("<img ") and all(image["w"] > 0 for image in images), images
    resolved = driver.execute_script("return [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)")
    assert len(resolved) == len(parser.links) and all(url.startswith(folder.as_uri()) for url in resolved), resolved

    dom = driver.execute_script("return document.documentElement.outerHTML + document.body.innerText").lower()
    names = [p.name.lower() for p in folder.rglob("*")]
    sources = [Path(s) for s in [*key["left_source"], *key["right_source"]]]
    assert any("para" in str(Image.open(s).info).lower() for s in sources)  # the samples do carry the method
    for method in METHODS:
        assert method not in dom, method
        assert not [n for n in names if method in n], method
        for png in (folder / "images").glob("*.png"):
            with Image.open(png) as image:
                assert method not in str(image.info).lower(), png
                assert not image.getexif(), png
