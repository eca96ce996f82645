"""The Prefect UI's Run form of a deployment, as a user meets it, in headless Chromium (Playwright
drives the Debian `chromium`; no browser is downloaded).

A user opens the deployment's Run page, is sent to the login page, types the server's auth string,
sees the flow's parameters with the descriptions from its docstring, types a run name and submits.
Each step is one (what, passed) line of the infra check's report.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

RUN_NAME = "ui-check-run"
TIMEOUT_MS = 60_000
# What the form must show of the flow's parameters: each field's name and a phrase of its description.
FIELDS = {"run_name (Optional)": "the run's one name",
          "allow_keys (Optional)": "set by the deployment in prefect.yaml only",
          "config_path (Optional)": "a YAML run config"}


def submitted_runs(url: str, auth_string: str, deployment_id: str) -> list[dict]:
    """The deployment's flow runs, read through the authenticated API."""
    token = base64.b64encode(auth_string.encode()).decode()
    body = json.dumps({"deployments": {"id": {"any_": [deployment_id]}}}).encode()
    request = urllib.request.Request(f"{url}/api/flow_runs/filter", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def check_run_form(url: str, auth_string: str, deployment_id: str, screenshot: Path) -> list[tuple[str, bool]]:
    results: list[tuple[str, bool]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(f"{url}/deployments/deployment/{deployment_id}/run")
            login = page.get_by_placeholder("admin:pass")
            login.wait_for()
            results.append(("Prefect UI: the Run page asks for the auth string first (login page)",
                            "/login" in page.url))
            login.fill(auth_string)
            page.get_by_role("button", name="Login").click()
            page.wait_for_url(f"**/deployments/deployment/{deployment_id}/run")
            page.get_by_text("run_name (Optional)").wait_for()
            text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
            missing = [field for field, phrase in FIELDS.items() if field not in text or phrase not in text]
            results.append(("Prefect UI: the Run form shows the flow's parameters with their descriptions"
                            + (f" (missing: {missing})" if missing else ""), not missing))
            page.locator("input").first.fill(RUN_NAME)  # Prefect's own "Run Name", the form's first field
            page.get_by_role("button", name="Submit").click()
            page.wait_for_url(lambda address: not address.endswith("/run"))  # the UI leaves the form once created
        except PlaywrightError as error:
            page.screenshot(path=str(screenshot), full_page=True)
            results.append((f"Prefect UI: {str(error).splitlines()[0]} (screenshot: {screenshot})", False))
            return results
        finally:
            browser.close()
    runs = [run for run in submitted_runs(url, auth_string, deployment_id) if run["name"] == RUN_NAME]
    results.append((f"Prefect UI: a run submitted from the form under the typed name ({len(runs)} named "
                    f"{RUN_NAME}, state {runs[0]['state_type'] if runs else 'none'})",
                    len(runs) == 1 and runs[0]["state_type"] == "SCHEDULED"))
    return results
