"""The type checker runs with the suite: mypy over zray (configuration in pyproject.toml).

Strict on the pure state machines; normal on the rest, except the modules the
configuration still lists as skipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRICT = {"zray.objstore.store", "zray.raylet.scheduler", "zray.gcs.actor_table", "zray.owner.*"}


def _mypy_config() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import pytest

        pytest.skip("tomllib is Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_mypy_passes():
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"mypy found errors:\n{r.stdout}{r.stderr}"


def test_pure_state_machines_are_checked_strictly():
    cfg = _mypy_config()
    strict = [o for o in cfg.get("overrides", []) if o.get("disallow_untyped_defs")
              and o.get("disallow_any_generics") and o.get("warn_return_any")]
    covered = {m for o in strict for m in o["module"]}
    assert STRICT <= covered, f"not strict: {STRICT - covered}"
    skipped = {m for o in cfg.get("overrides", []) if o.get("ignore_errors") for m in o["module"]}
    assert not skipped & covered


def test_package_ships_its_type_marker():
    assert (ROOT / "zray" / "py.typed").exists()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'zray = ["py.typed"]' in text


def test_every_subpackage_ships():
    """pyproject.toml lists packages by hand: a new one (zray/owner/) must be listed too."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(zray[\w.]*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "zray").rglob("__init__.py")}
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"
