"""The README, the docs site's pages and the chart's README say only what is true: the README is
short and starts with the two commands, its links resolve, every config key, chart value and
CLI command they show exists, and no page or code comment tells history.

(The blocks marked runnable are run against a stack in ``test_runnable_blocks.py``; the metrics
the pages name are checked against a live scrape in ``tests/launch/test_monitoring_e2e.py``;
``mkdocs build --strict`` in ``make test`` checks the site's own links and anchors.)
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.utils import ROOT, commands, doc_pages, fenced_blocks

README = ROOT / "README.md"
CONFIG_SECTIONS = ("model", "engine", "multimodal", "deployment", "server", "limits", "access",
                   "tools", "alerts")
# ------------------------------------------------------------------------------ README
def test_readme_is_short_and_starts_with_make_serve_and_make_test():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    lang, body, _ = fenced_blocks(text)[0]
    assert lang == "bash"
    assert [c.split("#")[0].strip() for c in commands(body)] == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs the second


@pytest.mark.parametrize("page", [README, ROOT / "helm" / "qwen-vl-serving" / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """The pages outside the site (mkdocs checks its own) link only to files that exist, and to
    headings those pages have."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), target
        if anchor:
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            assert anchor in slugs, target


# ------------------------------------------------------------------------------ config keys
def _config_key_exists(key: str) -> bool:
    from pydantic import BaseModel

    from engine.config import ServingConfig
    from launch.generate.config_reference import _map_of_models, _model_in

    model: type[BaseModel] | None = ServingConfig
    parts = key.split(".")
    i = 0
    while i < len(parts):
        if model is None or parts[i] not in model.model_fields:
            return False
        info = model.model_fields[parts[i]]
        entry = _map_of_models(info.annotation)
        if entry is not None and i + 2 < len(parts):
            model, i = entry, i + 2  # access.quotas.<name>.field
            continue
        model = _model_in(info.annotation)
        i += 1
    return True


def _chart_value_exists(key: str) -> bool:
    from launch.generate.chart import SCHEMA_PATH

    node = json.loads(SCHEMA_PATH.read_text())
    for part in key.replace("[]", "").split("."):
        if node.get("type") == "array":
            node = node.get("items", {})
        props = node.get("properties", {})
        if part not in props:
            return bool(node.get("additionalProperties")) or "$ref" in node
        node = props[part]
    return True


SPAN = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"(?<![\w/.$-])([a-z][A-Za-z_]*(?:\[\])?(?:\.[A-Za-z0-9_<>\[\]]+)+)")
# Named on purpose although no key: the loader's message for a misspelt key, shown as an example.
MADE_UP = {"engine.max_model_lenn"}
NOT_KEYS = {"py", "yaml", "yml", "md", "json", "txt", "tpl", "jinja", "lock", "png", "sh",
            "toml", "io", "com", "org", "tmpl", "local"}


def named_keys(text: str) -> set[str]:
    """Dotted names in code spans that start like a config key or a chart value."""
    from launch.generate.chart import SCHEMA_PATH

    chart_top = set(json.loads(SCHEMA_PATH.read_text())["properties"]) - {"serving"}
    found = set()
    for span in SPAN.findall(text):
        for key in DOTTED.findall(span):
            key = key.rstrip(".").removeprefix("serving.")
            if key.split(".")[-1] in NOT_KEYS or "<name>" in key.split(".")[-1] or \
                    key in MADE_UP or (ROOT / key.replace(".", "/")).with_suffix(".py").exists():
                continue  # a file, an example of a wrong key, or a module (python -m ...)
            if key.split(".")[0].split("[")[0] in CONFIG_SECTIONS + tuple(chart_top):
                found.add(key)
    return found


def test_every_config_key_and_chart_value_named_exists():
    from launch.generate.chart import SCHEMA_PATH

    chart_top = set(json.loads(SCHEMA_PATH.read_text())["properties"])
    named, missing = set(), []
    for page in current_pages():
        for key in named_keys(page.read_text()):
            named.add(key)
            top = key.split(".")[0].split("[")[0]
            ok = (top in CONFIG_SECTIONS and _config_key_exists(key.replace("<name>", "x"))) or \
                (top in chart_top and _chart_value_exists(key))
            if not ok:
                missing.append(f"{page.relative_to(ROOT)}: {key}")
    assert len(named) > 60  # the scan finds the keys the pages are full of
    assert missing == []


def test_the_key_checks_catch_a_made_up_key():
    assert not _config_key_exists("engine.max_model_lenn")
    assert not _config_key_exists("limits.url.max_hops")
    assert _config_key_exists("access.quotas.x.tokens_per_minute")
    assert not _chart_value_exists("metrics.serviceMonitor.enabledd")
    assert _chart_value_exists("workerGroups[].maxReplicas")
    assert named_keys("see `engine.max_model_len`, `launch/api/access.py`, `server.port`/x") == \
        {"engine.max_model_len", "server.port"}


# ------------------------------------------------------------------------------ commands
PLACEHOLDERS = {"FILE": "configs/default.yaml", "F": "configs/default.yaml", "my.yaml":
                "configs/default.yaml", "HOST:PORT": "10.0.0.1:6379", "HOST": "h",
                "$KEY": "k", '"$API_KEY"': "k", "DIR": "/tmp/out", "S": "60", "WxH": "640x480"}


def current_pages() -> list[Path]:
    """The pages that tell what to set and run: all but the dated benchmark files, which record
    the settings and commands of their day (a later change may rename or remove them)."""
    return [p for p in doc_pages() if not re.fullmatch(r"\d{4}-\d\d-\d\d-.*\.md", p.name)]


