"""The browser view end to end: `soundops serve-model` serving a registered INT8 model,
headless Chromium whose fake microphone plays a generated wav, and the page showing the
detection, its status and the model version."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline_lib.base.params import parse_params
from tests import chirp_model
from tests.conftest import shipped_params

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
CHIRP_AT = 4.0
# pixels of the smoothed-score line's blue (#2b6cb0) on the timeline canvas
BLUE_PIXELS = """() => {
  const d = document.getElementById('timeline').getContext('2d').getImageData(0, 0, 928, 220).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] - d[i] > 90) n++;
  return n;
}"""
SECONDS = 9.0

pytestmark = pytest.mark.slow  # a headless Chromium against a live server


def chromium() -> str:
    """Debian's Chromium (``make test`` installs it); the test cannot run without one."""
    found = os.environ.get("SOUNDOPS_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "the browser test needs Debian's chromium: run 'sudo apt-get install chromium' "
            "(make test installs it when run as root) or set SOUNDOPS_CHROMIUM."
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chirp_export: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("live")
    raw = shipped_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    chirp_model.publish(root, parse_params(raw), chirp_export)
    port = free_port()
    exe = Path(sys.executable).with_name("soundops")
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(exe), "serve-model", "--root", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"soundops serve-model did not start:\n{(root / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_page_shows_the_detection_from_a_fake_microphone(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    audio = chirp_model.scene(SECONDS, [CHIRP_AT], seed=11)
    mic = tmp_path / "mic.wav"
    sf.write(str(mic), audio, chirp_model.RATE, subtype="PCM_16")
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}%noloop"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(server)
            expect(page.locator("#model")).to_contain_text("soundops-detector v1 (edge, onnx)")
            before = page.evaluate(BLUE_PIXELS)  # grid, labels and thresholds only
            assert before < 50
            page.click("#start")
            expect(page.locator("#conn")).to_have_text("streaming", timeout=15_000)
            expect(page.locator('#status[data-status="detected"]')).to_be_visible(timeout=30_000)
            expect(page.locator("#events li")).to_have_count(1)
            # the event is the chirp, not the noise before it (stream time, from the start)
            at = float(page.locator("#events li").first.get_attribute("data-time") or "nan")
            # (the page starts streaming a moment after the microphone opens, so its clock
            # runs up to a second behind the file's; the chirp ends at 4.6 s in the file)
            assert CHIRP_AT - 1.5 < at <= CHIRP_AT + 2.5
            # the rest of the file is noise: the status clears and no other event appears
            page.wait_for_function(
                f"Number(document.getElementById('audio-s').textContent) >= {SECONDS - 0.5}",
                timeout=30_000,
            )
            expect(page.locator("#status")).to_have_attribute("data-status", "clear")
            expect(page.locator("#events li")).to_have_count(1)
            assert page.locator("#error").text_content() == ""
            assert page.evaluate(BLUE_PIXELS) > before + 300  # the smoothed-score line
            page.screenshot(path=str(tmp_path / "live.png"))
        finally:
            browser.close()
    assert np.isfinite(at)
