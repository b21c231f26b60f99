"""launch.generate.config_reference: the configuration page's reference is the config model's, and
generated blocks are replaced in place."""

import pytest

from launch.generate import config_reference, generated_blocks
from engine.config import parse_config


def test_the_configuration_page_is_current():
    """docs/configuration.md carries what `python -m launch.generate.config_reference` writes."""
    page = config_reference.PAGE.read_text()
    assert generated_blocks.block(page, config_reference.BLOCK) == \
        config_reference.reference().strip("\n") + "\n"


def test_every_field_has_a_row_with_type_default_and_description():
    text = config_reference.reference()
    for row in ["| `engine.max_model_len` | int | `4096` | Context length (prompt + output). |",
                "| `model.source` | str | required |",
                "| `deployment.autoscaling` | Autoscaling or null | `null` |",
                "| `deployment.autoscaling.max_replicas` | int | `1` |",
                "| `limits.url.schemes` | list of `https` \\| `http` \\| `data` | "
                "`[\"https\", \"data\"]` |",
                "| `access.quotas.<name>.tokens_per_minute` | int or null | `null` |"]:
        assert row in text, row
    assert "### `alerts`" in text and "|  |" not in text


def test_every_listed_key_is_accepted_by_the_loader():
    """A config that sets each listed leaf key to its own default loads (the keys are real)."""
    import json

    base = {"model": {"source": "embedded:qwen2-vl-tiny", "served_name": "m"}}
    for line in config_reference.reference().splitlines():
        if not line.startswith("| `") or "required" in line:
            continue
        key, _, default = (c.strip() for c in line.split(" | ")[:3])
        key = key.strip("|` ").replace("<name>", "team")
        if not default.startswith("`") or key.startswith("access.quotas") \
                or key.startswith("access.keys") or default == "`null`":
            continue
        data = json.loads(json.dumps(base))
        node = data
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(default.strip("`"))
        parse_config(data)  # raises ConfigError naming the key if it were unknown


def test_generated_block_round_trip(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\nprose\n\n" + generated_blocks.markers("x") + "\nmore prose\n")
    generated_blocks.replace(page, "x", "| a |\n")
    generated_blocks.replace(page, "x", "| b |\n")
    text = page.read_text()
    assert generated_blocks.block(text, "x") == "| b |\n"
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith("\nmore prose\n")
    with pytest.raises(ValueError, match="no generated block 'y'"):
        generated_blocks.block(text, "y")


def test_a_generators_command(tmp_path, capsys):
    """`python -m launch.generate.<module> [write|print]`, as every block generator runs it:
    write (the default) fills the page's block, print shows the body, anything else is refused
    with the usage."""
    page = tmp_path / "page.md"
    page.write_text("intro\n" + generated_blocks.markers("b") + "outro\n")
    assert generated_blocks.command(["print"], "m", page, "b", lambda: "body\n") == 0
    assert capsys.readouterr().out == "body\n"
    assert generated_blocks.command([], "m", page, "b", lambda: "body\n") == 0
    assert generated_blocks.block(page.read_text(), "b") == "body\n"
    assert generated_blocks.command(["bogus"], "m", page, "b", lambda: "x") == 2
    assert capsys.readouterr().err == "usage: python -m m [write|print]\n"
