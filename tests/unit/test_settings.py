"""shmserve.settings: every SHMSERVE_* variable declared, parsed and checked in one module."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from shmserve import settings
from shmserve.errors import ConfigError, InvalidSetting

ROOT = Path(__file__).resolve().parents[2]


def test_unset_variables_take_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert settings.home() is None and settings.cuda_dir() is None
    assert settings.runtime_dir() == Path(f"/tmp/shmserve-{__import__('os').getuid()}")
    assert settings.spin_s() == 50e-6 and settings.name_tag() == "" and settings.gpu_batch() == "auto"
    assert settings.cuda_ipc_max_idle() == 32 and settings.config_file() == "" and settings.config_options() == ""


def test_set_variables_are_parsed_and_a_change_is_seen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHMSERVE_SPIN_US", "25")
    assert settings.spin_s() == pytest.approx(25e-6)
    monkeypatch.setenv("SHMSERVE_SPIN_US", "-3")
    assert settings.spin_s() == 0.0
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(tmp_path))
    assert settings.runtime_dir() == tmp_path
    monkeypatch.setenv("SHMSERVE_CUDA_IPC_MAX_IDLE", "4")
    assert settings.cuda_ipc_max_idle() == 4
    assert settings.config_options({"SHMSERVE_CONFIG_OPTIONS": "  a.b=1 "}) == "a.b=1"


@pytest.mark.parametrize(("name", "text", "says"), [
    ("SHMSERVE_SPIN_US", "fast", "must be a number of microseconds"),
    ("SHMSERVE_GPU_BATCH", "fastest", "must be one of auto, kernel, cat"),
    ("SHMSERVE_CUDA_IPC_MAX_IDLE", "many", "must be a whole number"),
    ("SHMSERVE_CUDA_IPC_MAX_IDLE", "-1", "must not be negative"),
])
def test_a_bad_value_names_the_variable_and_what_it_takes(
        monkeypatch: pytest.MonkeyPatch, name: str, text: str, says: str) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(InvalidSetting) as info:
        settings.value(name)
    assert f"{name} {says}, got {text!r}" in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_a_bad_name_tag_is_ignored_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SHMSERVE_NAME_TAG", "not-a-tag-at-all")
    with caplog.at_level(logging.WARNING, logger="shmserve"):
        assert settings.name_tag() == ""
    assert "SHMSERVE_NAME_TAG='not-a-tag-at-all' is ignored" in caplog.text
    monkeypatch.setenv("SHMSERVE_NAME_TAG", "ab12")
    assert settings.name_tag() == "ab12"


def test_no_other_module_reads_a_shmserve_variable() -> None:
    reads = re.compile(r"""(environ\.get|environ\[|getenv)\(?\s*["']SHMSERVE_""")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "shmserve").rglob("*.py")
                 if p.name != "settings.py" and reads.search(p.read_text())]
    assert offenders == []


def test_the_readme_lists_every_variable_with_its_meaning() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Environment variables"):]
    section = section[:section.index("\n## ")]
    for name in settings.VARIABLES:
        assert re.search(rf"^\| `{name}` \| .+ \|", section, re.M), name
