"""The tested versions (requirements-lock.txt, tools/lock.py) and clean `python -m` entry points."""

from __future__ import annotations

import configparser
import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lightning_aug_dpo import toy_base

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def _direct_requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n")
    lines += cfg["options.extras_require"]["test"].split("\n")
    return [Requirement(line) for line in lines if line.strip()]


def test_the_lock_satisfies_every_setup_cfg_range() -> None:
    pins = lock.read_lock()
    for requirement in _direct_requirements():
        version = pins[lock.canonical(requirement.name)]
        assert requirement.specifier.contains(version), f"{requirement}: the lock has {version}"
    assert pins["torch"] == "2.13.0"  # public version: the CPU wheel here, a CUDA build elsewhere
    assert "kernels" not in pins or pins["transformers"] >= "5.25"  # pulled in by 5.25 only


def test_fast_moving_dependencies_are_capped_below_their_next_major() -> None:
    capped = {"transformers", "peft", "trl", "lightning", "bitsandbytes", "kornia", "jsonargparse"}
    for requirement in _direct_requirements():
        if requirement.name in capped:
            assert any(s.operator == "<" for s in requirement.specifier), requirement
            capped.discard(requirement.name)
    assert not capped


def test_lower_bounds_are_read_from_setup_cfg_with_extras(tmp_path: Path) -> None:
    floors = lock.lower_bounds()
    assert "transformers==5.24" in floors and "jsonargparse[signatures]==4.53" in floors
    assert "trl==1.16" in floors  # the test extra
    cfg = tmp_path / "setup.cfg"
    cfg.write_text(
        "[options]\ninstall_requires =\n    torch>=2.13\n    rich\n"
        "[options.extras_require]\ntest =\n"
    )
    with pytest.raises(ValueError, match="'rich' has no lower bound"):
        lock.lower_bounds(cfg)


def test_freeze_text_becomes_the_lock_and_a_diff_names_what_moved() -> None:
    frozen = "# Editable install\n-e /somewhere/project\nTorch==2.13.0+cpu\nkornia_rs==0.2.0\n"
    pins = lock.parse_pins(frozen)
    assert pins == {"torch": "2.13.0+cpu", "kornia-rs": "0.2.0"}
    text = lock.render(pins, "3.11", "2026-12-07")
    assert text.splitlines()[-2:] == ["kornia-rs==0.2.0", "torch==2.13.0"]
    assert lock.parse_pins(text) == {"torch": "2.13.0", "kornia-rs": "0.2.0"}
    old = {"torch": "2.13.0", "transformers": "5.24.0", "tomlkit": "0.15.3"}
    new = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "kernels": "0.19.1"}
    assert lock.diff(old, new) == [
        "  + kernels 0.19.1", "  - tomlkit 0.15.3", "  ~ transformers 5.24.0 -> 5.25.0"
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"<text>:1: expected name==version"):
        lock.parse_pins("torch>=2.13\n")


def test_check_compares_a_real_venv_with_the_lock(tmp_path: Path, capsys, monkeypatch) -> None:
    """``check`` on this interpreter's own environment against a lock of two of its packages:
    the rest is reported as '+', a wrong version as '~', and --allow-extra ignores the rest."""
    have = lock.freeze(Path(sys.executable))
    fake = tmp_path / "requirements-lock.txt"
    fake.write_text(f"pytest=={have['pytest']}\npackaging==0.0.1\n")
    monkeypatch.setattr(lock, "LOCK", fake)
    venv = Path(sys.executable).parent.parent
    monkeypatch.setattr(lock, "freeze", lambda python: have)  # the same freeze, read once
    assert lock.check(venv) == 1
    out = capsys.readouterr().out
    assert f"  ~ packaging 0.0.1 -> {have['packaging']}" in out and "  + torch" in out
    assert "make lock" in out
    assert lock.check(venv, allow_extra=True) == 1  # packaging still differs
    fake.write_text(f"pytest=={have['pytest']}\n")
    assert lock.check(venv, allow_extra=True) == 0


def test_toy_base_names_the_versions_its_sha256_holds_for(monkeypatch) -> None:
    monkeypatch.setattr(toy_base, "RECORDED_WITH", {"torch": "0.0.1"})
    note = toy_base.versions_note()
    assert note.startswith("recorded with torch 0.0.1; this run differs: torch 2.13.0")
    monkeypatch.setattr(toy_base, "RECORDED_WITH", {"rich": metadata.version("rich")})
    assert toy_base.versions_note().endswith("this run has the same")


ENTRY_POINTS = [
    "lightning_aug_dpo.demo",
    "lightning_aug_dpo.toy_base",
    "lightning_aug_dpo.preview",
    "lightning_aug_dpo.answer",
    "lightning_aug_dpo.audit_cli",
    "lightning_aug_dpo.recipe_cost",
    "lightning_aug_dpo.data.synthetic",
    "lightning_aug_dpo.data.seva_recipe",
    "lightning_aug_dpo.data.toy_world",
    *(f"lightning_aug_dpo.models.{name}" for name in (
        "tiny", "tiny_gemma3", "tiny_internvl", "tiny_llava_next", "tiny_qwen2_vl",
        "tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_smolvlm",
    )),
]  # fmt: skip


def test_every_python_m_entry_point_is_listed() -> None:
    found = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "lightning_aug_dpo").rglob("*.py")
        if 'if __name__ == "__main__"' in path.read_text() and path.name != "__main__.py"
    }
    assert found == set(ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_python_m_entry_point_answers_help_without_a_warning(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert "Warning" not in done.stderr, done.stderr
