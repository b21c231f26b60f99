"""launch.generate.benchmark_index: every results file describes its machine, the index is current,
and the docs site lists every file."""

import pytest
import yaml

from launch.generate import generated_blocks
from launch.generate import benchmark_index
from tests.utils import ROOT


def test_every_results_file_states_its_machine_and_commands():
    runs = benchmark_index.runs()
    assert len(runs) >= 4
    for path, meta in runs:
        text = path.read_text()
        assert "```bash" in text, f"{path.name}: no command"
        assert "|---|" in text, f"{path.name}: no table"
        assert meta["cores"] and meta["memory"] and meta["isa"]


def test_the_index_is_current():
    text = benchmark_index.INDEX.read_text()
    assert generated_blocks.block(text, benchmark_index.BLOCK) == benchmark_index.index()


def test_the_site_navigation_lists_every_results_file():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]
    listed = {v for entry in nav for section in entry.values() if isinstance(section, list)
              for item in section for v in item.values()}
    for path, _ in benchmark_index.runs():
        assert f"benchmarks/{path.name}" in listed, path.name


def test_a_file_without_its_machine_is_refused(tmp_path):
    bad = tmp_path / "2026-01-02-run.md"
    bad.write_text("---\ntitle: t\ndate: 2026-01-02\nmachine_class: c\n---\n# t\n")
    with pytest.raises(ValueError, match="lacks cpu, isa, cores, memory, software, scenarios"):
        benchmark_index.front_matter(bad)
    bad.write_text("# no front matter\n")
    with pytest.raises(ValueError, match="no front matter"):
        benchmark_index.front_matter(bad)
    fields = {k: "x" for k in benchmark_index.REQUIRED} | {"date": "2026-01-03"}
    bad.write_text("---\n" + yaml.safe_dump(fields) + "---\n")
    with pytest.raises(ValueError, match="front matter's date"):
        benchmark_index.front_matter(bad)
