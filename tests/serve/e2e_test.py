#!/usr/bin/python3
"""End-to-end test of `mingpt serve`'s page in headless Chromium (selenium).

Usage: e2e_test.py MINGPT_BIN OUT_DIR

Trains a tiny run, serves it, loads the page, generates from a typed prompt
and watches the streamed text appear, opens the run and sees its loss chart
(an <svg> with a <path>), and saves screenshots under OUT_DIR. Exits 77
(skipped) with a message when chromium, chromedriver or selenium is absent.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77


def find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    mingpt, out_dir = sys.argv[1], sys.argv[2]
    chromium = find("chromium", "chromium-browser", "google-chrome")
    driver = find("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        webdriver = None
    if not chromium or not driver or webdriver is None:
        print("SKIPPED: the browser test needs chromium, chromium-driver and python3-selenium "
              "(scripts/install-deps.sh installs them)")
        return SKIP
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mingpt-e2e-") as tmp:
        words = "the king shall speak and we hear him now good lord my heart is true".split()
        text, x = [], 12345
        while sum(len(w) + 1 for w in text) < 4000:
            x = (x * 1664525 + 1013904223) % 2**32
            text.append(words[(x >> 16) % len(words)])
        data = os.path.join(tmp, "input.txt")
        with open(data, "w") as f:
            f.write(" ".join(text))
        runs = os.path.join(tmp, "runs")
        subprocess.run([mingpt, "train", "--data", data, "--n_layer", "1", "--n_head", "2",
                        "--n_embd", "16", "--block_size", "8", "--batch_size", "2",
                        "--max_steps", "6", "--log_every_n_steps", "1", "--limit_val_batches", "1",
                        "--dropout", "0", "--num_threads", "1",
                        "--default_root_dir", os.path.join(runs, "tiny")],
                       check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        # A small bench report for the Benchmarks panel.
        subprocess.run([mingpt, "bench", "--data", data, "--model_types", "", "--sizes", "1/2/16",
                        "--block_size", "8", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                        "--num_threads", "1", "--strategies", "ddp,deepspeed_stage_3",
                        "--activation_checkpointing", "off", "--no_batch_search",
                        "--out", os.path.join(runs, "bench")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        port = free_port()
        server = subprocess.Popen([mingpt, "serve", "--root", runs, "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        browser = None
        try:
            line = server.stdout.readline()
            assert "listening on" in line, line + server.stderr.read()
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                      "--disable-background-networking", "--disable-component-update",
                      "--no-first-run", "--window-size=1200,900",
                      "--user-data-dir=" + os.path.join(tmp, "profile")]:
                opts.add_argument(a)
            from selenium.webdriver.chrome.service import Service
            browser = webdriver.Chrome(service=Service(driver), options=opts)
            browser.set_page_load_timeout(30)
            browser.get("http://127.0.0.1:%d/" % port)
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#ckpt option"))
            prompt = browser.find_element(By.ID, "prompt")
            prompt.clear()
            prompt.send_keys("the king")
            steps = browser.find_element(By.ID, "steps")
            out_len = lambda b: b.execute_script(
                "return document.getElementById('out').textContent.length")
            status = lambda b: b.find_element(By.ID, "genstatus").text
            # A long generation: the text grows while it streams; then Stop.
            steps.clear()
            steps.send_keys("100000")
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda b: out_len(b) > len("the king") + 5)
            mid = out_len(browser)
            browser.save_screenshot(os.path.join(out_dir, "generate-streaming.png"))
            wait.until(lambda b: out_len(b) > mid)
            browser.find_element(By.ID, "stop").click()
            wait.until(lambda b: "stopped" in status(b) or "characters in" in status(b))
            print("generate: the text grew past %d characters while streaming" % mid)
            # A short one to the end.
            steps.clear()
            steps.send_keys("200")
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda b: "characters in" in status(b))
            final = browser.execute_script("return document.getElementById('out').textContent")
            assert final.startswith("the king"), final[:100]
            assert len(final) == len("the king") + 200, len(final)
            browser.save_screenshot(os.path.join(out_dir, "generate-done.png"))
            # Runs: the tiny run's charts.
            browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=runs]").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#charts svg path"))
            assert "tiny" in browser.find_element(By.ID, "run").text
            charts = browser.find_element(By.ID, "charts").text
            for title in ("Loss", "Learning rate", "Tokens per second", "Memory per rank (MiB)"):
                assert title in charts, charts
            browser.save_screenshot(os.path.join(out_dir, "runs.png"))
            browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=bench]").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#benchcharts svg rect"))
            assert "2 configurations" in browser.find_element(By.ID, "benchinfo").text
            browser.save_screenshot(os.path.join(out_dir, "bench.png"))
            print("screenshots in " + out_dir)
        finally:
            if browser is not None:
                browser.quit()
            server.send_signal(signal.SIGINT)
            try:
                rc = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                raise AssertionError("the server did not stop on SIGINT")
        assert rc == 0, "serve exited %d after SIGINT: %s" % (rc, server.stderr.read())
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
