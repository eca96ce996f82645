"""`python -m spark_vl.cli`: the `spark-vl` command."""

from spark_vl.cli import app

app()
