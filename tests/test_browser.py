"""The UI in a real browser: `fi ui` (dg dev) on loopback, driven by Debian's Chromium through
Playwright: the asset graph, a partitioned asset, a materialization of one partition launched from
the UI and followed to success, with screenshots. Skipped, saying why, where Chromium or
Playwright is missing (`.ci/run` installs Chromium, so CI always runs it). Set FI_SCREENSHOTS to a
folder to keep the screenshots."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_resources.instance import open_instance

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)
runner = CliRunner()
SHARD = "chat"
SERVER_START_S = 120
RUN_TIMEOUT_S = 180


@dataclass
class Served:
    base: str
    server: subprocess.Popen
    log: Path


@pytest.fixture
def ui(fi_home, tmp_path, free_port):
    """`fi ui` serving a data root with one ingested query shard; whatever is left of its process
    group is killed afterwards, by PID."""
    queries = tmp_path / f"{SHARD}.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"query": q}) + "\n"
            for q in (
                "How do I make a sourdough starter from scratch?",
                "What are the main causes of the French Revolution?",
                "Can you explain how vaccines train the immune system?",
            )
        )
    )
    assert runner.invoke(app, ["ingest", "queries", str(queries)]).exit_code == 0
    port = free_port
    log = (tmp_path / "ui.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("fi")), "ui", "--port", str(port)],
        env={**os.environ, "FI_HOME": str(fi_home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: dg dev, the webserver and the daemon
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"the UI did not start: {(tmp_path / 'ui.log').read_text()[-2000:]}"
                    )
                time.sleep(1)
        yield Served(base, server, tmp_path / "ui.log")
    finally:
        if server.poll() is None:
            leftovers = psutil.Process(server.pid).children(recursive=True)
            for process in [psutil.Process(server.pid), *leftovers]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        server.wait(timeout=30)
        log.close()


def _dismiss_welcome(page) -> None:
    """The UI greets a new instance with a community dialog once; skip it when it shows."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=10_000)
    except playwright.Error:
        return
    skip.click()


def test_the_ui_shows_the_graph_and_materializes_a_partition(ui, fi_home, tmp_path):
    served, ui = ui, ui.base
    shots = Path(os.environ.get("FI_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)

        page.goto(f"{ui}/assets/judged_pairs?view=lineage&lineageScope=upstream")
        _dismiss_welcome(page)
        page.get_by_text("instantiated_pairs").first.wait_for()
        page.screenshot(path=shots / "asset_graph.png")

        page.goto(f"{ui}/assets/raw_queries")
        page.get_by_role("button", name="Materialize…").click()
        page.get_by_role("button", name="All", exact=True).click()
        page.get_by_text("1 partition").first.wait_for()
        page.screenshot(path=shots / "materialize_partition.png")
        page.get_by_role("button", name=re.compile(r"^Launch")).click()

        instance = open_instance(fi_home)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": SHARD}))
            if runs and runs[0].is_finished:
                break
            assert time.monotonic() < deadline, "the run launched from the UI did not finish"
            time.sleep(2)
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        page.goto(f"{ui}/runs/{runs[0].run_id}")
        page.get_by_text("Success").first.wait_for()
        page.screenshot(path=shots / "run_succeeded.png")

        page.goto(f"{ui}/assets/raw_queries?view=partitions")
        page.get_by_text(SHARD).first.wait_for()
        page.screenshot(path=shots / "asset_partitions.png")
        browser.close()
    assert instance.get_latest_materialization_event(dg.AssetKey("raw_queries")) is not None
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "asset_graph.png",
        "asset_partitions.png",
        "materialize_partition.png",
        "run_succeeded.png",
    ]
    _stops_on_sigterm(served)


def _stops_on_sigterm(served: Served) -> None:
    """`fi ui` stopped as a service manager stops it, by SIGTERM to its own PID, takes dg dev, the
    webserver and the daemon with it; and dg did not warn about the virtual environment."""
    started = psutil.Process(served.server.pid).children(recursive=True)
    assert any("dagster" in " ".join(p.cmdline()) for p in started), "no webserver was found"
    served.server.send_signal(signal.SIGTERM)
    served.server.wait(timeout=60)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], f"processes of fi ui outlived it: {[p.cmdline() for p in alive]}"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{served.base}/server_info", timeout=5)
    assert "does not match the virtual environment" not in served.log.read_text()
