"""Build the team deployment's servers image and serve from it, here, without a Docker daemon.

    make infra-check          (= .venv/bin/python infra/check/run.py)

1. A stand-in for `python:3.11-slim-bookworm` (no registry can be pulled from here): Debian
   bookworm from `debootstrap`, imported as an image, with Python 3.11 in a venv
   (`standin-python.Containerfile`); made once, then reused.
2. `infra/docker/Dockerfile --target servers` built on it with `buildah bud --isolation chroot`,
   the machine's pip configuration and local package folders mounted read-only.
3. A real PostgreSQL 15 in a temporary folder with `infra/postgres/init.sql`.
4. `prefect-server.sh` and `mlflow-server.sh` run inside containers of that image (`buildah run
   --isolation chroot`, the host's network, the image's non-root user), with compose's
   environment and infra/.env.example's settings (placeholders replaced by random secrets).
5. Asserted: both APIs refuse a request without credentials and answer it with them; both UIs
   answer; a flow and deployment (with the co-evolve flow's parameter form) are registered and a
   flow run created through the authenticated Prefect API; an MLflow run logged and a model version
   registered through the authenticated MLflow server; then every process stopped and nothing of
   theirs left running.
6. The Prefect UI as a user meets it (ui_check.py, headless Chromium driven by Playwright): the
   login page, the deployment's Run form with the flow's parameters and their descriptions, and a
   run submitted from the form under a typed name.

Each step is logged to runs/infra-check/check.log; the outcome goes to
bench/results/infra_check.md, the form's screenshot to runs/infra-check/prefect-run-form.png. Exit 0 when every assertion holds; otherwise 1 with the step that
failed and what to look at.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import yaml
from ui_check import check_run_form

from flows.co_evolve import co_evolve

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
WORK = ROOT / "runs" / "infra-check"
LOG = WORK / "check.log"
RESULT = ROOT / "bench" / "results" / "infra_check.md"
ROOTFS_IMAGE = "localhost/spark-vl-debian-rootfs:bookworm"
PYTHON_IMAGE = "localhost/spark-vl-standin-python:3.11"
SERVERS_IMAGE = "localhost/spark-vl-servers:check"
STARTUP_S = 240


class CheckFailed(RuntimeError):
    """A step of the check did not hold; the message says which and where to look."""


def log(message: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    with LOG.open("a") as handle:
        handle.write(line + "\n")


def run(command: list[str], what: str, **kwargs) -> str:
    """Run a command to its end, its output appended to the log; CheckFailed naming `what`."""
    log(f"$ {' '.join(command)}")
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    with LOG.open("a") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise CheckFailed(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout)[-800:]}"
                          f"\nfull output in {LOG}")
    return result.stdout


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def pip_mounts() -> tuple[list[str], Path]:
    """`-v` options that give a build this machine's pip configuration (as /etc/pip.conf) and the
    local package folders it names; and the generated pip.conf."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], "reading pip's configuration")
    values: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        values[key.split(".", 1)[-1]] = value.strip().strip("'")
    paths = {Path(path) for value in values.values() for path in re.findall(r"(?:file://)?(/[^\s]+)", value)}
    # A local index's pages link to files beside it (/opt/pypi/simple -> /opt/pypi/files): its parent.
    paths = {path.parent if path.name == "simple" else path for path in paths if path.exists()}
    mounts = [arg for path in sorted(paths) for arg in ("-v", f"{path}:{path}:ro")]
    pip_conf = WORK / "pip.conf"
    pip_conf.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()))
    return mounts + ["-v", f"{pip_conf}:/etc/pip.conf:ro"], pip_conf


