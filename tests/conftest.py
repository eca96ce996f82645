import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ and "PREFECT_HOME" in os.environ:  # a Prefect database per worker
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], os.environ["PYTEST_XDIST_WORKER"])
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from spark_vl.config import BuiltinDataConfig, ModelConfig  # noqa: E402

torch.set_num_threads(1)

# The modules of end-to-end runs, longest first (`pytest --durations`, 2026-12-07): under `make test`
# (two workers, a module on one) they start first, and the short modules fill in beside them.
LONGEST_FIRST = ["test_team.py", "test_resume.py", "test_distributed.py", "test_servers.py", "test_vllm.py",
                 "test_overlap.py", "test_doctor.py", "test_lora.py", "test_flow.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from spark_vl.models import build_tiny_model

    return build_tiny_model(ModelConfig(), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    from spark_vl.data.tasks import make_dataset

    out = tmp_path_factory.mktemp("data")
    make_dataset(out, BuiltinDataConfig(n_train=40, n_eval=20, families=["colour", "count", "position", "size",
                                                                          "arithmetic"]))
    return out
