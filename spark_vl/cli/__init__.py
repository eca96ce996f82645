"""`spark-vl` command line: the app (`app.py`) and its commands, one module per purpose."""

from spark_vl.cli import data, grading, model, run
from spark_vl.cli.app import app

__all__ = ["app", "data", "grading", "model", "run"]