def build_images() -> float:
    """The stand-in base (once) and the servers image; returns the servers build's seconds."""
    if not image_exists(ROOTFS_IMAGE):
        rootfs = Path(tempfile.mkdtemp(prefix="spark-vl-rootfs-"))
        try:
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                "debootstrap of Debian bookworm (apt-get install debootstrap; it needs deb.debian.org)")
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            run(["podman", "import", "-", ROOTFS_IMAGE], "importing the Debian root file system", stdin=tar.stdout)
            tar.wait()
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    if not image_exists(PYTHON_IMAGE):
        run(["buildah", "bud", "--isolation", "chroot", "-f", str(INFRA / "check" / "standin-python.Containerfile"),
             "-t", PYTHON_IMAGE, str(INFRA / "check")], "building the stand-in Python base")
    mounts, _ = pip_mounts()
    start = time.perf_counter()
    run(["buildah", "bud", "--isolation", "chroot", "--layers=false", *mounts,
         "-f", str(INFRA / "docker" / "Dockerfile"), "--target", "servers", "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}", "-t", SERVERS_IMAGE, str(ROOT)],
        "building the servers image (infra/docker/Dockerfile --target servers)")
    return time.perf_counter() - start


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings() -> dict[str, str]:
    """infra/.env.example with each change-me placeholder replaced by a random secret."""
    dotenv = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#"))
    for key, value in dotenv.items():
        if "change-me" in value:
            dotenv[key] = value.split("change-me")[0] + secrets.token_hex(12)
    dotenv["MLFLOW_WORKER_PASSWORD"] = dotenv["MLFLOW_ADMIN_PASSWORD"]
    return dotenv


def service_environment(name: str, dotenv: dict[str, str], host: dict[str, str]) -> dict[str, str]:
    """Compose's environment of service `name` (`${VAR:-default}` from the env file), with `host`'s
    values for what differs outside compose's network (the database address, ports)."""
    service = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"][name]

    def interpolate(value: str) -> str:
        value = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: dotenv.get(m[1]) or m[2] or "", value)
        return value.replace("$$", "$")

    return {**{key: interpolate(str(value)) for key, value in service["environment"].items()}, **host}


def start_postgres(dotenv: dict[str, str], root: Path) -> tuple[dict[str, str], list[str], Path]:
    """PostgreSQL 15 on 127.0.0.1 with the databases of init.sql; (host settings, pg_ctl, data)."""
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if found is None:
        raise CheckFailed("PostgreSQL server binaries not found: apt-get install postgresql-15")
    bin_dir = Path(found).resolve().parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root.mkdir(parents=True)
    (root / "pw").write_text(dotenv["POSTGRES_PASSWORD"])
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    port = free_port()
    run([*as_postgres, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", dotenv["POSTGRES_USER"],
         f"--pwfile={root / 'pw'}", "-A", "scram-sha-256", "-E", "UTF8"], "initdb")
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(root / "data")]
    run([*pg_ctl, "-l", str(root / "log"), "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c "
         f"unix_socket_directories={root}", "-w", "start"], "starting PostgreSQL")
    run([str(bin_dir / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", "127.0.0.1", "-p", str(port), "-U",
         dotenv["POSTGRES_USER"], "-d", "postgres", "-f", str(INFRA / "postgres" / "init.sql")],
        "applying infra/postgres/init.sql", env={**os.environ, "PGPASSWORD": dotenv["POSTGRES_PASSWORD"]})
    return {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port)}, pg_ctl, root


def start_in_image(name: str, command: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`command` in a new container of the servers image, on the host's network, as the image's user."""
    container = run(["buildah", "from", "--name", f"spark-vl-check-{name}", SERVERS_IMAGE],
                    f"creating the {name} container").strip()
    env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    handle = (WORK / f"{name}.log").open("w")
    log(f"$ buildah run --isolation chroot --network host {container} -- {command}  (log: {WORK / f'{name}.log'})")
    process = subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host", *env_args, container,
                                "--", command], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return process, container


def request(url: str, auth: tuple[str, str] | None = None, body: dict | None = None,
            method: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method or ("POST" if data else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return 0, str(error)


def wait_for(url: str, process: subprocess.Popen, name: str) -> None:
    """Until `url` answers at all (any HTTP status), or CheckFailed when the server exits or takes
    longer than STARTUP_S."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"the {name} server exited (code {process.returncode}) before answering; see "
                              f"{WORK / f'{name}.log'}")
        if request(url)[0]:
            return
        time.sleep(1)  # a server starting up: no event to wait on from outside its container
    raise CheckFailed(f"the {name} server did not answer {url} within {STARTUP_S} s; see {WORK / f'{name}.log'}")


