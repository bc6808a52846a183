"""docs/results.md is generated: it must be exactly what scripts/results.py makes of the committed result files."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_results_page_regenerates_byte_for_byte_from_the_result_files() -> None:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "results.py"), "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
