"""The code's layers (pyproject.toml, [tool.importlinter]) and its single places per concept."""

import subprocess
import sys
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parent.parent


def test_import_layers_hold():
    """`lint-imports`: no module imports a layer above its own or a sibling it must not, not even
    inside a function (a lazy import hides a circle, it does not break it)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_engine_the_config_offers_has_an_entry_in_the_factory():
    from spark_vl.config import RolloutConfig
    from spark_vl.rollout import ENGINES

    assert set(get_args(RolloutConfig.model_fields["engine"].annotation)) == set(ENGINES)


def test_the_kinds_table_names_every_kind_once_with_its_template_pool():
    from spark_vl.prompts import Templates
    from spark_vl.records import JUDGE_KINDS, KINDS, REFLECT_KINDS, Kind

    assert get_args(Kind) == tuple(KINDS)
    assert JUDGE_KINDS == ("judge_pointwise", "judge_pairwise")
    assert REFLECT_KINDS == ("reflect_cot", "reflect_answer")
    templates = Templates.load("default")
    for kind, spec in KINDS.items():
        assert spec.template is None or templates.pool(kind), kind
