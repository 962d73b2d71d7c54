"""Mid-epoch resume: a fit killed with SIGKILL and restarted from its last checkpoint continues
the epoch where it stopped (every prompt once per epoch, in the uninterrupted run's order) and
ends with the uninterrupted run's adapter."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_mmvet.yaml"
TESTS = Path(__file__).resolve().parent
NUM_PROMPTS, BATCH_SIZE, EPOCHS = 20, 4, 2  # 5 steps per epoch


def fit(cwd: Path, log: Path, *args: str, kill_before_step: int = -1) -> int:
    probe = {"class_path": "resume_probe.PromptLog",
             "init_args": {"path": str(log), "kill_before_step": kill_before_step}}
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(cwd / f"ckpt_{log.stem}"), "every_n_train_steps": 1,
                                "save_top_k": 0, "save_last": True}}  # fmt: skip
    cmd = [sys.executable, "-m", "lightning_aug_dpo", "fit", "--config", str(CONFIG),
           f"--data.init_args.num_prompts={NUM_PROMPTS}", "--data.init_args.num_val_prompts=0",
           f"--data.init_args.batch_size={BATCH_SIZE}", f"--trainer.max_epochs={EPOCHS}",
           "--trainer.callbacks=[]",  # the demo's gallery, eval and summary are not under test
           f"--trainer.callbacks+={json.dumps(probe)}",
           f"--trainer.callbacks+={json.dumps(checkpoint)}", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    return result.returncode


def trained(log: Path) -> list[tuple[int, int, tuple[str, ...]]]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["epoch"], r["batch"], tuple(r["ids"])) for r in rows]


# Epoch 0 batch 3, epoch 1 batch 2, and a step drawn anew at each collection (shown in the test
# id, e.g. ``[random-4]``; ``KILL_STEP=4 pytest ...`` replays it).
RANDOM_STEP = int(
    os.environ.get("KILL_STEP")
    or random.SystemRandom().randint(1, EPOCHS * NUM_PROMPTS // BATCH_SIZE - 1)
)
KILL_STEPS = [3, 7, pytest.param(RANDOM_STEP, id=f"random-{RANDOM_STEP}")]


@pytest.mark.parametrize("kill_before_step", KILL_STEPS)
def test_killed_fit_resumes_mid_epoch(demo_assets, tmp_path: Path, kill_before_step) -> None:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    reference = tmp_path / "reference.log"
    assert fit(tmp_path, reference) == 0
    expected = trained(reference)
    assert len(expected) == EPOCHS * NUM_PROMPTS // BATCH_SIZE

    killed = tmp_path / "killed.log"
    assert fit(tmp_path, killed, kill_before_step=kill_before_step) == -9  # SIGKILL
    before = trained(killed)
    assert len(before) == kill_before_step
    assert fit(tmp_path, killed, f"--ckpt_path={tmp_path / 'ckpt_killed' / 'last.ckpt'}") == 0
    # the restarted run trained exactly the batches that were missing, in the same order
    assert trained(killed) == expected
    for epoch in range(EPOCHS):
        ids = [i for e, _, batch in trained(killed) if e == epoch for i in batch]
        assert len(ids) == len(set(ids)) == NUM_PROMPTS  # no prompt twice, none skipped
    # and it ends with the uninterrupted run's adapter: model, optimizer, scheduler, adaptive
    # strength and every seed were restored
    runs = sorted((tmp_path / "runs" / "demo").glob("version_*/adapter/adapter_model.safetensors"))
    assert len(runs) == 2, runs  # the reference and the resumed run (the killed one wrote none)
    uninterrupted, resumed = (load_file(path) for path in runs)
    assert uninterrupted.keys() == resumed.keys()
    worst = max((uninterrupted[k] - resumed[k]).abs().max().item() for k in uninterrupted)
    assert worst < 1e-6, worst
