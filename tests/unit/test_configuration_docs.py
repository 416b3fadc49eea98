"""Every CITYSTREAM_* environment variable the code, the shell scripts or the tests name is documented.

Pure Python, no services: scans the platform packages, scripts/ and deploy/ shell scripts and tests/ for
`CITYSTREAM_[A-Z0-9_]+` and asserts each name appears in docs/configuration.md. benchmarks/ is not scanned
(it names only variables the platform reads itself).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("citystream", "sensorthings", "ingest", "geo", "mqtt_bridge", "tests")
SHELL_DIRS = ("scripts", "deploy")
NAME = re.compile(r"CITYSTREAM_[A-Z0-9_]+")
DOC = ROOT / "docs" / "configuration.md"


def _sources() -> list[Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    files += [p for directory in SHELL_DIRS for p in (ROOT / directory).rglob("*.sh")]
    return sorted(files)


def variables_in_code() -> dict[str, list[str]]:
    """Variable name -> the files (relative to the repository) that name it."""
    found: dict[str, list[str]] = {}
    for path in _sources():
        for name in sorted(set(NAME.findall(path.read_text(encoding="utf-8")))):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_scan_finds_the_platform_settings() -> None:
    found = variables_in_code()
    assert "CITYSTREAM_DATABASE_URL" in found and "CITYSTREAM_MQTT_URL" in found, sorted(found)


def test_every_variable_is_documented_in_configuration_md() -> None:
    documented = set(NAME.findall(DOC.read_text(encoding="utf-8")))
    missing = {name: files for name, files in variables_in_code().items() if name not in documented}
    assert not missing, "CITYSTREAM_* variables missing from docs/configuration.md:\n" + "\n".join(
        f"  {name} (in {', '.join(files)})" for name, files in sorted(missing.items()))
