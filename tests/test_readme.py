"""The README's code runs when pasted: its short tour and its actor example are drivers."""

from __future__ import annotations

import re

import pytest
from backend import REPO, run_driver

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    source = BLOCKS[index]
    if "import zray as ray" not in source:
        # A follow-on block, as a reader pastes it after the tour's import.
        source = "import zray as ray\n" + source
    proc = run_driver(source, tmp_path, timeout=120, name=f"readme_{index}.py")
    assert proc.returncode == 0, f"README block {index} failed:\n{proc.stdout}\n{proc.stderr}"
