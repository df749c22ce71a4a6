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


def test_a_bad_value_is_blamed_on_where_it_was_set_in_a_users_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  batch_tokens: lots\n")
    with pytest.raises(ConfigError) as in_file:
        load_config(Settings, path)
    assert str(in_file.value) == f"{path}: cache.batch_tokens: expected an integer or 'auto', got 'lots'"
    with pytest.raises(ConfigError) as on_line:  # the file's own value is fine: the override is to blame
        load_config(Settings, path, ["cache.batch_tokens=0"])
    assert str(on_line.value) == "cache.batch_tokens: must be auto or at least 1, got 0 (set on the command line)"
    with pytest.raises(ConfigError) as other_key:  # an override elsewhere does not take the file's blame
        load_config(Settings, path, ["world.seed=3"])
    assert str(other_key.value).startswith(f"{path}: cache.batch_tokens: ")
    for typo in ("cache.batch_token=100", "cahce.out_dir=x"):  # a misspelt key typed on the command line
        with pytest.raises(ConfigError) as unknown:
            load_config(Settings, None, [typo if typo.startswith("cache.") else f"cache.{typo}"])
        assert "unknown key(s)" in str(unknown.value) and str(unknown.value).endswith("(set on the command line)")


def test_a_config_that_is_not_yaml_is_refused_in_one_line_naming_where(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cache:\n  out_dir: [a\n  max_len: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Settings, path)
    assert str(err.value) == (
        f"{path}: not valid YAML: line 3, column 10: expected ',' or ']', but got ':' (while parsing a flow sequence)"
    )


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
        bound = inspect.signature(cls).bind(**task)  # TypeError names the argument a class does not take
        assert not bound.arguments.get("flat"), f"{path}: eval.task takes keys of the old flat source layout"


def test_one_data_source_section_for_the_cache_generate_export_and_tasks(tmp_path):
    """cache.data, generate.prompts, export.data and a task's `prompts` are one DataSource: a mapping of its fields
    or a plain path; each section keeps its own defaults for the fields a partial mapping leaves out."""
    from w2s.eval.tasks import LengthTask
    from w2s.source import DataSource

    text = (
        "cache:\n  data: {path: rows.parquet, messages_field: chosen}\n"
        "generate:\n  prompts: p.jsonl\n"
        "export:\n  data: {split: validation}\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    settings = load_config(Settings, tmp_path / "c.yaml")
    assert settings.cache.data == DataSource("rows.parquet", messages_field="chosen")
    assert settings.generate.prompts == DataSource("p.jsonl")
    xsum = settings.export.data  # export's own defaults (XSUM's columns) under a partial mapping
    assert (xsum.path, xsum.split, xsum.prompt_field, xsum.response_field, xsum.id_field) == (
        "EdinburghNLP/xsum",
        "validation",
        "document",
        "summary",
        "id",
    )
    # a path given whole (in the file or an earlier override) and one of its fields overridden after it
    both = load_config(Settings, tmp_path / "c.yaml", ["generate.prompts.id_field=id", "cache.data=r.jsonl"])
    assert both.generate.prompts == DataSource("p.jsonl", id_field="id")
    assert load_config(Settings, None, ["cache.data=r.jsonl", "cache.data.split=dev"]).cache.data == DataSource(
        "r.jsonl", split="dev"
    )
    task = LengthTask({"path": "q.jsonl", "id_field": "id", "reference_field": "response"})
    assert task.source == DataSource("q.jsonl", id_field="id", reference_field="response")
    assert LengthTask("q.jsonl").source == DataSource("q.jsonl")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cache.dataset=x.jsonl", "cache.dataset moved to cache.data.path"),
        ("cache.messages_field=chosen", "cache.messages_field moved to cache.data.messages_field"),
        ("generate.split=eval", "generate.split moved to generate.prompts.split"),
        ("export.document_field=doc", "export.document_field moved to export.data.prompt_field"),
        ("export.dataset=x", "export.dataset moved to export.data.path"),
        ("cache.data.path=", "cache.data.path: must name a file"),
        ("generate.prompts.id_field=", "generate.prompts.id_field: must not be empty"),
        ("cache.data.bogus=1", "cache.data: unknown key"),
    ],
)
def test_keys_of_the_flat_layout_are_refused_naming_where_they_moved(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(Settings, None, [override])


def test_a_task_given_the_flat_source_keys_is_refused_naming_their_new_place():
    from w2s.eval.tasks import LengthTask, RewardModelTask

    with pytest.raises(ConfigError, match=r"eval\.task\.split moved to eval\.task\.prompts\.split"):
        LengthTask("p.jsonl", split="eval")
    with pytest.raises(ConfigError, match=r"eval\.task\.prompt_field moved to eval\.task\.prompts\.prompt_field"):
        RewardModelTask("p.jsonl", reward_model="r", prompt_field="instruction")
    with pytest.raises(ConfigError, match=r"eval\.task\.prompts: must be a path or a mapping"):
        LengthTask(["p.jsonl"])
