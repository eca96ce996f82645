"""The code of a registered policy's MLflow Model (MLflow's models-from-code: the model is this
file and the policy folder, no pickled object). MLflow runs it when it loads the model."""

from mlflow.models import set_model

from spark_vl.tracking.policy_model import RegisteredPolicy

set_model(RegisteredPolicy())
