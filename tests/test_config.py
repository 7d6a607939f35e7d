import pytest

from vqcausal.config import Config, ConfigError, from_dict, load_config, parse_override, to_dict


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 4\n[data]\ndataset = "sprites"\n[transitions]\nimbalance = 10\n')
    config = load_config(path, ["transitions.imbalance=100", 'data.path="a b.npz"'])
    assert config.seed == 4
    assert config.data.dataset == "sprites" and config.data.path == "a b.npz"
    assert config.transitions.imbalance == 100.0 and isinstance(config.transitions.imbalance, float)
    assert load_config().data.dataset == "shapes3d"


def test_round_trip_through_dict():
    overrides = ['data.dataset="folder"', 'data.cyclic=["hue"]', "transitions.action_order=[1, 0]"]
    config = load_config(None, overrides)
    assert from_dict(Config, to_dict(config)) == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.colour=1", "unknown config key 'data.colour'"),
        ("seed=1.5", "'seed' wants int"),
        ("seed=true", "'seed' wants int"),
        ("transitions.imbalance=abc", "wants float, got str"),
        ("data=3", "'data' wants a table"),
        ("transitions.test_fraction=2.0", "test_fraction"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bare_strings_and_bad_files(tmp_path):
    assert parse_override("data.dataset=sprites") == (["data", "dataset"], "sprites")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
