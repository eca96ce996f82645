"""The MLflow UI's page of a registered model's champion, as a user meets it, in headless Chromium:
the version's page shows the signature of the MLflow Model (its Schema: inputs and outputs, unfolded
as a user would).

    .venv/bin/python infra/check/registry_ui.py [--tracking-uri sqlite:///runs/mlflow.db] [--model spark-vl-tiny]

Starts `mlflow server` on the store (the UI a user opens), opens the champion's version page,
checks that the schema's columns are shown, writes a screenshot to runs/registry-ui.png and
stops the server. Exit 0 when the page shows them; 1 naming what is missing. Needs Debian's
`chromium` and the `infra` extra (Playwright).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from spark_vl.runio import free_port

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("image", "question", "answer_a", "answer_b", "reply", "verdict", "p_positive")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'runs' / 'mlflow.db'}")
    parser.add_argument("--model", default="spark-vl-tiny")
    args = parser.parse_args()
    version = MlflowClient(args.tracking_uri).get_model_version_by_alias(args.model, "champion").version
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", args.tracking_uri, "--workers", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=ROOT / "runs")
    screenshot = ROOT / "runs" / "registry-ui.png"
    try:
        for line in server.stdout:  # the server is used once it says it listens
            if "Uvicorn running on" in line:  # one worker: it listens once the app has started
                break
        else:
            print(f"registry-ui: mlflow server exited (code {server.wait()}) before listening", file=sys.stderr)
            return 1
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)
            try:
                page.goto(f"http://127.0.0.1:{port}/#/models/{args.model}/versions/{version}")
                for group in ("Inputs (", "Outputs ("):  # the schema's two groups, folded: unfold them
                    page.get_by_text(group).first.click()
                page.get_by_text("p_positive").first.wait_for()
                text = page.inner_text("body")
            except PlaywrightError as error:
                text = ""
                print(f"registry-ui: {str(error).splitlines()[0]}", file=sys.stderr)
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    missing = [column for column in COLUMNS if column not in text]
    print(f"{'ok' if not missing else 'FAILED'}: {args.model} version {version} (champion) page shows the signature"
          + (f"; missing: {missing}" if missing else f" ({', '.join(COLUMNS)})") + f"; screenshot: {screenshot}")
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
