"""The UI pages the README points to, as screenshots of a demo's data root:

    make demo && .venv/bin/python docs/screenshots/take.py [FI_HOME] [--out docs/screenshots]

Starts `fi ui` on a free port over FI_HOME (default `fi_home`), opens each page in Chromium and
saves one PNG per page, then stops the UI. Needs Chromium (Debian: apt-get install chromium)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Error, sync_playwright

# (file name, page path, a text the page shows once loaded)
PAGES = [
    ("asset_graph.png", "/assets/judged_pairs?view=lineage&lineageScope=upstream", "matched_pairs"),
    ("judged_pairs_preview.png", "/assets/judged_pairs", "preview"),
    (
        "packed_corpus_checks.png",
        "/assets/packed_corpus?view=checks",
        "no_eval_items_in_training_data",
    ),
    ("eval_report.png", "/assets/eval_report", "eval_report"),
    ("runs.png", "/runs", "fi/assets"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("home", nargs="?", default="fi_home")
    arguments.add_argument("--out", default=str(Path(__file__).parent))
    args = arguments.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is not installed (Debian: apt-get install chromium)")
    port = free_port()
    environment = {**os.environ, "FI_HOME": str(Path(args.home).resolve())}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("fi")), "ui", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the UI did not start")
                time.sleep(1)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 3000})
            page.set_default_timeout(60_000)
            for name, path, shows in PAGES:
                page.goto(base + path)
                skip = page.get_by_role("button", name="Skip")
                try:
                    skip.click(timeout=3_000)
                except Error:
                    pass
                try:
                    page.get_by_text(shows).first.wait_for()
                except Error:
                    print(f"{name}: {shows!r} did not show; saved as the page stood")
                time.sleep(2)  # charts and tables finish drawing
                page.screenshot(path=Path(args.out) / name)
                print(f"saved {name}")
            browser.close()
    finally:
        # fi ui stops dg dev, the webserver and the daemon with it.
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
