"""`python -m spark_vl.config > docs/config.md`: the config reference."""

from spark_vl.config.reference import reference_markdown

print(reference_markdown())
