"""The README's generated parts match the code: metric tables = the registry, test command = CI's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import nclens.core.metrics  # noqa: F401 - registers every metric
from nclens.core.metrics.registry import KINDS, metric_table_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _block(text: str, kind: str) -> str:
    m = re.search(rf"<!-- metrics:{kind}\b[^>]*-->\n(.*?)<!-- /metrics -->", text, flags=re.S)
    assert m is not None, f"README.md has no <!-- metrics:{kind} --> block"
    return m.group(1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_readme_metric_tables_are_the_registry(kind: str) -> None:
    assert _block(README.read_text(encoding="utf-8"), kind) == metric_table_markdown(kind), (
        f"README.md's {kind} metric table differs from the registry: paste the output of "
        f"`nclens metrics --kind {kind} --format markdown` between the markers"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    m = re.search(r"```bash\n(pip install torch==[^\n]*pytest)\n```", readme)
    assert m is not None, "README.md's quick start has no one-line test command ending in pytest"
    steps = [s.strip() for s in m.group(1).split("&&")]
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for step in steps:
        words = step.replace('"', "").split()
        assert any(all(w in line.replace('"', "") for w in words[1:]) and words[0] in line for line in ci_lines), (
            f"README step {step!r} is not in .ci/run"
        )
