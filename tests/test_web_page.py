"""The page at / in a real headless Chromium (Selenium) against a real
``twistd mathrun`` with two local asy runners and Maxima: each scenario a
person would try, a screenshot of each under tests/artifacts/web/ (not
committed).  Every wait is bounded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import urllib.request

from twisted.trial import unittest

from mathrun.maxima.config import DEFAULT_CORE
from mathrun.web.site import default_static_dir

from .test_client import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts", "web")
WAIT = 60  # seconds for anything a scenario awaits (a render on a loaded host)
CHROMIUM_FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync"
).split()


def why_not() -> str | None:
    """The reason the browser tests cannot run here, if any."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/setup.sh --test installs requirements.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return (
                f"no {path}: Debian's chromium and chromium-driver are installed by `scripts/setup.sh --test` as root"
            )
    if not os.path.isfile(os.path.join(default_static_dir(), "app.js")):
        return "the page is not built (web/static/app.js): run scripts/setup.sh"
    if not os.path.exists(DEFAULT_CORE):
        return f"no Maxima mother core at {DEFAULT_CORE}: run the set-up step"
    return None


def metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples in /metrics whose labels hold ``labels``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
    return sum(float(m.group(2)) for m in found if labels in (m.group(1) or ""))


class PageTests(unittest.TestCase):
    """One server and one browser for the class; a fresh page per test."""

    timeout = 300

    @classmethod
    def setUpClass(cls):
        reason = why_not()
        if reason:
            raise unittest.SkipTest(reason)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.makedirs(ARTIFACTS, exist_ok=True)
        cls.profile = tempfile.mkdtemp(prefix="mathrun-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={cls.profile}", "--window-size=1280,1000"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        cls.server = Server(asy_local=2)
        try:
            cls.browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception:
            cls.server.stop()
            raise
        cls.browser.set_page_load_timeout(WAIT)
        cls.browser.set_script_timeout(WAIT)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.server.stop()
        shutil.rmtree(cls.profile, ignore_errors=True)

    def setUp(self):
        self.browser.get(self.server.url + "/")
        self.wait_until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        self.browser.get_log("browser")  # only this test's messages from here on

    def tearDown(self):
        problems = [e["message"] for e in self.browser.get_log("browser") if e["level"] == "SEVERE"]
        self.assertEqual(problems, [])  # no script error, no refused resource (CSP)

    # -- helpers -----------------------------------------------------------------------
    def wait_until(self, condition, seconds=WAIT, what="the page"):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.browser, seconds, poll_frequency=0.1).until(condition, f"waiting for {what}")

    def el(self, testid, css=""):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"] {css}'.strip())

    def els(self, testid, css=""):
        from selenium.webdriver.common.by import By

        return self.browser.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"] {css}'.strip())

    def type_program(self, text):
        """Select all in the editor and type ``text`` over it, as a person would."""
        from selenium.webdriver.common.keys import Keys

        content = self.el("asy-editor", ".cm-content")
        content.click()
        content.send_keys(Keys.CONTROL, "a")
        content.send_keys(Keys.DELETE)
        content.send_keys(text)
        self.wait_until(lambda d: self.editor_text() == text, 10, "the typed text")

    def editor_text(self):
        return self.browser.execute_script(
            "return [...arguments[0].querySelectorAll('.cm-line')].map(l => l.textContent).join('\\n')",
            self.el("asy-editor", ".cm-content"),
        )

    def choose(self, testid, value):
        from selenium.webdriver.support.ui import Select

        Select(self.el(testid)).select_by_value(value)

    def status(self):
        return self.el("asy-status").text

    def wait_status(self, pattern, seconds=WAIT):
        said = "the status {pattern!r}; it said: {history}"
        try:
            return self.wait_until(lambda d: re.search(pattern, self.status()), seconds, f"status {pattern!r}")
        except Exception:
            history = self.browser.execute_script("return window.mathrun.asy.history")
            self.fail(said.format(pattern=pattern, history=history))

    def run_and_wait(self):
        """Run; wait for the run to end (Done or Error); its status text."""
        self.el("asy-run").click()
        self.wait_status(r"^(Done|Error|Refused)")
        return self.status()

    def shot(self, name):
        self.browser.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))

    def blob_head(self, url, n=8) -> str:
        """The first bytes of a blob: URL the page made, as text."""
        return self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.arrayBuffer())"
            ".then(b => done(String.fromCharCode(...new Uint8Array(b).slice(0, arguments[1]))), e => done('!' + e));",
            url,
            n,
        )

    # -- the scenarios -------------------------------------------------------------
    def test_svg_appears_in_the_preview(self):
        self.type_program('size(3cm);\ndraw(unitcircle, red);\nlabel("$A$", (1,0), E);')
        self.assertEqual(self.run_and_wait()[:4], "Done")
        svg = self.el("asy-preview", "svg")
        self.assertTrue(svg.find_elements("css selector", "path"))
        self.assertTrue(svg.is_displayed())
        link = self.el("asy-download")
        self.assertEqual(link.get_attribute("download"), "main.svg")
        self.assertEqual(self.blob_head(link.get_attribute("href"), 5), "<?xml")
        self.shot("svg")

    def test_syntax_error_marks_its_line(self):
        from selenium.webdriver.common.keys import Keys

        self.type_program('size(2cm);\nlabel("x";\ndraw(unitcircle);')
        self.el("asy-editor", ".cm-content").send_keys(Keys.CONTROL, Keys.ENTER)  # runs, as the button does
        self.wait_status(r"^Error")
        self.assertIn("Execution failed with code 1", self.status())
        marked = self.wait_until(lambda d: self.els("asy-editor", ".cm-asy-error-line"), 10, "the marked line")
        self.assertEqual([m.text for m in marked], ['label("x";'])
        self.assertEqual(self.el("asy-editor", ".cm-asy-error-mark").text, ";")  # column 10
        self.assertEqual(self.el("asy-error").text, "main.asy: 2.10: syntax error")
        self.assertIn("syntax error", self.el("asy-output").text)
        self.assertEqual(self.els("asy-preview", "*"), [])
        self.shot("syntax-error")

    def test_pdf_and_png_render(self):
        self.type_program("size(2cm);\nfill(unitsquare, blue);")
        self.choose("asy-format", "pdf")
        self.assertEqual(self.run_and_wait()[:4], "Done")
        embed = self.el("asy-preview", 'embed[type="application/pdf"]')
        self.assertEqual(self.blob_head(embed.get_attribute("src"), 5), "%PDF-")
        self.assertEqual(self.el("asy-download").get_attribute("download"), "main.pdf")
        self.shot("pdf")
        self.choose("asy-format", "png")
        self.assertEqual(self.run_and_wait()[:4], "Done")
        img = self.el("asy-preview", "img")
        self.wait_until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0, 10, "the PNG")
        self.assertEqual(self.blob_head(img.get_attribute("src"), 4), "\x89PNG")
        self.shot("png")

    def test_live_mode_rerenders_and_uploads_only_the_changed_file(self):
        from selenium.webdriver.common.keys import Keys

        self.browser.find_element("id", "asy-new-name").send_keys("radius.asy", Keys.ENTER)
        self.type_program("real r = 1;")
        self.browser.find_element("css selector", '[data-file="main.asy"]').click()
        self.type_program("import radius;\nsize(3cm);\ndraw(scale(r)*unitcircle);")
        self.assertEqual(self.run_and_wait()[:4], "Done")
        self.assertEqual(self.el("asy-uploads").text, "uploaded: main.asy, radius.asy")
        renders = int(self.el("asy-preview").get_attribute("data-renders"))
        self.el("asy-live").click()
        content = self.el("asy-editor", ".cm-content")
        content.send_keys(Keys.CONTROL, Keys.END)
        content.send_keys("\ndot((0,0));")  # no Run: live mode renders once typing stops
        self.wait_until(
            lambda d: int(self.el("asy-preview").get_attribute("data-renders")) > renders, what="the live re-render"
        )
        self.wait_status(r"^Done")
        self.assertEqual(self.el("asy-uploads").text, "uploaded: main.asy; restored: radius.asy")
        self.assertTrue(self.el("asy-preview", "svg").is_displayed())
        self.shot("live")

    def test_queue_position_while_both_runners_are_busy(self):
        """Two busy tasks fill the two runners: a slow one (the server's slow
        limit, 1 of 2 runners) and a fast one; the page's slow task waits
        for the slow one, and says where it is in the queue."""
        busy = []
        started = metric(self.server.url, "mathrun_asy_tasks_started_total")
        try:
            for n, timeout in enumerate(("slow", "fast")):
                path = os.path.join(self.server.dir, f"busy{n}.asy")
                with open(path, "w") as f:
                    f.write(f"int n = {n}; for (int i = 0; i < 30000000; ++i) {{ n += i % 7; }} write(n);\n")
                busy.append(self.busy_client(path, timeout))
            self.wait_until(
                lambda d: metric(self.server.url, "mathrun_asy_tasks_started_total") >= started + 2,
                30,
                "2 busy runners",
            )
            self.type_program("size(2cm);\ndraw(unitcircle);\n// queued")  # not rendered before (the cache)
            self.choose("asy-timeout", "30000")
            self.el("asy-run").click()
            self.wait_status(r"^Queued: position 1 in the queue", 20)
            self.assertRegex(self.status(), r"expected wait \d+\.\d s$")
            self.shot("queued")
            self.wait_status(r"^Done")
        finally:
            for proc in busy:
                proc.terminate()
                proc.wait(30)

    def busy_client(self, path, timeout):
        from .test_twistd import TWISTD

        mathrun = os.path.join(os.path.dirname(TWISTD), "mathrun")
        return subprocess.Popen(
            [mathrun, "asy", "--url", self.server.url, "--timeout", timeout, "-q", "-o", path + ".svg", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def test_interactive_input_echoes(self):
        from selenium.webdriver.common.keys import Keys

        self.el("asy-interactive").click()
        self.assertEqual(self.el("asy-run").text, "Start session")
        self.el("asy-run").click()
        self.wait_status(r"^Interactive session")
        field = self.el("asy-input")
        self.wait_until(lambda d: field.is_displayed(), 10, "the input line")
        field.send_keys("write(6*7);", Keys.ENTER)
        self.wait_until(lambda d: "42" in self.el("asy-output").text, what="asy's answer")
        self.assertIn("> write(6*7);", self.el("asy-output").text)
        self.shot("interactive")
        self.el("asy-interactive").click()  # leaving the mode ends the session
        self.assertFalse(field.is_displayed())

    def test_maxima_output_and_plot(self):
        from selenium.webdriver.common.keys import Keys

        box = self.el("maxima-input")
        box.clear()
        box.send_keys(
            'plot2d(sin(x), [x,0,2*%pi], [svg_file, sconcat(IMAGE_DIR, "sine.svg")], [gnuplot_term, svg])$',
            Keys.ENTER,
            "diff(x^3, x);",
        )
        self.el("maxima-run").click()
        self.wait_until(lambda d: self.el("maxima-status").text.startswith("Done"), what="Maxima's answer")
        self.assertEqual(self.el("maxima-status").text, "Done, 1 plot(s)")
        self.assertRegex(self.el("maxima-output", "pre").text, r"(?m)^ +2\n\(%o\d+\) 3 x$")  # beside its label
        img = self.el("maxima-output", "img")
        self.wait_until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0, 10, "the plot")
        self.assertEqual(img.get_attribute("alt"), "Maxima plot sine.svg")
        self.shot("maxima")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE, "1/0;")
        box.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter runs here too
        self.wait_until(
            lambda d: re.search("undefined|Division by 0", self.el("maxima-output").text), what="Maxima's error"
        )
        self.assertEqual(self.els("maxima-output", "img"), [])  # the plot of the last answer is gone

    def test_cache_answers_a_repeat_without_asy(self):
        """The second identical run starts no asy (the sandbox's job count
        and the queue's started count stay); a changed file starts one."""
        self.type_program("size(2cm);\ndraw(unitsquare);\n// cache test")
        self.assertEqual(self.run_and_wait()[:4], "Done")
        jobs = metric(self.server.url, "mathrun_jobs_total", 'frontend="asy"')
        started = metric(self.server.url, "mathrun_asy_tasks_started_total")
        hits = metric(self.server.url, "mathrun_asy_render_cache_total", 'event="hit"')
        self.assertRegex(self.run_and_wait(), r"^Done in \d+ ms \(cached\)$")
        self.assertEqual(metric(self.server.url, "mathrun_jobs_total", 'frontend="asy"'), jobs)
        self.assertEqual(metric(self.server.url, "mathrun_asy_tasks_started_total"), started)
        self.assertEqual(metric(self.server.url, "mathrun_asy_render_cache_total", 'event="hit"'), hits + 1)
        self.assertEqual(self.el("asy-uploads").text, "uploaded: none; restored: main.asy")
        self.assertTrue(self.el("asy-preview", "svg").is_displayed())
        self.shot("cached")
        self.type_program("size(2cm);\ndraw(unitsquare);\n// cache test, changed")
        self.assertRegex(self.run_and_wait(), r"^Done in \d+ ms$")
        self.assertEqual(metric(self.server.url, "mathrun_asy_tasks_started_total"), started + 1)
        self.assertEqual(metric(self.server.url, "mathrun_jobs_total", 'frontend="asy"'), jobs + 1)

    def test_phone_width(self):
        self.browser.set_window_size(390, 844)
        try:
            self.type_program("size(2cm);\ndraw(unitcircle);")
            self.assertEqual(self.run_and_wait()[:4], "Done")
            width = self.browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            self.assertLessEqual(width[0], width[1])  # nothing wider than the screen
            self.assertTrue(self.el("asy-run").is_displayed())
            self.shot("phone")
        finally:
            self.browser.set_window_size(1280, 1000)
