"""``make gpu-check`` (benchmarks/gpu_check.py): its CPU smoke run end to end, the figures it
derives (tokens/s, FLOPs, MFU, the trainable-parameter formula against PEFT's count, the memory
plan), the fail-fast needs check, and the wheel tooling for the GPU machine."""

from __future__ import annotations

import configparser
import importlib.util
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = _load("gpu_check_script", SCRIPT)
sizes = _load("gpu_check_sizes", ROOT / "benchmarks" / "gpu_check_sizes.py")
wheels = _load("gpu_wheels_script", ROOT / "benchmarks" / "gpu_wheels.py")

# llava-hf/llava-1.5-7b-hf's sizes, as config.json dicts
TEXT_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
}
VISION_7B = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}
CONFIG_7B = {"text_config": TEXT_7B, "vision_config": VISION_7B, "image_seq_length": 576}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``--smoke`` run (two stages at a time), its JSON and Markdown."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--smoke", "--jobs", "2", "--peak-tflops", "0.5"]
    command += ["--output-dir", str(out), "--work-dir", str(out / "work")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return {"report": report, "md": (out / "gpu_check.md").read_text(), "out": out}


def test_smoke_runs_every_stage(smoke) -> None:
    report = smoke["report"]
    assert report["smoke"] is True and report["status"] == "ok"
    assert report["machine"]["cuda"] is False  # the smoke run hides any GPU
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == check.STAGE_NAMES
    # recorded, not run: without CUDA every gpu test skips (make test runs them so)
    assert stages.pop("gpu_tests")["status"] == "skipped"
    for stage in stages.values():
        assert stage["status"] == "ok", stage
        assert math.isfinite(stage["seconds"]) and stage["seconds"] > 0
        assert stage["timeout_s"] > 0 and stage["command"][0] == sys.executable
    assert report["needs"]["problems"] == []
    assert {"gpu_check.json", "gpu_check.md", "gpu_check.log"} <= {
        p.name for p in smoke["out"].iterdir()
    }
    assert not (smoke["out"] / "work").exists() or not any((smoke["out"] / "work").iterdir())
    # the 4-bit and bf16 DPO runs differ only in the base
    nf4 = stages["dpo_nf4"]["command"]
    assert "load_in_4bit=true" in nf4 and "lora_r=1024" in nf4
    assert "load_in_4bit=false" in stages["dpo_bf16"]["command"]


def test_smoke_checkpoint_has_the_shaped_sizes(smoke) -> None:
    figures = smoke["report"]["figures"]
    ckpt, model = figures["checkpoint"], figures["model"]
    assert model["text_config"]["vocab_size"] == 32064 and model["image_tokens"] == 16
    assert ckpt["dtype"] == "bfloat16"
    # bf16 weights: two bytes per parameter plus the safetensors header
    assert 2 * ckpt["parameters"] <= ckpt["weight_bytes"] < 2 * ckpt["parameters"] + 2**20
    text = model["text_config"]
    assert model["decoder_linear_parameters"] == sizes.decoder_linear_parameters(text)


@pytest.mark.parametrize("key", ["bf16_lora", "nf4_qlora"])
def test_smoke_dpo_figures_follow_their_formulas(smoke, key: str) -> None:
    figures = smoke["report"]["figures"]
    run = figures["dpo"][key]
    stage = {"bf16_lora": "dpo_bf16", "nf4_qlora": "dpo_nf4"}[key]
    raw = next(s["raw"] for s in smoke["report"]["stages"] if s["name"] == stage)
    shape = raw["shape"]
    pairs = len(shape["chosen_tokens"])
    tokens = 2 * pairs * shape["prompt_tokens"] + sum(shape["chosen_tokens"])
    tokens += sum(shape["rejected_tokens"])
    assert run["tokens_per_step"] == tokens
    # the formula's LoRA count is PEFT's (no projector in the DPO-step runs)
    assert run["trainable_parameters"] == run["trainable_formula"] == shape["trainable_parameters"]
    n_linear = figures["model"]["decoder_linear_parameters"]
    assert set(run["sides"]) == {"ours", "trl"}
    for name, side in run["sides"].items():
        seconds = raw["results"][name]["median_seconds"]
        assert side["seconds_per_step"] == seconds > 0
        assert side["tokens_per_s"] == pytest.approx(tokens / seconds, rel=1e-12)
        flops = 6 * tokens * (n_linear + run["trainable_parameters"])
        assert side["flops_per_step"] == pytest.approx(flops, rel=1e-12)
        assert side["mfu"] == pytest.approx(flops / seconds / 0.5e12, rel=1e-12)
    assert figures["mfu"]["peak_tflops"] == 0.5
    assert run["loss_max_abs_diff"] < 1e-2  # same model, weights and batch on both sides
    assert run["speedup_vs_trl"] == pytest.approx(
        raw["results"]["trl"]["median_seconds"] / raw["results"]["ours"]["median_seconds"]
    )


def test_smoke_rollout_and_augment_figures(smoke) -> None:
    figures = smoke["report"]["figures"]
    rows = figures["rollout"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["rollout_tokens_per_s"] > 0 and r["pairs_per_s"] > 0 for r in rows)
    presets = figures["augment"]["presets"]
    assert set(presets) == {"diffusion", "hflip"}
    for row in presets.values():
        assert row["device_img_s"] > 0 and row["pil_img_s"] > 0
        assert row["speedup"] == pytest.approx(row["device_img_s"] / row["pil_img_s"])


def test_smoke_recipe_memory_checks_the_trainable_formula_against_peft(smoke) -> None:
    rm = smoke["report"]["figures"]["recipe_memory"]
    assert rm["complete"] and set(rm["phases"]) == set(
        ("load", "step_1", "accumulate", "rollout", "step_2")
    )
    assert rm["trainable_match"] is True
    assert rm["trainable_measured"]["total"] == rm["trainable_formula"]["total"]
    assert rm["trainable_formula"]["modules_to_save"] > 0  # the recipe trains the projector
    assert rm["quantized_4bit"] is True
    raw = next(s["raw"] for s in smoke["report"]["stages"] if s["name"] == "recipe_memory")
    assert raw["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert raw["settings"]["model_args"]["lora_r"] == 1024
    assert rm["fits_80gb"] is None  # CPU: no device memory to compare
    plan = smoke["report"]["figures"]["memory_plan_recipe"]
    assert plan["settings"]["batch_size"] == 16 and plan["settings"]["response_tokens"] == 512


def test_smoke_markdown_has_every_section(smoke) -> None:
    md = smoke["md"]
    assert md.startswith("# GPU check (SMOKE RUN")
    for name in check.STAGE_NAMES:
        assert f"| {name} | {'skipped' if name == 'gpu_tests' else 'ok'} |" in md
    headings = ["## DPO step at the 7B shape", "## Rollouts at the 7B"]
    headings += ["## Augmentation presets", "## Memory plan", "FLOPs/step = 6 * T * (N + P)"]
    for heading in headings:
        assert heading in md


def test_gpu_tests_stage_runs_pytest_m_gpu_and_reads_its_junit_xml(tmp_path: Path) -> None:
    stage = next(s for s in check.make_stages() if s.name == "gpu_tests")
    command = check.build_command(stage, {"smoke": False, "work": tmp_path, "device": "cuda"})
    assert command[1:7] == ["-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-v"]
    assert command[-2:] == ["--junitxml", str(tmp_path / "gpu_tests.xml")]
    test = tmp_path / "test_three.py"
    test.write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no CUDA')\n"
        "def test_skipped(): pass\n"
    )
    xml = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider", "-c",
         os.devnull, "--rootdir", str(tmp_path), "-o", "junit_family=xunit2",
         "--junitxml", str(xml)],
        cwd=tmp_path, capture_output=True, check=False,
    )  # fmt: skip
    result = check.parse_junit(xml)
    assert {k: result[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == {
        "tests": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1,
    }  # fmt: skip
    bad = next(c for c in result["cases"] if c["outcome"] == "failed")
    assert bad["test"].endswith("::test_bad") and "one is not two" in bad["message"]


# ------------------------------------------------------------------------ the arithmetic
def test_recipe_lora_at_7b_is_2_56_billion_and_41_gb_of_adamw_state() -> None:
    recipe = check.load_recipe()
    counts = sizes.trainable_parameters(CONFIG_7B, recipe["model_args"])
    # r x (in + out) over q, k, v, o (4096 -> 4096), gate, up (4096 -> 11008), down, 32 layers
    assert counts["lora"] == 1024 * 32 * (4 * 8192 + 3 * 15104) == 2_558_525_440
    assert counts["modules_to_save"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    plan = sizes.memory_plan(CONFIG_7B, recipe["model_args"], 16, 624, 512, 512)
    assert plan["gib"]["trainable_weights_grads_adamw"] * sizes.GIB == 16 * counts["total"]
    assert 41e9 < 16 * counts["total"] < 41.5e9
    assert plan["peak_gib"] < sizes.PLAN_LIMIT_GIB  # the recipe fits one 80 GB GPU on paper ...
    no_ckpt = {**recipe["model_args"], "gradient_checkpointing": False}
    assert sizes.memory_plan(CONFIG_7B, no_ckpt, 16, 624, 512, 512)["peak_gib"] > 80  # ... only so


def test_the_7b_shape_counts_7_06_billion_parameters() -> None:
    total = (
        sizes.decoder_linear_parameters(TEXT_7B) + 2 * 32064 * 4096 + 65 * 4096
        + sizes.vision_tower_parameters(VISION_7B) + sizes.projector_parameters(1024, 4096)
    )  # fmt: skip
    assert sizes.decoder_linear_parameters(TEXT_7B) == 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert round(total / 1e9, 2) == 7.06  # llava-1.5-7b


def test_unknown_lora_target_is_refused() -> None:
    with pytest.raises(ValueError, match="fc1"):
        sizes.lora_parameters(TEXT_7B, 8, ["q_proj", "fc1"])


# ------------------------------------------------------------------------------ the needs
def test_needs_carry_setup_cfg_requirements() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    required = [r.strip() for r in parser["options"]["install_requires"].split("\n") if r.strip()]
    needs = {check.canonical(n.dist): n.spec for n in check.NEEDS}
    for line in required:
        name, spec = line.split(">=", 1) if ">=" in line else (line, "")
        name = check.canonical(name.split("[")[0])
        assert name in needs, f"{line} (setup.cfg) missing from gpu_check.NEEDS"
        # torch: a CUDA machine's own build, which no carried wheel can replace
        assert needs[name] == ("" if name == "torch" else f">={spec}" if spec else ""), line


def test_missing_packages_stop_at_once_naming_each_and_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPU_CHECK_SITE", "")  # never install .whl/ (and re-exec) in here
    real = check._installed
    fake = {"kornia": None, "bitsandbytes": "0.40.0"}
    monkeypatch.setattr(check, "_installed", lambda dist: fake.get(dist, real(dist)))
    code = check.main(["--smoke", "--output-dir", str(tmp_path)])
    assert code == 2
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "needs_missing" and report["stages"] == []
    message = report["error"]
    kornia = wheels.read_lock()["kornia"]
    assert "kornia>=0.9,<1: not installed" in message and f"kornia=={kornia}" in message
    assert "bitsandbytes>=0.50.2,<1: 0.40.0 installed" in message
    assert "make gpu-wheels" in message and "copy .whl/ into this checkout" in message
    assert "kornia" in (tmp_path / "gpu_check.md").read_text()


def test_needs_of_a_stage_subset_only() -> None:
    lock = wheels.read_lock()
    have = {n.dist: lock[check.canonical(n.dist)] for n in check.NEEDS}  # the tested versions
    result = check.check_needs(["augment"], installed=lambda d: None if d == "trl" else have[d])
    assert "trl" not in result["packages"] and result["problems"] == []
    result = check.check_needs(["dpo_bf16"], installed=lambda d: None if d == "trl" else have[d])
    assert len(result["problems"]) == 1 and "trl" in result["problems"][0]


# ------------------------------------------------------------------------------ the wheels
def _fake_wheel(folder: Path, name: str = "gpucheck_fake", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (one module) for the install path."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "X = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return path


def test_wheels_are_installed_into_the_site_and_put_on_pythonpath(tmp_path: Path) -> None:
    _fake_wheel(tmp_path / "whl")
    site, out = tmp_path / "site", tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--smoke", "--needs-only", "--wheels"]
    command += [str(tmp_path / "whl"), "--site", str(site), "--output-dir", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    for installed_now in (True, False):  # the second run finds the same wheels installed
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads((out / "gpu_check.json").read_text())
        assert report["status"] == "needs_ok"
        assert report["wheels"]["installed_now"] is installed_now
        assert report["wheels"]["wheels"] == ["gpucheck_fake-1.0-py3-none-any.whl"]
        paths = report["pythonpath"].split(os.pathsep)
        assert paths[:2] == [str(ROOT), str(site)]  # the checkout, then the wheels
    assert (site / "gpucheck_fake" / "__init__.py").is_file()


def test_wheel_list_takes_the_lock_versions_of_what_the_gpu_machine_lacks() -> None:
    pins = wheels.read_pins()
    lacking = {"bitsandbytes", "kornia", "kornia-rs", "jsonargparse", "docstring-parser"}
    lacking |= {"typeshed-client", "trl", "datasets", "dill", "multiprocess"}
    assert lacking <= {wheels.canonical(n) for n in pins}
    lock = wheels.read_lock()
    assert {wheels.canonical(n): v for n, v in pins.items()} == {
        wheels.canonical(n): lock[wheels.canonical(n)] for n in pins
    }
    assert check.read_pins()["transformers"] == lock["transformers"]


def test_wheel_list_and_lock_that_disagree_fail_naming_the_package(tmp_path: Path) -> None:
    listed = tmp_path / "gpu_wheels.txt"
    listed.write_text("# wheels\nkornia  # augment\nnot_in_lock\n")
    lock = tmp_path / "requirements-lock.txt"
    lock.write_text("kornia==0.9.0\n")
    with pytest.raises(ValueError, match=r"gpu_wheels.txt:3: not_in_lock is not in .*make lock"):
        wheels.read_pins(listed, lock)
    listed.write_text("kornia==0.8.0\n")  # a version here would be a second source of truth
    with pytest.raises(ValueError, match=r"gpu_wheels.txt:1: expected a package name"):
        wheels.read_pins(listed, lock)
    listed.write_text("kornia\n")
    assert wheels.read_pins(listed, lock) == {"kornia": "0.9.0"}


def test_slimmed_bitsandbytes_wheel_keeps_the_named_libraries(tmp_path: Path) -> None:
    path = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {
        "bitsandbytes/__init__.py": b"x = 1\n",
        "bitsandbytes/libbitsandbytes_cpu.so": b"c" * 100,
        "bitsandbytes/libbitsandbytes_cuda118.so": b"a" * 5000,
        "bitsandbytes/libbitsandbytes_cuda130.so": b"b" * 100,
    }
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items())
    record += "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    before, after = wheels.slim_bitsandbytes(path, ("cpu", "cuda130"))
    assert after < before
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        kept = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_cuda118.so" not in names
    assert {
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
    } <= names
    assert "cuda118" not in kept and "cuda130" in kept and "__init__.py" in kept


def test_other_versions_of_a_pinned_wheel_are_removed(tmp_path: Path) -> None:
    for name in (
        "trl-1.15.0-py3-none-any.whl",
        "trl-1.16.0-py3-none-any.whl",
        "x-1-py3-none-any.whl",
    ):
        (tmp_path / name).write_bytes(b"")
    removed = wheels.remove_other_versions({"trl": "1.16.0"}, tmp_path)
    assert removed == ["trl-1.15.0-py3-none-any.whl"]
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "trl-1.16.0-py3-none-any.whl"