def expect(condition: bool, what: str, results: list[tuple[str, bool]]) -> None:
    results.append((what, condition))
    log(f"{'ok  ' if condition else 'FAIL'} {what}")


def check_prefect(url: str, auth: tuple[str, str], results: list) -> str | None:
    """The API's auth and a deployment of the co-evolve flow registered through it; its id."""
    api = f"{url}/api"
    expect(request(f"{api}/admin/version")[0] == 401, "Prefect API refuses a request without credentials", results)
    status, version = request(f"{api}/admin/version", auth)
    expect(status == 200, f"Prefect API answers with credentials (version {version.strip()})", results)
    status, page = request(f"{url}/")
    expect(status == 200 and "<html" in page.lower(), f"Prefect UI answers at / (HTTP {status})", results)
    status, flow = request(f"{api}/flows/", auth, {"name": "co-evolve"})
    flow_id = json.loads(flow).get("id") if status in (200, 201) else None
    status, deployment = request(f"{api}/deployments/", auth, {
        "name": "infra-check", "flow_id": flow_id, "parameters": {"config_path": "configs/tiny.yaml"},
        "parameter_openapi_schema": co_evolve.parameters.model_dump(mode="json"), "enforce_parameter_schema": True})
    deployment_id = json.loads(deployment).get("id") if status in (200, 201) else None
    expect(bool(flow_id and deployment_id), f"a flow and a deployment registered through the API (HTTP {status})",
           results)
    status, flow_run = request(f"{api}/deployments/{deployment_id}/create_flow_run", auth, {})
    expect(status in (200, 201) and json.loads(flow_run).get("state_type") == "SCHEDULED",
           f"a flow run created from the deployment (HTTP {status})", results)
    return deployment_id


def check_mlflow(url: str, auth: tuple[str, str], results: list) -> None:
    api = f"{url}/api/2.0/mlflow"
    expect(request(f"{api}/experiments/search?max_results=1")[0] == 401,
           "MLflow API refuses a request without credentials", results)
    status, _ = request(f"{api}/experiments/search?max_results=1", auth)
    expect(status == 200, "MLflow API answers with credentials", results)
    status, page = request(f"{url}/", auth)
    expect(status == 200 and "<html" in page.lower(), f"MLflow UI answers at / (HTTP {status})", results)
    status, experiment = request(f"{api}/experiments/create", auth, {"name": f"infra-check-{secrets.token_hex(4)}"})
    experiment_id = json.loads(experiment).get("experiment_id") if status == 200 else None
    status, created = request(f"{api}/runs/create", auth, {"experiment_id": experiment_id, "start_time": 0})
    run_id = json.loads(created)["run"]["info"]["run_id"] if status == 200 else None
    status, _ = request(f"{api}/runs/log-metric", auth, {"run_id": run_id, "key": "eval/task_acc", "value": 0.5,
                                                         "timestamp": 0, "step": 0})
    expect(run_id is not None and status == 200, "an MLflow run created and a metric logged", results)
    name = f"infra-check-{secrets.token_hex(4)}"
    request(f"{api}/registered-models/create", auth, {"name": name})
    status, version = request(f"{api}/model-versions/create", auth, {"name": name, "source": f"runs:/{run_id}/model",
                                                                     "run_id": run_id})
    expect(status == 200 and json.loads(version)["model_version"]["version"] == "1",
           f"a model version registered (HTTP {status})", results)


