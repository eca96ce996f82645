import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from spark_vl.config import BuiltinDataConfig, ModelConfig  # noqa: E402

torch.set_num_threads(1)


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
