"""A registered policy as an MLflow Model (the pyfunc flavor), so that MLflow itself loads, serves
and describes it: `mlflow.pyfunc.load_model("models:/NAME@champion")`, `mlflow models serve`,
the registry's signature, input example and requirements.

The model's one input is a table of rows in `spark-vl judge`'s format (spark_vl.evaluate.requests):
{image, question} is answered; with `answer` it is judged pointwise, with `answer_a` and
`answer_b` pairwise. `image` is a file path or the image's bytes in base64 (what a REST request
carries). The output: reply, answer (a question's boxed answer), verdict and p_positive (judge
rows). The weights and processor are the model's artifact `policy`, the folder the run saved;
predictions run on the transformers engine on the first GPU, else the CPU.
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema
from PIL import Image, ImageDraw, UnidentifiedImageError

from spark_vl.config import load_config, load_model_config
from spark_vl.evaluate.requests import OUTPUT_COLUMNS, request_prompt, respond
from spark_vl.models import load_processor
from spark_vl.prompts import Templates
from spark_vl.rollout import Engines

POLICY_ARTIFACT = "policy"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "question"),
                   ColSpec("string", "answer", required=False), ColSpec("string", "answer_a", required=False),
                   ColSpec("string", "answer_b", required=False)]),
    outputs=Schema([ColSpec("string", "reply"), ColSpec("string", "answer", required=False),
                    ColSpec("string", "verdict", required=False), ColSpec("double", "p_positive", required=False)]))
# What predict imports, pinned to this environment's versions (spark-vl itself: its own install).
REQUIREMENTS = ("mlflow", "torch", "torchvision", "transformers", "qwen-vl-utils", "accelerate", "peft", "pydantic",
                "math-verify", "pillow", "pandas", "pyyaml")


def requirements() -> list[str]:
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def example_image() -> str:
    """The input example's image, a PNG in base64: a red disc on white, like the built-in tasks."""
    picture = Image.new("RGB", (112, 112), (255, 255, 255))
    ImageDraw.Draw(picture).ellipse((36, 36, 76, 76), fill=(220, 40, 40))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class RegisteredPolicy(PythonModel):
    """Answers and judges rows with the policy in the model's `policy` artifact, as it was trained
    (its config's templates, instruction and pixel bounds)."""

    def load_context(self, context) -> None:
        policy = Path(context.artifacts[POLICY_ARTIFACT])
        self.config = load_model_config(policy, ["rollout.engine=hf"]) or load_config(None, ["rollout.engine=hf"])
        self.templates = Templates.load(self.config.spark.templates)
        self.work = Path(tempfile.mkdtemp(prefix="spark-vl-model-"))
        processor = load_processor(policy, self.config.model.min_pixels, self.config.model.max_pixels)
        self.engine = Engines(self.config, processor, self.work).open(policy)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        prompts = []
        for number, row in enumerate(rows):
            row = {key: value for key, value in row.items() if isinstance(value, str) or not pd.isna(value)}
            try:
                prompts.append(request_prompt(row, f"row{number}", [self._image_file(row, number)], self.config,
                                              self.templates))
            except ValueError as error:
                raise MlflowException(f"row {number}: {error}", INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(respond(self.engine, prompts, self.config), columns=list(OUTPUT_COLUMNS))

    def _image_file(self, row: dict, number: int) -> str:
        """The row's image as a local file: its path, or its base64 bytes written to one."""
        image = str(row.get("image") or "")
        try:
            if image and Path(image).is_file():
                return image
        except OSError:  # base64 text is no file name
            pass
        try:
            data = base64.b64decode(image.split(",", 1)[-1], validate=True)  # a data URI's prefix too
            picture = Image.open(io.BytesIO(data))
            picture.load()
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise ValueError("image is neither an existing file nor an image's bytes in base64") from None
        path = self.work / f"row{number}.{(picture.format or 'png').lower()}"
        path.write_bytes(data)
        return str(path)


def save_policy_model(policy_dir: Path, path: Path) -> Path:
    """`policy_dir` (a saved policy folder) as an MLflow Model folder at `path`."""
    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(Path(__file__).with_name("served_model.py")),
        artifacts={POLICY_ARTIFACT: str(policy_dir)}, signature=SIGNATURE, pip_requirements=requirements(),
        input_example=pd.DataFrame([{"image": example_image(), "question": "What colour is the shape?"}]))
    return path


def policy_folder(model_dir: Path) -> Path:
    """The policy's weights folder in a downloaded registry version: the `policy` artifact of an
    MLflow Model, or the folder itself (versions registered as a plain folder)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return model_dir
    flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
    return model_dir / flavor["artifacts"][POLICY_ARTIFACT]["path"]
