"""`spark-vl doctor`: what a run would use, whether each part answers, and what to set when not.

Each check is a plain function returning a `Check`; the CLI gathers the Prefect and MLflow
settings (the only places that know those libraries) and prints the table.
"""

from __future__ import annotations

import base64
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def http_get(url: str, basic_auth: str | None = None, timeout_s: float = 5.0) -> int | str:
    """The HTTP status of GET `url` (with basic auth `user:password` when given), or why there
    was no answer."""
    request = urllib.request.Request(url)
    if basic_auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(basic_auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def prefect_check(api_url: str | None, auth_string: str | None) -> Check:
    """The Prefect API a flow run reports to: none configured (a temporary local server), or a
    server that must answer and accept the credentials."""
    if not api_url:
        return Check("Prefect API", True, "none set: each run starts a temporary local server",
                     "for the UI, schedules and workers set PREFECT_API_URL to a `prefect server`")
    status = http_get(f"{api_url.rstrip('/')}/admin/version", auth_string)  # /health answers without auth
    if status == 200:
        return Check("Prefect API", True, f"{api_url} answers" + (" (authenticated)" if auth_string else ""))
    if status == 401:
        return Check("Prefect API", False, f"{api_url} refuses these credentials",
                     "set PREFECT_API_AUTH_STRING to the server's user:password")
    return Check("Prefect API", False, f"{api_url} does not answer ({status})",
                 "start the server or correct PREFECT_API_URL")


def mlflow_check(uri: str, username: str | None, password: str | None) -> Check:
    """The MLflow tracking store: a local SQLite file, or a server that must answer and accept
    the credentials (a search of one experiment needs them where auth is on)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        return Check("MLflow store", True, f"SQLite {uri.removeprefix('sqlite:///')} (one machine)",
                     "" if folder.exists() else f"{folder} is created on the first run")
    if not uri.startswith(("http://", "https://")):
        return Check("MLflow store", True, uri)
    auth = f"{username}:{password}" if username and password else None
    status = http_get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", auth)
    if status == 200:
        return Check("MLflow store", True, f"{uri} answers" + (" (authenticated)" if auth else ""))
    if status in (401, 403):
        return Check("MLflow store", False, f"{uri} refuses these credentials",
                     "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return Check("MLflow store", False, f"{uri} does not answer ({status})",
                 "start `mlflow server` or correct MLFLOW_TRACKING_URI")


def vllm_check(engine: str, python: str, url: str | None) -> Check:
    """The vLLM environment a `rollout.engine: vllm` run starts its server from (or the server it uses)."""
    if url:
        status = http_get(f"{url.rstrip('/')}/health")
        return Check("vLLM server", status == 200, f"{url} " + ("answers" if status == 200 else f"does not answer ({status})"),
                     "" if status == 200 else "start it or correct rollout.vllm.url")
    needed = engine == "vllm"
    if not Path(python).exists():
        return Check("vLLM environment", not needed, f"{python} does not exist" + ("" if needed else " (not used: rollout.engine is hf)"),
                     "run `make vllm-env`")
    try:
        found = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True,
                               timeout=300)
    except subprocess.TimeoutExpired:
        return Check("vLLM environment", not needed, f"{python} did not import vllm within 300 s", "run `make vllm-env`")
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("vLLM environment", not needed, f"{python} cannot import vllm: {last}", "run `make vllm-env`")
    return Check("vLLM environment", True, f"vllm {found.stdout.strip()} in {python}")


def device_check() -> Check:
    """Where training and transformers rollouts run: CUDA GPUs, else the CPU; DeepSpeed's accelerator."""
    import torch

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        where = f"{torch.cuda.device_count()} CUDA GPU(s): {names}; bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    else:
        where = "CPU only (fp32; gloo for DeepSpeed)"
    return Check("devices", True, f"{where}; DeepSpeed {deepspeed.__version__}, accelerator "
                                  f"{get_accelerator().device_name()}")
