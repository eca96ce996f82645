"""The Prefect flow for 2 iterations on the tiny model, with MLflow on a temporary SQLite store."""

from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.co_evolve import co_evolve
from spark_vl import tracking
from spark_vl.config import load_config
from tests.test_pipeline import SMALL

DEEPSPEED = Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / "zero0.json"


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_flow_two_iterations_logs_metrics_artifacts_and_registers(harness, tmp_path, monkeypatch, tiny_data_dir):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}",
                                     f"train.deepspeed_config={DEEPSPEED}", "tracking.registered_model=flow-test",
                                     "orchestration.retry_delay_s=0"])
    run_id = co_evolve(config=cfg, run_name="flow-test")
    client = tracking.client()
    run = client.get_run(run_id)
    assert run.info.run_name == "flow-test"
    with get_client(sync_client=True) as prefect:  # one run, one name: in Prefect too
        assert prefect.read_flow_run(UUID(run.data.tags["prefect.flow_run_id"])).name == "flow-test"
    assert "prefect.flow_run_id" in run.data.tags and "git_commit" in run.data.tags
    history = client.get_metric_history(run_id, "eval/task_acc")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "rollout/reward_mean")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"coevolution.png", "config.yaml", "samples", "policy"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert samples == {"samples/rollouts-k0002.json", "samples/recycled-k0002.json"}
    assert int(client.get_model_version_by_alias("flow-test", "champion").version) == 1

    again = co_evolve(config=cfg, run_name="flow-test")  # a new flow run resumes: nothing is logged twice
    assert again == run_id
    assert [m.step for m in client.get_metric_history(run_id, "eval/task_acc")] == [0, 1, 2]
    assert len(client.search_model_versions("name='flow-test'")) == 1


def test_a_task_that_fails_once_is_retried(harness, tmp_path, monkeypatch, tiny_data_dir):
    from spark_vl.pipeline import stages

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    real_grade, calls = stages.grade_groups, []

    def grade_failing_once(groups, *args):
        calls.append(groups[0].prompt.id.split("/")[0])  # the iteration's prefix, k1
        if len(calls) == 1:
            raise ConnectionError("grading workers unreachable (injected once)")
        real_grade(groups, *args)

    monkeypatch.setattr(stages, "grade_groups", grade_failing_once)  # inside the verify stage
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     f"train.deepspeed_config={DEEPSPEED}", "tracking.registered_model=retry-test",
                                     "orchestration.retries=1", "orchestration.retry_delay_s=0"])
    run_id = co_evolve(config=cfg, run_name="retry-test")
    assert calls == ["k1", "k1"]
    assert [m.step for m in tracking.client().get_metric_history(run_id, "rollout/reward_mean")] == [1]


def test_a_task_failing_on_bad_input_is_not_retried_and_the_mlflow_run_fails(harness, tmp_path, monkeypatch,
                                                                              tiny_data_dir):
    from spark_vl.pipeline import stages
    from spark_vl.runio import DamagedOutput

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    calls = []

    def grade_reading_a_damaged_file(groups, *args):
        calls.append(groups[0].prompt.id.split("/")[0])
        raise DamagedOutput(tmp_path / "rollouts.jsonl", "line 3 is not valid JSON")

    monkeypatch.setattr(stages, "grade_groups", grade_reading_a_damaged_file)  # inside the verify stage
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     f"train.deepspeed_config={DEEPSPEED}", "orchestration.retries=2",
                                     "orchestration.retry_delay_s=0"])
    with pytest.raises(DamagedOutput):
        co_evolve(config=cfg, run_name="bad-input")
    assert calls == ["k1"]
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert run.info.status == "FAILED"


def test_the_run_form_describes_each_parameter_and_whose_allow_keys_is():
    """The Prefect UI's run form shows these descriptions beside the fields (#34)."""
    from prefect.utilities.callables import parameter_schema

    fields = parameter_schema(co_evolve).model_dump()["properties"]
    assert all(fields[name].get("description") for name in ("config", "config_path", "overrides", "run_name",
                                                            "allow_keys"))
    assert "never by a trigger" in " ".join(fields["allow_keys"]["description"].split())
    assert "one name" in fields["run_name"]["description"]
