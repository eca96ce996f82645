import json

from typer.testing import CliRunner

from spark_vl.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ["init-tiny", "make-data", "validate-data", "run"]:
        assert command in result.output


def test_init_tiny_and_make_data(tmp_path):
    result = runner.invoke(app, ["init-tiny", str(tmp_path / "m"), "--family", "qwen2_vl"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2_vl"
    result = runner.invoke(app, ["make-data", str(tmp_path / "d"), "--families", "size,arithmetic",
                                 "--n-train", "6", "--n-eval", "4", "--difficulty", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "d" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["family"] for r in rows} == {"size", "arithmetic"}
    assert {r["difficulty"] for r in rows} == {2}


def test_bad_config_value_exits_with_named_key(tmp_path):
    result = runner.invoke(app, ["init-tiny", str(tmp_path / "m"), "--family", "llama"])
    assert result.exit_code == 2
    assert "model.tiny.family" in result.output