def _cli_commands() -> list[tuple[str, list[str]]]:
    out = []
    for page in current_pages():
        for lang, body, _ in fenced_blocks(page.read_text()):
            if lang not in ("bash", "sh", "console", "", "text"):
                continue
            if lang in ("", "text"):  # diagrams and output: only the lines with a prompt
                body = "\n".join(line for line in re.sub(r"\\\n\s*", " ", body).splitlines()
                                 if line.startswith("$ "))
            for line in commands(body):
                line = line.split("  #")[0].strip()
                for prog, rest in [("qwen-vl-loadtest", r"(?:\.venv/bin/)?qwen-vl-loadtest "),
                                   ("loadtest", r"python -m loadtest "),
                                   ("qwen-vl", r"(?:\.venv/bin/)?qwen-vl ")]:
                    m = re.match(rest, line)
                    if m:
                        try:
                            words = shlex.split(line[m.end():])
                        except ValueError as err:
                            pytest.fail(f"{page.relative_to(ROOT)}: {line}: {err}")
                        argv = [PLACEHOLDERS.get(a, a) for a in words]
                        out.append((f"{page.relative_to(ROOT)}: {line}", argv))
                        break
    return out


def test_every_cli_command_shown_parses():
    """Every `qwen-vl ...` and `qwen-vl-loadtest ...` line in a code block is accepted by its
    parser (a renamed flag or subcommand fails here)."""
    from launch.cli import build_parser as qwen_vl
    from loadtest.cli import build_parser as loadtest

    shown = _cli_commands()
    # the scan finds the commands of the pages that show most of them
    assert len(shown) > 15 and {w.split(":")[0] for w, _ in shown} >= {
        "README.md", "docs/load-testing.md", "docs/operations.md"}
    for where, argv in shown:
        parser = qwen_vl() if argv and argv[0] in qwen_vl()._subparsers._group_actions[0].choices \
            else loadtest()
        try:
            parser.parse_args(argv)
        except (SystemExit, ValueError):
            pytest.fail(f"does not parse: {where}")


# ------------------------------------------------------------------------------ history
HISTORY = re.compile(r"earlier session|previous session|this session|tried and not kept|"
                     r"not kept|no longer|used to be|was changed|before this change|"
                     r"in an earlier|we now|is now the", re.I)


def _comments(path: Path) -> str:
    """The comments and docstrings of a source file (its strings are data, not prose)."""
    text = path.read_text()
    if path.suffix == ".py":
        return "\n".join(re.findall(r"#.*$", text, re.M) + re.findall(r'"""(.*?)"""', text, re.S))
    return "\n".join(re.findall(r"#.*$", text, re.M))


def test_no_page_or_comment_tells_history():
    sources = [p for d in ("engine", "launch", "loadtest", "tests", "configs", "helm")
               for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml", ".tpl", ".txt")
               and "crds" not in p.parts and p.name != "test_pages.py"]
    sources += [ROOT / "Makefile", ROOT / "Dockerfile", ROOT / ".ci" / "run", ROOT / "mkdocs.yml"]
    told = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in doc_pages()
            for m in HISTORY.finditer(p.read_text())]
    told += [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources
             for m in HISTORY.finditer(_comments(p))]
    assert told == []


def test_every_config_shown_in_yaml_loads():
    """A YAML block whose keys are config sections is a config the loader accepts (a block
    without `model` is a fragment: it is checked on top of the default config)."""
    import yaml

    from engine.config import parse_config
    from tests.utils import CONFIGS

    shown = 0
    for page in doc_pages():
        for lang, body, _ in fenced_blocks(page.read_text()):
            data = yaml.safe_load(body) if lang in ("yaml", "yml") else None
            if not isinstance(data, dict) or not set(data) <= set(CONFIG_SECTIONS) or not data:
                continue
            base = yaml.safe_load((CONFIGS / "default.yaml").read_text())
            for section, values in data.items():
                base[section] = {**base.get(section, {}), **values}
            parse_config(base)
            shown += 1
    assert shown >= 1


def plan_transcripts() -> list[tuple[str, list[str], str]]:
    """(page, the plan command's arguments, the output shown) for every ``$ qwen-vl plan``
    transcript in the docs (a command, continued by ``\\`` lines, then its output)."""
    out = []
    for page in doc_pages():
        for _, body, _ in fenced_blocks(page.read_text()):
            if not body.startswith("$ qwen-vl plan "):
                continue
            lines = body.splitlines()
            n = 1
            while lines[n - 1].endswith("\\"):
                n += 1
            command = " ".join(line.rstrip("\\").strip() for line in lines[:n])
            out.append((page.name, shlex.split(command)[3:], "\n".join(lines[n:]) + "\n"))
    return out


@pytest.mark.parametrize("page, args, shown", plan_transcripts(),
                         ids=[f"{p}:{' '.join(a[:4])}" for p, a, _ in plan_transcripts()])
def test_plan_transcripts_are_what_the_cli_prints(page, args, shown):
    """A `qwen-vl plan` transcript on a page is the CLI's output for its command, line for
    line (a device named: nothing of this machine enters the plan)."""
    from tests.utils import run_cli

    assert "--device" in args, "a transcript without --device depends on the machine"
    r = run_cli("plan", *args, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == shown, f"{page}: the transcript differs from the CLI's output"


def test_the_docs_show_plan_transcripts():
    assert len(plan_transcripts()) == 2  # capacity-planning.md's two worked examples
