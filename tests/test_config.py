from pathlib import Path

import pytest

from spark_vl.config import ConfigError, RunConfig, load_config

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def test_tiny_yaml_is_the_embedded_default():
    cfg = load_config(TINY)
    assert cfg.model.path is None
    assert cfg.model.tiny.hidden_size // cfg.model.tiny.num_heads == 32
    assert cfg.rollout.group_size == 8


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_dotted_override_is_typed():
    cfg = load_config(TINY, ["train.lr=1e-5", "rollout.group_size=4", "data.builtin.families=[colour]"])
    assert cfg.train.lr == pytest.approx(1e-5)
    assert cfg.rollout.group_size == 4
    assert cfg.data.builtin.families == ["colour"]


def test_unknown_key_names_key_file_and_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "train.learning_rate" in message
    assert str(path) in message
    assert "lr" in message and "micro_batch_size" in message


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  group_size: eight\n")
    with pytest.raises(ConfigError, match=r"rollout\.group_size"):
        load_config(path)


def test_impossible_value_is_refused():
    with pytest.raises(ConfigError, match=r"rollout\.group_size.*greater than or equal to 2"):
        load_config(TINY, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match=r"model\.tiny.*multiple of num_heads"):
        load_config(TINY, ["model.tiny.hidden_size=130"])


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"rollout\.engine.*'hf' or 'vllm'"):
        load_config(None, ["rollout.engine=sglang"])


def test_unknown_section_and_bad_override():
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'.*orchestration"):
        load_config(None, ["trainer.lr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_missing_file_and_digest_stability(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    assert RunConfig().digest() == RunConfig().digest()
    assert RunConfig().digest() != load_config(None, ["train.lr=1e-5"]).digest()


def test_a_triggered_run_may_not_name_programs_or_hosts_its_deployment_does_not():
    from spark_vl.config import check_triggered

    deployed = load_config(TINY)
    check_triggered(load_config(TINY, ["train.lr=1e-5", "data.builtin.n_train=10"]), deployed, [])  # data: fine
    program = load_config(TINY, ["rollout.vllm.python=/bin/sh", "rollout.vllm.env={LD_PRELOAD: x.so}"])
    with pytest.raises(ConfigError, match=r"may not set rollout\.vllm\.python, rollout\.vllm\.env .*allow_keys"):
        check_triggered(program, deployed, [])
    with pytest.raises(ConfigError, match=r"may not set rollout\.vllm\.env \("):
        check_triggered(program, deployed, ["rollout.vllm.python"])
    check_triggered(program, deployed, ["rollout.vllm"])  # the deployment allows the section
    check_triggered(program, program, [])  # what the deployment itself sets is no change
    with pytest.raises(ConfigError, match="train.hostfile"):
        check_triggered(load_config(TINY, ["train.hostfile=/etc/hosts"]), deployed, [])
    with pytest.raises(ConfigError, match="reward.function"):  # code the worker would import
        check_triggered(load_config(TINY, ["reward.function=evil.py:run"]), deployed, [])


def test_a_triggered_run_registers_under_its_deployments_model_and_its_held_out_set_decides_the_champion():
    from spark_vl.config import check_triggered, held_out_changes

    deployed = load_config(TINY)
    elsewhere = load_config(TINY, ["tracking.registered_model=someone-elses-model"])
    with pytest.raises(ConfigError, match=r"registers its policy as 'spark-vl-tiny'.*someone-elses-model.*allow_keys"):
        check_triggered(elsewhere, deployed, [])
    check_triggered(elsewhere, deployed, ["tracking.registered_model"])  # the deployment allows it
    assert held_out_changes(load_config(TINY, ["train.lr=1e-5", "eval.n_judge=8"]), deployed) == []
    easy = load_config(TINY, ["data.eval_path=easy.jsonl", "data.builtin.difficulty=2", "eval.n_task=4"])
    assert held_out_changes(easy, deployed) == ["data.eval_path", "data.builtin", "eval.n_task"]


def test_changes_name_each_leaf_that_differs_and_nothing_a_default_spells_out():
    from spark_vl.config import changes

    tiny = load_config(TINY)
    assert changes(tiny, load_config(TINY, ["train.lr=0.0005", "rollout.group_size=8"])) == {
        "train.lr": (0.00025, 0.0005)}
    assert changes(tiny, load_config(TINY, ["rollout.kind_group_size={judge_pointwise: 16}",
                                            "spark.enabled=false"])) == {
        "rollout.kind_group_size.judge_pointwise": (None, 16), "spark.enabled": (True, False)}
    assert changes(tiny, tiny) == {}


def test_the_config_reference_is_current():
    from spark_vl.config import reference_markdown

    docs = Path(__file__).parent.parent / "docs" / "config.md"
    assert docs.read_text() == reference_markdown() + "\n", "regenerate: python -m spark_vl.config > docs/config.md"


def test_every_config_key_and_section_is_described():
    """docs/config.md is generated from the schema: a key without a description is a hole in it."""
    from pydantic import BaseModel

    from spark_vl.config import RunConfig

    missing = []

    def walk(section: type[BaseModel], prefix: str) -> None:
        if section is not RunConfig and not section.__doc__:
            missing.append(f"section {prefix.rstrip('.')}")
        for name, field in section.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation, f"{prefix}{name}.")
            elif not field.description:
                missing.append(prefix + name)

    walk(RunConfig, "")
    assert not missing, "add a description (Field(..., description=...)) to: " + ", ".join(missing)