def stop(process: subprocess.Popen, container: str) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    subprocess.run(["buildah", "rm", container], capture_output=True)


def leftovers() -> list[str]:
    """Processes of the servers still running on this machine (none should be)."""
    found = subprocess.run(["pgrep", "-af", "prefect server start|mlflow server|uvicorn prefect|gunicorn"],
                           capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for tool in ("buildah", "podman", "debootstrap", "chromium"):
        if shutil.which(tool) is None:
            print(f"infra-check: {tool} is not installed: apt-get install buildah podman debootstrap chromium",
                  file=sys.stderr)
            return 1
    results: list[tuple[str, bool]] = []
    started: list[tuple[subprocess.Popen, str]] = []
    pg_ctl: list[str] = []
    failure, seconds = None, 0.0
    try:
        seconds = build_images()
        expect(True, f"servers image built from the stand-in base ({seconds:.0f} s)", results)
        dotenv = settings()
        database, pg_ctl, _ = start_postgres(dotenv, WORK / "postgres")
        prefect_port, mlflow_port = free_port(), free_port()
        prefect_env = service_environment("prefect-server", dotenv, {
            **database, "SERVER_HOST": "127.0.0.1", "PREFECT_PORT": str(prefect_port),
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"})
        mlflow_env = service_environment("mlflow", dotenv, {**database, "SERVER_HOST": "127.0.0.1",
                                                            "MLFLOW_PORT": str(mlflow_port)})
        started.append(start_in_image("prefect-server", "prefect-server.sh", prefect_env))
        started.append(start_in_image("mlflow", "mlflow-server.sh", mlflow_env))
        wait_for(f"http://127.0.0.1:{prefect_port}/api/health", started[0][0], "prefect-server")
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", started[1][0], "mlflow")
        user, _, password = dotenv["PREFECT_AUTH_STRING"].partition(":")
        deployment_id = check_prefect(f"http://127.0.0.1:{prefect_port}", (user, password), results)
        for what, passed in check_run_form(f"http://127.0.0.1:{prefect_port}", dotenv["PREFECT_AUTH_STRING"],
                                           deployment_id, WORK / "prefect-run-form.png"):
            expect(passed, what, results)
        admin = (dotenv["MLFLOW_ADMIN_USERNAME"], dotenv["MLFLOW_ADMIN_PASSWORD"])
        check_mlflow(f"http://127.0.0.1:{mlflow_port}", admin, results)
        whoami = run(["buildah", "run", "--isolation", "chroot", started[0][1], "--", "id", "-un"], "reading the user")
        expect(whoami.strip() == "spark", f"the servers run as the image's non-root user ({whoami.strip()})", results)
    except CheckFailed as error:
        failure = str(error)
        log(f"FAIL {failure}")
    finally:
        for process, container in started:
            stop(process, container)
        if pg_ctl:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
        left = leftovers()
        expect(not left, "every server process stopped, nothing left running" + (f": {left}" if left else ""), results)
    ok = failure is None and all(passed for _, passed in results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [f"# Infra check ({date.today()}, commit {commit.strip() or 'unknown'})", "",
             "`make infra-check` (infra/check/run.py): the servers image built with buildah from a stand-in base "
             "(Debian bookworm's Python 3.11; the real base, python:3.11-slim-bookworm, cannot be pulled here) and "
             "served from, against a real PostgreSQL 15, with compose's environment.", ""]
    lines += [f"- {'ok' if passed else 'FAILED'}: {what}" for what, passed in results]
    if failure:
        lines += ["", f"Stopped at: {failure}"]
    lines += ["", f"Result: {'PASSED' if ok else 'FAILED'}. Log of the last run: runs/infra-check/check.log."]
    RESULT.write_text("\n".join(lines) + "\n")
    log(f"infra-check {'passed' if ok else 'FAILED'}; {RESULT}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
