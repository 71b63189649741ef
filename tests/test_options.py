"""One declaration per run option (focusml.core.options): the CLI, the MLproject, YAML configs and the checks
are derived from it, so a new option is one `Option` plus its use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from focusml import FocusmlError
from focusml.core.options import RUN_OPTIONS, Option, option

# Run in a fresh interpreter: the option is declared before anything reads the declarations.
THROWAWAY = textwrap.dedent("""
    import json, sys
    import focusml.core.options as o

    o.RUN_OPTIONS = (*o.RUN_OPTIONS, o.Option("throwaway", int, 3, "a throwaway option", low=1,
                                              mlproject=o.EVERY_METHOD))
    import yaml
    from click.testing import CliRunner

    from focusml import FocusmlError
    from focusml.cli import cli
    from focusml.cli.train import config_from_options
    from focusml.generate.mlproject import render

    out = {"help": CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output}
    out["mlproject"] = yaml.safe_load(render())["entry_points"]["pas"]
    config = config_from_options({"config_file": sys.argv[1], "method": "pas"}).validate()
    out["yaml"], out["param"] = config.throwaway, config.to_params()["throwaway"]
    out["flag"] = config_from_options({"config_file": sys.argv[1], "throwaway": 7}).validate().throwaway
    try:
        config_from_options({"throwaway": "0"}).validate()
    except FocusmlError as e:
        out["refused"] = str(e)
    print(json.dumps(out))
""")


def test_a_new_option_is_one_declaration_found_in_the_cli_the_mlproject_and_yaml(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("throwaway: 5\nepochs: 1\n")
    done = subprocess.run([sys.executable, "-c", THROWAWAY, str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "--throwaway INTEGER" in out["help"] and "a throwaway option (default 3)" in out["help"]
    assert out["mlproject"]["parameters"]["throwaway"] == {"type": "string", "default": 3}
    assert "--throwaway {throwaway}" in out["mlproject"]["command"]
    assert (out["yaml"], out["param"], out["flag"]) == (5, 5, 7)
    assert out["refused"] == "--throwaway is 0; it must be a whole number ≥ 1."


def test_every_option_the_mlproject_shows_is_an_entry_point_parameter():
    from focusml.generate.mlproject import render

    entry = yaml.safe_load(render())["entry_points"]["baseline"]
    shown = [o.name for o in RUN_OPTIONS if o.mlproject == "every method"]
    assert "cam_every" in shown and list(entry["parameters"]) == shown
    assert all(f"--{name.replace('_', '-')} {{{name}}}" in entry["command"] for name in shown)


@pytest.mark.parametrize("name, value, message", [
    ("epochs", 0, "--epochs is 0; it must be a whole number ≥ 1."),
    ("lr", 0.0, "--lr is 0.0; it must be a finite number > 0."),
    ("lr", float("inf"), "--lr is inf; it must be a finite number > 0."),
    ("seed", -1, "--seed is -1; give a whole number from 0 to 4294967295."),
    ("lr_schedule", "warm", "--lr-schedule is 'warm'; choose one of cosine, constant."),
    ("image_size", "abc", "--image-size is 'abc'; give a whole number."),
    ("scale", 1.0, "--scale is 1.0; it must be a finite number ≥ 0 and < 1."),  # mask augmentation's: declared alike
])
def test_a_declaration_refuses_what_it_says(name, value, message):
    with pytest.raises(FocusmlError) as e:
        option(name).check(value)
    assert str(e.value) == message


def test_an_optional_value_may_be_absent_and_is_typed_when_given():
    assert option("train_size").check(None) is None and option("train_size").check("12") == 12
    assert Option("x", float, 1.0, "x").check("3e-3") == 0.003  # YAML 1.1 reads 3e-3 as text
