"""The team deployment against the real thing: PostgreSQL 15, and the Prefect and MLflow servers
started with the very commands and environment of infra/compose.yaml (read from the file; only
container addresses and paths are replaced), both requiring credentials. A deployment of the
repository's prefect.yaml runs on a worker started by compose's worker command; two flow runs
finishing together leave the better policy champion; the Kubernetes pool and deployment are
accepted by the server."""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from spark_vl.config import load_config, save_config
from spark_vl.doctor import http_get
from spark_vl.faults import ENV as FAULT, PAUSE_DIR
from spark_vl.runio import free_port
from spark_vl.train.launch import environment_without_launcher
from tests.test_flow import DEEPSPEED
from tests.test_pipeline import SMALL
from tests.test_servers import _wait_healthy, prefect_client_json, prefect_cli

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
BIN = Path(sys.executable).parent
# What a container has and this machine has not: the database's host, where servers listen, and
# paths inside images. Everything else comes from compose.yaml as written.
HOST_SPECIFIC = {"POSTGRES_HOST", "POSTGRES_PORT", "SERVER_HOST", "PREFECT_PORT", "MLFLOW_PORT", "PREFECT_UI_API_URL",
                 "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_ARTIFACTS_DESTINATION", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"}


def _dotenv(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def _interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` and `$$`, from an env file as `--env-file` gives it."""
    value = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: dotenv.get(m[1]) or m[2] or "", value)
    return value.replace("$$", "$")


def _service(name: str, dotenv: dict[str, str], host: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Compose's command and environment of service `name`, with `host` for HOST_SPECIFIC keys."""
    service = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"][name]
    env = {key: _interpolate(str(value), dotenv) for key, value in service["environment"].items()}
    assert set(host) <= HOST_SPECIFIC and set(host) <= set(env), set(host) - set(env)
    path = f"{INFRA / 'docker'}:{BIN}:{os.environ['PATH']}"
    return service["command"], {**environment_without_launcher(), **env, **host, "PATH": path}


def _secrets() -> dict[str, str]:
    """infra/.env.example with every placeholder replaced; the database password needs quoting."""
    dotenv = _dotenv(INFRA / ".env.example")
    for key, value in dotenv.items():
        if "change-me" in value:
            dotenv[key] = value.split("change-me")[0] + secrets.token_hex(12)
    dotenv["POSTGRES_PASSWORD"] = "p@ss:/%" + secrets.token_hex(8)
    dotenv["MLFLOW_WORKER_PASSWORD"] = dotenv["MLFLOW_ADMIN_PASSWORD"]
    return dotenv


def test_each_service_refuses_its_placeholder_secrets(tmp_path):
    dotenv = _dotenv(INFRA / ".env.example")
    for name, secret in (("prefect-server", "PREFECT_SERVER_API_AUTH_STRING"), ("mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD"),
                         ("worker", "PREFECT_API_AUTH_STRING")):
        command, env = _service(name, dotenv, {})
        result = subprocess.run(command, env={**env, "PREFECT_HOME": str(tmp_path)}, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert f"{secret} is still the placeholder" in result.stderr, result.stderr
        assert "change-me" not in result.stderr  # names the variable, never prints a value


def test_server_image_pins_are_the_tested_ones():
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    servers = [line for line in (INFRA / "docker" / "servers.txt").read_text().splitlines()
               if line and not line.startswith("#")]
    for package in ("prefect", "mlflow"):
        (ours,) = [p for p in pinned if p.startswith(f"{package}==")]
        (image,) = [s for s in servers if s.startswith(package)]
        assert image.replace("[auth]", "") == ours


def _pg_bin() -> Path:
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if found is None:
        if os.environ.get("SPARK_VL_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries not found: install postgresql-15 (Debian) or its equivalent")
        pytest.skip("PostgreSQL server binaries not found (install postgresql-15)")
    return Path(found).resolve().parent


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with password auth and infra/postgres/init.sql applied."""
    pg_bin, dotenv = _pg_bin(), _secrets()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="spark-vl-pg-"))
    (root / "pw").write_text(dotenv["POSTGRES_PASSWORD"])
    if as_postgres:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    port = free_port()
    subprocess.run([*as_postgres, str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", dotenv["POSTGRES_USER"],
                    f"--pwfile={root / 'pw'}", "-A", "scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
    subprocess.run([*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-o",
                    options, "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(pg_bin / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", "127.0.0.1", "-p", str(port), "-U",
                        dotenv["POSTGRES_USER"], "-d", "postgres", "-f", str(INFRA / "postgres" / "init.sql")],
                       env={**os.environ, "PGPASSWORD": dotenv["POSTGRES_PASSWORD"]}, check=True, capture_output=True)
        yield dotenv, {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port)}
    finally:
        subprocess.run([*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """Compose's prefect-server and mlflow services on that PostgreSQL; the clients' environment."""
    dotenv, database = postgres
    tmp = tmp_path_factory.mktemp("team")
    prefect_port, mlflow_port = free_port(), free_port()
    host = {**database, "SERVER_HOST": "127.0.0.1"}
    started = []
    for name, own in (("prefect-server", {"PREFECT_PORT": str(prefect_port),
                                          "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"}),
                      ("mlflow", {"MLFLOW_PORT": str(mlflow_port), "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "auth.ini"),
                                  "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "artifacts")})):
        command, env = _service(name, dotenv, {**host, **own})
        log = open(tmp / f"{name}.log", "w")
        started.append(subprocess.Popen(command, env={**env, "PREFECT_HOME": str(tmp / "server-home")}, stdout=log,
                                        stderr=log, start_new_session=True))
    try:
        _wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", started[0])
        _wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", started[1])
        (tmp / "client-home").mkdir()
        client = {**environment_without_launcher(), "PREFECT_HOME": str(tmp / "client-home"),
                  "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                  "PREFECT_API_AUTH_STRING": dotenv["PREFECT_AUTH_STRING"],
                  "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                  "MLFLOW_TRACKING_USERNAME": dotenv["MLFLOW_ADMIN_USERNAME"],
                  "MLFLOW_TRACKING_PASSWORD": dotenv["MLFLOW_ADMIN_PASSWORD"]}
        yield {"client": client, "dotenv": dotenv, "artifacts": tmp / "artifacts"}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, 9)
            process.wait()


def _small_config(tmp_path: Path, tiny_data_dir: Path, name: str, *extra: str) -> Path:
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     f"train.deepspeed_config={DEEPSPEED}", f"orchestration.runs_dir={tmp_path / 'runs'}",
                                     "tracking.experiment=team", *extra])
    save_config(cfg, tmp_path / f"{name}.yaml")
    return tmp_path / f"{name}.yaml"


@pytest.mark.slow
def test_compose_servers_deploy_trigger_and_register_with_auth(team, tmp_path, tiny_data_dir, monkeypatch):
    client, dotenv = team["client"], team["dotenv"]
    # Without credentials both servers refuse.
    assert http_get(f"{client['PREFECT_API_URL']}/admin/version") == 401
    assert http_get(f"{client['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1") == 401

    command, worker_env = _service("worker", dotenv, {key: client[key] for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")})
    worker_env["PREFECT_HOME"] = client["PREFECT_HOME"]

    def worker(*args):
        result = subprocess.run([*command, *args], cwd=REPO, env=worker_env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    worker("--run-once")  # makes the pool, deploys prefect.yaml, finds nothing to do
    config = _small_config(tmp_path, tiny_data_dir, "team", "tracking.registered_model=team")
    prefect_cli(client, "deployment", "run", "co-evolve/on-demand", "--param", f"config_path={config}", "--param",
                "run_name=team-run")
    worker("--run-once")

    from spark_vl import tracking

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, client[key])
    mlflow_client = tracking.client()
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("team").experiment_id])
    assert run.info.run_name == "team-run" and run.info.status == "FINISHED"
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "iteration")] == [0, 1]
    champion = mlflow_client.get_model_version_by_alias("team", "champion")
    # The registered version lives in the server's artifact store, not on the worker's disk.
    assert champion.source.startswith("mlflow-artifacts:/"), champion.source
    assert list(team["artifacts"].rglob("config.json")), "no policy in the server's artifact store"
    local = tracking.resolve_model("models:/team@champion", tmp_path / "download")
    assert (local / "spark_vl_config.yaml").exists()

    # spark-vl doctor passes with the credentials and names the one missing.
    doctor = subprocess.run([str(BIN / "spark-vl"), "doctor"], cwd=REPO, env=client, capture_output=True, text=True,
                            timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    no_password = {k: v for k, v in client.items() if k != "MLFLOW_TRACKING_PASSWORD"}
    doctor = subprocess.run([str(BIN / "spark-vl"), "doctor"], cwd=REPO, env=no_password, capture_output=True,
                            text=True, timeout=300)
    assert doctor.returncode == 1 and "MLFLOW_TRACKING_PASSWORD" in doctor.stdout, doctor.stdout

    # The Kubernetes pool takes the base job template, and its deployment deploys against it.
    prefect_cli(client, "work-pool", "create", "spark-vl-k8s", "--type", "kubernetes", "--base-job-template",
                str(INFRA / "k8s" / "base-job-template.json"))
    prefect_cli({**client, "SPARK_VL_IMAGE": "registry.example.com/spark-vl-worker:0.1.0"}, "deploy", "--all",
                "--prefect-file", str(INFRA / "k8s" / "prefect.yaml"))
    pool, variables = prefect_client_json("d = c.read_deployment_by_name('co-evolve/on-demand-gpu')\n"
                                          "print(json.dumps([d.work_pool_name, d.job_variables]))", client)
    assert pool == "spark-vl-k8s"
    assert variables["gpus"] == 8 and variables["image"] == "registry.example.com/spark-vl-worker:0.1.0"


def _meet(pipe: Path, mode: str, run: subprocess.Popen, log: Path) -> None:
    """Open one end of a fault point's named pipe: returns when the run opens the other end,
    fails with the run's log when the run ends first."""
    arrived, over = threading.Event(), threading.Event()

    def open_end():
        with open(pipe, mode):
            arrived.set()
            over.set()

    def wait_run():
        run.wait()
        over.set()

    for target in (open_end, wait_run):
        threading.Thread(target=target, daemon=True).start()
    over.wait()
    assert arrived.is_set(), f"the run ended before {pipe.name}:\n" + log.read_text()[-3000:]


@pytest.mark.slow
def test_two_runs_finishing_together_leave_the_better_champion(team, tmp_path, tiny_data_dir, monkeypatch):
    """Run `worse` (every answer graded wrong) reads the champion and stops before moving it,
    holding the server's one slot; run `better` (every answer right) is let go from just before
    the lock, then `worse` goes on. Without the lock, `better` could read no champion and take
    it, and `worse` take it back; whether it does depends on timing, so the test also checks
    that the slot is held on the server while `worse` decides."""
    (tmp_path / "grade.py").write_text("def right(response, answer, prompt):\n    return 1.0\n\n\n"
                                      "def wrong(response, answer, prompt):\n    return 0.0\n")
    runs = {}
    for name, point in (("worse", "promote:1:before"), ("better", "register:1:after")):
        pauses = tmp_path / f"pauses-{name}"
        pauses.mkdir()
        stem = point.replace(":", "-")
        for end in ("reached", "release"):
            os.mkfifo(pauses / f"{stem}.{end}")
        function = "right" if name == "better" else "wrong"
        config = _small_config(tmp_path, tiny_data_dir, name, "tracking.registered_model=shared",
                               f"reward.function={tmp_path / 'grade.py'}:{function}")
        env = {**team["client"], FAULT: f"{point}:pause", PAUSE_DIR: str(pauses)}
        code = f"from flows.co_evolve import co_evolve; co_evolve(config_path={str(config)!r}, run_name={name!r})"
        log = open(tmp_path / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log, stderr=log)
        runs[name] = (process, pauses / stem)

    try:
        for name, end, mode in (("worse", "reached", "r"),    # worse holds the lock, champion read
                                ("better", "reached", "r"),   # better registered, about to take the lock
                                ("better", "release", "w"), ("worse", "release", "w")):
            process, stem = runs[name]
            _meet(stem.with_suffix(f".{end}"), mode, process, tmp_path / f"{name}.log")
            if (name, end) == ("worse", "reached"):  # the server holds the one slot for worse
                assert prefect_client_json("print(c.read_global_concurrency_limit_by_name("
                                           "'spark-vl-champion-shared').active_slots)", team["client"]) == 1
        for name, (process, _) in runs.items():
            assert process.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    from spark_vl import tracking

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, team["client"][key])
    client = tracking.client()
    champion = client.get_model_version_by_alias("shared", "champion")
    assert float(champion.tags["task_acc"]) == 1.0
    assert client.get_run(champion.run_id).info.run_name == "better"


def test_mlflow_refuses_a_short_admin_password_before_it_starts(tmp_path):
    """MLflow stops on an admin password under 12 characters with its own message, after the
    database migration: the service's start names the rule first."""
    dotenv = {**_secrets(), "MLFLOW_ADMIN_PASSWORD": "short-pass1"}
    command, env = _service("mlflow", dotenv, {})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "MLFLOW_AUTH_ADMIN_PASSWORD is shorter than 12 characters" in result.stderr
    assert "short-pass1" not in result.stderr


def test_runs_starting_together_on_one_data_set_each_record_it(postgres, team, tmp_path, tiny_data_dir, monkeypatch):
    """Eight runs log the same datasets at the same moment into the PostgreSQL store the server
    uses (as a client given the database's URI does): each run lists both, and the experiment holds
    each dataset once. MLflow's SQL store inserts a new dataset after looking for it, so all but one
    of them meet its key (in 16 of 20 tries here without tracking's second try); three rounds."""
    from spark_vl import tracking
    from spark_vl.pipeline import dataset_tables

    dotenv, database = postgres
    user, password = (quote(dotenv[key], safe="") for key in ("POSTGRES_USER", "POSTGRES_PASSWORD"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql+psycopg2://{user}:{password}@{database['POSTGRES_HOST']}:"
                                              f"{database['POSTGRES_PORT']}/mlflow")
    monkeypatch.chdir(tmp_path)  # where MLflow puts a bare database store's artifacts
    for round_ in range(3):
        cfg = load_config(None, [f"tracking.experiment=together-{round_}",
                                 f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                 f"data.eval_path={tiny_data_dir / 'eval.jsonl'}"])
        tables = dataset_tables(cfg, tmp_path / "run")
        run_ids = [tracking.open_run(cfg, tmp_path / f"run-{round_}-{i}", f"together-{i}") for i in range(8)]
        start, errors = threading.Barrier(len(run_ids)), []

        def log(run_id):
            start.wait()
            try:
                tracking.log_datasets(run_id, tables)
            except Exception as error:  # noqa: BLE001 - shown by the assertion below
                errors.append(repr(error)[:500])

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], errors[0]
        client = tracking.client()
        logged = set()
        for run_id in run_ids:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert sorted(i.tags[0].value for i in inputs) == ["eval", "train"]
            logged |= {(i.dataset.name, i.dataset.digest) for i in inputs}
        assert len(logged) == 2


@pytest.mark.slow
def test_four_runs_at_once_through_a_deployment_lose_nothing_and_the_best_is_champion(team, tmp_path, tiny_data_dir,
                                                                                      monkeypatch):
    """Four runs of one deployment, triggered together and worked at once by one worker, on the
    PostgreSQL-backed servers: every run completes with each iteration's metrics logged once,
    each registers one version, and the champion is the run whose held-out accuracy is best
    (its reward function pays every answer; the others pay none, or those of the questions with
    a number for answer: a third of the held-out ones)."""
    client = team["client"]
    (tmp_path / "grade.py").write_text("def none(response, answer, prompt):\n    return 0.0\n\n\n"
                                      "def every(response, answer, prompt):\n    return 1.0\n\n\n"
                                      "def digits(response, answer, prompt):\n    return float(answer.isdigit())\n")
    config = _small_config(tmp_path, tiny_data_dir, "four", "train.iterations=2", "tracking.experiment=four",
                           "tracking.registered_model=four")
    deployment = {"name": "four", "entrypoint": "flows/co_evolve.py:co_evolve", "work_pool": {"name": "spark-vl"},
                  "parameters": {"config_path": str(config), "allow_keys": ["reward.function"]}}
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump({"name": "spark-vl", "deployments": [deployment]}))
    prefect_cli(client, "work-pool", "create", "spark-vl", "--type", "process", "--overwrite")
    prefect_cli(client, "deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml"))
    pays = {"run-a": "none", "run-b": "digits", "run-c": "every", "run-d": "digits"}
    for name, function in pays.items():
        prefect_cli(client, "deployment", "run", "co-evolve/four", "--param", f"run_name={name}", "--param",
                    f'overrides=["reward.function={tmp_path / "grade.py"}:{function}"]')
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "spark-vl", "--run-once", "--limit", "4"],
                            cwd=REPO, env=client, capture_output=True, text=True, timeout=900)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    assert "Traceback" not in worker.stdout + worker.stderr  # four runs ending together end quietly

    states = prefect_client_json(f"names = {sorted(pays)!r}\n"  # the server also holds other tests' runs
                                 "print(json.dumps({r.parameters.get('run_name'): [r.state.type.value,"
                                 " r.start_time.timestamp(), r.end_time.timestamp()] for r in c.read_flow_runs()"
                                 " if r.parameters.get('run_name') in names}))", client)
    assert {name: states[name][0] for name in pays} == {name: "COMPLETED" for name in pays}
    assert max(states[name][1] for name in pays) < min(states[name][2] for name in pays)  # all four ran at once

    from spark_vl import tracking

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, client[key])
    mlflow_client = tracking.client()
    runs = {run.info.run_name: run for run in
            mlflow_client.search_runs([mlflow_client.get_experiment_by_name("four").experiment_id])}
    assert sorted(runs) == sorted(pays) and all(run.info.status == "FINISHED" for run in runs.values())
    for run in runs.values():
        for metric in ("iteration", "eval/task_acc", "rollout/reward_mean"):
            steps = [m.step for m in mlflow_client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == ([0, 1, 2] if metric != "rollout/reward_mean" else [1, 2]), (metric, steps)
    versions = mlflow_client.search_model_versions("name='four'")
    assert sorted(v.run_id for v in versions) == sorted(run.info.run_id for run in runs.values())
    champion = mlflow_client.get_model_version_by_alias("four", "champion")
    accuracy = {name: float(next(v for v in versions if v.run_id == run.info.run_id).tags["task_acc"])
                for name, run in runs.items()}
    assert accuracy == {"run-a": 0.0, "run-b": pytest.approx(1 / 3), "run-c": 1.0, "run-d": pytest.approx(1 / 3)}
    assert champion.run_id == runs["run-c"].info.run_id
