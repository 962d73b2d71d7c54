"""Using what a run made: the adapter loads with plain peft from any folder, carries a real model
card, exports in the training dtype; `lightning-aug-dpo generate` answers with the toy base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_aug_dpo.cli import main
from lightning_aug_dpo.data.toy_world import write_toy_world
from lightning_aug_dpo.model_card import finish_adapter_folder
from lightning_aug_dpo.toy_base import TOY_BASE_DIR

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short SeVa run on the toy base, from a working directory of its own (the base is
    given by a relative path, as the demo config does)."""
    root = tmp_path_factory.mktemp("adapter_run")
    world = write_toy_world(root / "world", splits=("pool",), sizes={"pool": 16})["pool"].parent
    shutil.copytree(TOY_BASE_DIR, root / "base")
    args = ["fit", "--model", "lightning_aug_dpo.LlavaDPOModule", "--data",
            "lightning_aug_dpo.AugPairDataModule", "--model.model_name_or_path", "base",
            "--model.lora_r", "4", "--model.lora_alpha", "8", "--model.max_length", "256",
            "--data.data_path", str(world / "pool.jsonl"),
            "--data.image_folder", str(world / "images"), "--data.batch_size", "8",
            "--data.max_new_tokens", "16", "--trainer.max_steps", "1",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", "runs", "--seed_everything", "0"]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(args)
    finally:
        os.chdir(cwd)
    (adapter,) = root.glob("runs/lightning_logs/version_0/adapter")
    return {"root": root, "world": world, "adapter": adapter, "base": root / "base"}


def test_the_adapter_names_its_base_by_an_absolute_path(run: dict[str, Path]) -> None:
    config = json.loads((run["adapter"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run["base"].resolve())


def test_the_model_cards_snippet_answers_as_generate_does(
    run: dict[str, Path], tmp_path: Path
) -> None:
    """The card's plain transformers + peft code, run as written from another folder, loads the
    adapter and gives the answer `lightning-aug-dpo generate` gives (greedy, same template)."""
    card = (run["adapter"] / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    image = run["world"] / "images" / "pool" / "pool_00001.png"
    snippet = snippet.replace("THIS_FOLDER", str(run["adapter"])).replace("IMAGE", str(image))
    snippet = snippet.replace("max_new_tokens=256", "max_new_tokens=24")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    command = [str(BIN / "lightning-aug-dpo"), "generate", "--model", str(run["base"])]
    command += ["--adapter", str(run["adapter"]), "--image", str(image)]
    command += ["--max-new-tokens", "24", "Describe the image in detail."]
    ours = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert done.stdout.strip() == ours.stdout.strip() != ""


def test_the_adapter_carries_a_model_card_of_its_run(run: dict[str, Path]) -> None:
    card = (run["adapter"] / "README.md").read_text()
    assert "[More Information Needed]" not in card
    assert f"base_model: {run['base'].resolve()}" in card
    assert "| loss | SigmoidDPOLoss(beta=0.1" in card
    assert "| LoRA | r=4, alpha=8" in card
    assert "| optimizer steps | 1 (0 empty skipped) |" in card
    assert "| pairs kept | " in card and "| training rows | 16 |" in card
    assert f"| data_path | {run['world'] / 'pool.jsonl'} |" in card
    assert "lightning-aug-dpo generate --model" in card


def tensor_bytes(path: Path) -> int:
    """A safetensors file's tensor data: its size less the 8-byte length and the JSON header."""
    header = int.from_bytes(path.read_bytes()[:8], "little")
    return path.stat().st_size - 8 - header


def test_an_export_in_bfloat16_is_half_the_float32_size(run: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "adapter"
    shutil.copytree(run["adapter"], folder)
    weights = folder / "adapter_model.safetensors"
    fp32 = load_file(str(weights))
    fp32_bytes = tensor_bytes(weights)
    finish_adapter_folder(folder, str(run["base"]), torch.bfloat16, "card\n")
    bf16 = load_file(str(weights))
    assert {t.dtype for t in fp32.values()} == {torch.float32}
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16}
    assert all(torch.equal(bf16[k], v.to(torch.bfloat16)) for k, v in fp32.items())
    assert tensor_bytes(weights) * 2 == fp32_bytes == 4 * sum(t.numel() for t in fp32.values())
    assert (folder / "README.md").read_text() == "card\n"


def test_generate_answers_a_toy_world_question_with_the_toy_base(
    run: dict[str, Path], tmp_path: Path
) -> None:
    image = run["world"] / "images" / "pool" / "pool_00000.png"
    command = [str(BIN / "lightning-aug-dpo"), "generate", "--model", str(TOY_BASE_DIR)]
    command += ["--image", str(image), "--max-new-tokens", "48", "--json"]
    command += ["Describe the image in detail.", "How many objects are in the image?"]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["question"] for r in rows] == [command[-2], command[-1]]
    # the toy base's own template and vocabulary: "The image shows two shapes. There is ..."
    assert rows[0]["answer"].startswith("The image shows ") and " shape" in rows[0]["answer"]
    assert len(rows[1]["answer"]) > 0
    # with the run's adapter; a wrong image path is named before the model loads, exit 2
    command = [str(BIN / "lightning-aug-dpo"), "generate", "--model", str(TOY_BASE_DIR)]
    command += ["--adapter", str(run["adapter"]), "--image", "nowhere.png", "Hi?"]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2 and "nowhere.png: missing" in done.stderr
    assert "Traceback" not in done.stderr
