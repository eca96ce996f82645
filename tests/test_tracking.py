import json
import warnings
from pathlib import Path
import shutil

import pytest

from spark_vl import plots, tracking
from spark_vl.config import load_config


def register(run_id: str, policy_dir: Path, name: str, task_acc: float, eval_set: str = "") -> int:
    """Register a policy and promote it if better, as the flow's register task does in one run."""
    version = tracking.register_version(run_id, policy_dir, name, task_acc, eval_set)
    tracking.promote_if_better(name, version, task_acc, eval_set=eval_set)
    return version


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts of a bare SQLite store under ./mlruns
    return tmp_path


def test_iterations_missing_from_mlflow_are_back_filled_once(store):
    cfg = load_config(None, ["tracking.experiment=t1"])
    run_id = tracking.open_run(cfg, store / "run", "r1")
    rows = [{"iteration": 0, "eval/task_acc": 0.5, "eval/judge_pointwise_acc": float("nan")},
            {"iteration": 1, "eval/task_acc": 0.6}]
    assert tracking.log_missing_iterations(run_id, rows[:1]) == [0]
    # MLflow missed iteration 1 (server down, or killed before the batch): the next log adds it.
    rows.append({"iteration": 2, "eval/task_acc": 0.7})
    assert tracking.log_missing_iterations(run_id, rows) == [1, 2]
    assert tracking.log_missing_iterations(run_id, rows) == []
    history = tracking.client().get_metric_history(run_id, "eval/task_acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    run = tracking.client().get_run(run_id)
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.tags["config_hash"] == cfg.digest()


def test_run_status_and_experiment_kind(store):
    cfg = load_config(None, ["tracking.experiment=t5"])
    run_id = tracking.open_run(cfg, store / "run", "r5")
    mlflow_client = tracking.client()
    experiment = mlflow_client.get_experiment_by_name("t5")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert mlflow_client.get_run(run_id).info.status == "RUNNING"
    tracking.end_run(run_id, "FINISHED")
    finished = mlflow_client.get_run(run_id).info
    assert finished.status == "FINISHED" and finished.end_time
    assert tracking.open_run(cfg, store / "run", "r5") == run_id  # same run directory, same MLflow run
    assert mlflow_client.get_run(run_id).info.status == "RUNNING"  # resumed
    tracking.end_run(run_id, "FAILED")
    assert mlflow_client.get_run(run_id).info.status == "FAILED"


def _policies(tiny_model_dir, folder, n):
    """n copies of the tiny model as the policies of iterations 1..n."""
    paths = [folder / f"policy-{k:04d}" for k in range(1, n + 1)]
    for path in paths:
        shutil.copytree(tiny_model_dir, path)
    return paths


def test_registry_aliases_move_only_on_improvement(store, tiny_model_dir):
    cfg = load_config(None, ["tracking.experiment=t2"])
    run_id = tracking.open_run(cfg, store / "run", "r2")
    mlflow_client = tracking.client()
    first, second, third = _policies(tiny_model_dir, store / "model", 3)
    assert register(run_id, first, "m", 1 / 3) == 1
    assert register(run_id, second, "m", 1 / 3) == 2  # as good, not better: no move
    assert mlflow_client.get_model_version_by_alias("m", "candidate").version == 2
    assert mlflow_client.get_model_version_by_alias("m", "champion").version == 1
    # Killed after the registry call, before its marker: the rerun finds the version it made.
    assert register(run_id, second, "m", 1 / 3) == 2
    assert len(mlflow_client.search_model_versions("name='m'")) == 2
    assert register(run_id, third, "m", 0.7) == 3
    assert mlflow_client.get_model_version_by_alias("m", "champion").version == 3
    local = tracking.resolve_model("models:/m@champion", store / "download")
    assert json.loads((local / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_the_champion_moves_only_on_the_same_held_out_set(store, tiny_model_dir, caplog):
    """A run measured on its own held-out set (an easier one, or one a trigger chose) cannot take
    the champion however high its accuracy; on the champion's set it can."""
    run_id = tracking.open_run(load_config(None, ["tracking.experiment=t8"]), store / "run", "r8")
    mlflow_client = tracking.client()
    first, second, third = _policies(tiny_model_dir, store / "model", 3)
    assert register(run_id, first, "fair", 0.3, eval_set="deployment-set") == 1
    assert register(run_id, second, "fair", 1.0, eval_set="an-easy-set") == 2
    assert mlflow_client.get_model_version_by_alias("fair", "champion").version == 1
    assert "measured on another held-out set than the champion" in caplog.text
    assert mlflow_client.get_model_version("fair", "2").tags["eval_set"] == "an-easy-set"
    assert register(run_id, third, "fair", 0.4, eval_set="deployment-set") == 3
    assert mlflow_client.get_model_version_by_alias("fair", "champion").version == 3


def test_a_run_records_its_train_and_eval_data_as_mlflow_datasets(store, tiny_data_dir):
    """Both splits as dataset inputs with their source and a digest that changes with an image's
    bytes; logging again (a resumed run) adds nothing."""
    from spark_vl.pipeline import dataset_tables

    cfg = load_config(None, ["tracking.experiment=t9", f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                             f"data.eval_path={tiny_data_dir / 'eval.jsonl'}"])
    run_id = tracking.open_run(cfg, store / "run", "r9")
    tables = dataset_tables(cfg, store / "run")
    tracking.log_datasets(run_id, tables)
    tracking.log_datasets(run_id, tables)
    inputs = tracking.client().get_run(run_id).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert len(inputs) == 2 and set(contexts) == {"train", "eval"}
    assert contexts["eval"].source_type == "local" and "eval.jsonl" in contexts["eval"].source
    changed = tiny_data_dir.parent / "changed"
    shutil.copytree(tiny_data_dir, changed)
    first_image = changed / json.loads((changed / "eval.jsonl").read_text().splitlines()[0])["image"]
    first_image.write_bytes(first_image.read_bytes() + b"\0")
    other = dataset_tables(load_config(None, [f"data.train_path={changed / 'train.jsonl'}",
                                              f"data.eval_path={changed / 'eval.jsonl'}"]), store / "other")
    run_2 = tracking.open_run(cfg, store / "run-2", "r9b")
    tracking.log_datasets(run_2, other)
    digests = {i.tags[0].value: i.dataset.digest for i in tracking.client().get_run(run_2).inputs.dataset_inputs}
    assert digests["eval"] != contexts["eval"].digest and digests["train"] == contexts["train"].digest


def test_a_version_registered_as_a_plain_folder_is_registered_again_as_an_mlflow_model(store, tiny_model_dir):
    """What runs registered before versions were MLflow Models: spark-vl reads it as it is, MLflow
    cannot; `spark-vl register-again` makes a new version MLflow loads, with the old tags and aliases."""
    import mlflow
    from typer.testing import CliRunner

    from spark_vl.cli import app

    run_id = tracking.open_run(load_config(None, ["tracking.experiment=t10"]), store / "run", "r10")
    mlflow_client = tracking.client()
    mlflow_client.log_artifacts(run_id, str(tiny_model_dir), "policy/k0001")  # as versions were registered
    mlflow_client.create_registered_model("old")
    mlflow_client.create_model_version("old", source=f"{mlflow_client.get_run(run_id).info.artifact_uri}/policy/k0001",
                                       run_id=run_id, tags={"task_acc": "0.5", "spark_vl.policy": "k0001"})
    mlflow_client.set_registered_model_alias("old", "champion", "1")
    assert (tracking.resolve_model("models:/old@champion", store / "dl") / "config.json").is_file()
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLmodel"):
        mlflow.pyfunc.load_model("models:/old@champion")

    result = CliRunner().invoke(app, ["register-again", "models:/old/1", "--experiment", "t10"])
    assert result.exit_code == 0, result.output
    assert "models:/old/2 (an MLflow Model)" in result.output
    again = mlflow_client.get_model_version_by_alias("old", "champion")
    assert int(again.version) == 2 and again.tags["task_acc"] == "0.5"
    assert again.tags["spark_vl.registered_again_from"] == "1"
    assert mlflow.pyfunc.load_model("models:/old@champion").metadata.signature is not None
    refused = CliRunner().invoke(app, ["register-again", "models:/old/2"])
    assert refused.exit_code == 2 and "an MLflow Model already" in refused.output
    assert CliRunner().invoke(app, ["register-again", "models:/old@champion"]).exit_code == 2


def test_coevolution_plot(tmp_path):
    """Rows without self-reflection metrics (eval.reflect_rounds=0): that panel says so, and matplotlib
    does not warn about a legend with nothing in it."""
    rows = [{"iteration": k, "eval/task_acc": 0.5 + k / 10, "eval/task_acc_reflect": 0.5,
             "eval/judge_pointwise_acc": 0.5, "eval/judge_pairwise_acc": 0.6} for k in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plots.plot_coevolution(rows + [{"iteration": 3, "train/loss": 1.0}], tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram(tmp_path):
    records = [{"kind": "judge_pointwise", "label": "Yes" if i % 3 else "No", "p_positive": i / 10} for i in range(10)]
    path = plots.plot_reliability(records + [{"kind": "solve", "label": "red"}], tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.plot_reliability([{"kind": "judge_pointwise", "label": "Yes", "p_positive": None}],
                                     tmp_path / "none.png") is None


def test_eval_command_loads_the_champion_from_the_registry(store, tiny_model_dir, tiny_data_dir):
    from typer.testing import CliRunner

    from spark_vl.cli import app

    cfg = load_config(None, ["tracking.experiment=t3"])
    run_id = tracking.open_run(cfg, store / "run", "r3")
    register(run_id, tiny_model_dir, "evalme", 0.1)
    result = CliRunner().invoke(app, ["eval", "--model", "models:/evalme@champion", "--json",
                                      "--data", str(tiny_data_dir / "eval.jsonl"), "--set", "eval.n_task=4",
                                      "--set", "eval.n_judge=4", "--set", "eval.reflect_rounds=1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert set(metrics) >= {"eval/task_acc", "eval/task_acc_reflect", "eval/judge_pointwise_acc"}
    assert 0 <= metrics["eval/task_acc"] <= 1


def test_eval_uses_the_config_the_model_was_trained_with(store, tiny_model_dir, tiny_data_dir, tmp_path):
    """A registered policy carries its run's config, template file included; `eval` uses it
    unless --config is given, and says which."""
    from typer.testing import CliRunner

    from spark_vl.cli import app
    from spark_vl.config import MODEL_TEMPLATES, load_model_config, save_model_config
    from spark_vl.prompts import Templates

    templates = tmp_path / "my-templates.json"
    configs = Path(__file__).resolve().parent.parent / "configs"
    shutil.copyfile(configs / "templates-tiny-parens.json", templates)
    trained = load_config(None, [f"spark.templates={templates}", "model.min_pixels=3136", "eval.n_task=3",
                                 "eval.n_judge=2", "eval.reflect_rounds=1"])
    policy = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, policy)
    save_model_config(trained, policy)
    templates.unlink()  # the model's copy is what counts
    loaded = load_model_config(policy)
    assert loaded.model_dump(exclude={"spark"}) == trained.model_dump(exclude={"spark"})
    assert loaded.spark.templates == str(policy / MODEL_TEMPLATES)
    assert "(" in Templates.load(loaded.spark.templates).pointwise[0]["text"]
    run_id = tracking.open_run(load_config(None, ["tracking.experiment=t5"]), store / "run", "r5")
    register(run_id, policy, "knows-its-config", 0.1)
    command = ["eval", "--model", "models:/knows-its-config@champion", "--json", "--data",
               str(tiny_data_dir / "eval.jsonl")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "using the config the model was trained with" in result.output
    result = CliRunner().invoke(app, command + ["--config", str(configs / "tiny.yaml"), "--set", "eval.n_task=2",
                                                "--set", "eval.n_judge=2", "--set", "eval.reflect_rounds=1"])
    assert result.exit_code == 0, result.output
    assert "not the config the model was trained with" in result.output


def test_a_run_starts_from_the_registry_champion(store, tiny_model_dir, tiny_data_dir):
    from spark_vl.layout import start_policy
    from spark_vl.pipeline import prepare_run

    cfg = load_config(None, ["tracking.experiment=t4"])
    run_id = tracking.open_run(cfg, store / "run", "r4")
    register(run_id, tiny_model_dir, "start-here", 0.3)
    retrain = load_config(None, ["model.path=models:/start-here@champion",
                                 f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                 f"data.eval_path={tiny_data_dir / 'eval.jsonl'}"])
    prepare_run(retrain, store / "retrain", fetch_model=tracking.resolve_model)
    start = start_policy(retrain, store / "retrain")
    assert start == store / "retrain" / "model" / "from-registry"
    assert (start / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_a_registered_version_is_an_mlflow_model_that_answers_and_judges(store, tiny_model_dir, tiny_data_dir):
    """`mlflow.pyfunc.load_model` on the champion: a signature, an input example, pinned
    requirements, and rows answered (question) and judged (pointwise, pairwise); a bad row is
    refused with its number."""
    import base64

    import mlflow
    import pandas as pd

    cfg = load_config(None, ["tracking.experiment=t6"])
    run_id = tracking.open_run(cfg, store / "run", "r6")
    register(run_id, tiny_model_dir, "served", 0.2)
    info = mlflow.models.get_model_info("models:/served@champion")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image", "question", "answer", "answer_a",
                                                                     "answer_b"]
    local = Path(mlflow.artifacts.download_artifacts("models:/served@champion", dst_path=str(store / "dl")))
    assert any(line.startswith("torch==") for line in (local / "requirements.txt").read_text().splitlines())
    assert (local / "serving_input_example.json").is_file()
    rows = [json.loads(line) for line in (tiny_data_dir / "eval.jsonl").read_text().splitlines()[:2]]
    image = str(tiny_data_dir / rows[0]["image"])
    encoded = base64.b64encode(Path(image).read_bytes()).decode()
    model = mlflow.pyfunc.load_model("models:/served@champion")
    out = model.predict(pd.DataFrame([
        {"image": image, "question": rows[0]["question"]},
        {"image": encoded, "question": rows[0]["question"], "answer": rows[0]["answer"]},
        {"image": image, "question": rows[0]["question"], "answer_a": "1", "answer_b": "2"}]))
    assert list(out.columns) == ["reply", "answer", "verdict", "p_positive"] and len(out) == 3
    assert all(isinstance(reply, str) and reply for reply in out["reply"])
    assert out["verdict"][0] is None and out["p_positive"][0] is None  # a question is answered, not judged
    assert all(p is None or 0 <= p <= 1 for p in out["p_positive"][1:])
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 1: image is neither"):
        model.predict(pd.DataFrame([{"image": image, "question": "q"}, {"image": "nope.png", "question": "q"}]))


def test_mlflow_models_serve_answers_and_judges_the_champion_over_rest(store, tiny_model_dir):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`: an answer request and a
    judge request (the image's bytes in base64, as a REST client sends it) over /invocations; a
    bad row is a 400 naming it. The server is used once it logs that it listens."""
    import base64
    import io
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import urllib.error
    import urllib.request

    from PIL import Image

    from spark_vl.runio import free_port

    run_id = tracking.open_run(load_config(None, ["tracking.experiment=t7"]), store / "run", "r7")
    register(run_id, tiny_model_dir, "rest", 0.2)
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server runs `uvicorn` from the venv
    server = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/rest@champion",
                               "--env-manager", "local", "-p", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout] + [lines.put(None)],
                     daemon=True).start()
    try:
        seen = []
        while (line := lines.get(timeout=240)) is not None and "Uvicorn running on" not in line:  # listening
            seen.append(line)
        assert line is not None, "".join(seen[-20:])
        buffer = io.BytesIO()
        Image.new("RGB", (56, 56), (0, 0, 255)).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()

        def invoke(rows):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                             data=json.dumps({"dataframe_records": rows}).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        question = "What colour is the shape?"
        status, body = invoke([{"image": image, "question": question},
                               {"image": image, "question": question, "answer": "blue"}])
        assert status == 200 and len(body["predictions"]) == 2
        answered, judged = body["predictions"]
        assert answered["reply"] and answered["verdict"] is None
        assert judged["reply"] and (judged["p_positive"] is None or 0 <= judged["p_positive"] <= 1)
        status, body = invoke([{"image": "no-such-file.png", "question": question}])
        assert status == 400 and "row 0: image is neither" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
