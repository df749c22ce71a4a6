import pytest
import yaml

from w2s.cli import main
from w2s.config import ConfigError, describe, field_docs, load_config, save_config
from w2s.settings import Settings
from w2s.world.config import WorldConfig


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("world:\n  seed: 5\n  weak:\n    steps: 7\n")
    settings = load_config(Settings, path, ["world.weak.lr=0.5", "world.num_test=9", "world.strong.lr=1"])
    assert settings.world.seed == 5
    assert settings.world.weak.steps == 7
    assert settings.world.weak.lr == 0.5
    assert settings.world.strong.lr == 1.0 and isinstance(settings.world.strong.lr, float)
    assert settings.world.num_test == 9
    assert settings.world.strong.num_layers == 2  # untouched default of a nested section


def test_unknown_key_is_refused_with_its_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("world:\n  sead: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*world.*sead"):
        load_config(Settings, path)


def test_wrong_type_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"world.seed.*expected int"):
        load_config(Settings, None, ["world.seed=abc"])


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Settings, None, ["world.seed"])


def test_resolved_config_round_trips(tmp_path):
    settings = load_config(Settings, None, ["world.seed=11"])
    path = save_config(settings, tmp_path)
    assert load_config(Settings, path) == settings
    assert yaml.safe_load(path.read_text())["world"]["seed"] == 11


def test_every_field_has_a_docstring_for_help():
    docs = field_docs(WorldConfig)
    assert "seed" in docs and "tokenizer" in docs["seed"]
    rows = describe(Settings)
    assert "world.weak.steps" in {key for key, _, _ in rows}
    assert all(help_ for _, _, help_ in rows), [key for key, _, help_ in rows if not help_]


def test_cli_help_lists_keys(capsys):
    with pytest.raises(SystemExit):
        main(["world", "--help"])
    assert "world.seed" in capsys.readouterr().out


def test_cli_reports_bad_override(capsys):
    assert main(["world", "world.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_every_shipped_config_loads():
    from pathlib import Path

    from w2s.science.real import ScienceRealConfig
    from w2s.science.tiny import ScienceConfig

    own = {"science.yaml": ScienceConfig, "science_real.yaml": ScienceRealConfig}  # the science drivers' configs
    configs = sorted(Path("configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:  # every other config is a Settings file
        load_config(own.get(path.name, Settings), path)


def test_a_task_mapping_is_taken_whole_and_every_shipped_task_takes_its_arguments(tmp_path):
    """A config's task with its own `_component_` is not merged with the tiny world's task arguments (which would
    hand LengthTask a `path` it does not take), and each shipped config's task accepts the arguments it names."""
    import inspect
    from pathlib import Path

    from w2s.task import TASKS

    text = "eval:\n  task: {_component_: w2s.eval.tasks.LengthTask, prompts: p.jsonl}\n"
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(Settings, tmp_path / "c.yaml").eval.task == {
        "_component_": "w2s.eval.tasks.LengthTask",
        "prompts": "p.jsonl",
    }
    for path in sorted(
        set(Path("configs").glob("*.yaml")) - {Path("configs/science.yaml"), Path("configs/science_real.yaml")}
    ):
        task = dict(load_config(Settings, path).eval.task)
        cls = TASKS.get(task.pop("_component_"), f"{path}: eval.task")
        inspect.signature(cls).bind(**task)  # TypeError names the argument a class does not take
