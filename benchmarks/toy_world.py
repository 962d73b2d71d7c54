"""Does SeVa make a model better? The toy-world experiment, shaped like SeVa's table.

    python benchmarks/toy_world.py --out runs/toy_world            # select on val, then test
    python benchmarks/toy_world.py --out runs/toy_world --stage select
    python benchmarks/toy_world.py --out runs/toy_world --stage test

Starting model: the committed toy base (``lightning_aug_dpo/assets/toy-llava-sft``, an SFT-trained
tiny LLaVA; ``python -m lightning_aug_dpo.toy_base`` rebuilds it byte for byte). Every training
run is the project's own ``lightning-aug-dpo fit`` (``configs/seva_toy.yaml``, or
``configs/sft_toy.yaml`` for the SFT control) in a subprocess with one torch thread, ``--workers``
at a time. Rows of the test table:

* ``SFT base``: the starting model;
* ``SeVa diffusion 300 / 500 / 800`` and ``SeVa moco``: DPO on (clean-image answer,
  augmented-image answer) pairs of the unlabelled pool, greedy rollouts of the base;
* control (a) ``DPO, two samples``: the same DPO on two T=1 samples on the CLEAN image (the
  ``Identity`` augmentation; which answer is "chosen" is then a coin flip);
* control (b) ``SFT continued``: SFT on the labelled train split with the same LoRA, for the same
  number of optimizer steps at twice the batch (a DPO step trains on two sequences per pair).

Settings are chosen on the validation split only (``--stage select``, seed 0, SeVa diffusion
500): the DPO recipe (``RECIPES``: SeVa's published one, or length-controlled pairs) and its
learning rate, and the SFT control's learning rate, written to ``OUT/selected.json``. The test
split is then read once per reported setting and seed
(``--stage test``), 3 seeds each, mean +- std (population) over seeds. The outcome table is
printed and written to ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_aug_dpo.toy_base import TOY_BASE_DIR  # noqa: E402

SEEDS = (0, 1, 2)
SEVA = "configs/seva_toy.yaml"
SFT = "configs/sft_toy.yaml"
# DPO recipes tried on the validation split (SeVa diffusion 500, seed 0), each at these lrs:
RECIPES: dict[str, tuple[list[str], tuple[float, ...]]] = {
    # SeVa's published recipe: sigmoid DPO, LoRA + the projector trained
    "seva": (["--model.init_args.modules_to_save", "[multi_modal_projector]"], (3e-6, 1e-5, 3e-5)),
    # equal-length pairs only, RPO's chosen-NLL anchor, LoRA only (configs/toy/length_control)
    "length-controlled": (["--config", "configs/toy/length_control.yaml"], (3e-5, 1e-4)),
}
SFT_CONTROL = ["--config", "configs/toy/sft_continued.yaml"]
SFT_LRS = (1e-4, 1e-3)
AUGMENTATIONS = {
    "SeVa diffusion 300": ["--data.init_args.augmentation.init_args.noise_step", "300"],
    "SeVa diffusion 500": ["--data.init_args.augmentation.init_args.noise_step", "500"],
    "SeVa diffusion 800": ["--data.init_args.augmentation.init_args.noise_step", "800"],
    "SeVa moco": ["--data.init_args.augmentation", "moco"],
}
CONTROL_SAMPLES = [
    "--data.init_args.augmentation", "lightning_aug_dpo.Identity",
    "--data.init_args.sampling.do_sample", "true",
    "--data.init_args.sampling.temperature", "1.0",
]  # fmt: skip
HEADLINE = ("toy/chair_i", "toy/chair_s", "toy/coverage", "toy/count_errors", "toy/pope/mean/f1",
            "toy/pope/adversarial/f1")  # fmt: skip


@dataclass
class Job:
    name: str
    config: str
    args: list[str]
    seed: int
    split: str  # evaluated on
    out: Path
    metrics: dict[str, float] = field(default_factory=dict)


def thread_env() -> dict[str, str]:
    # One intra-op thread per process: on a busy 2-core machine two threads were ~25x slower.
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_job(job: Job, world: Path) -> Job:
    """Train (unless the job is the base) and evaluate; results cached in ``job.out``."""
    scores = job.out / f"scores-{job.split}.json"
    if scores.is_file():
        cached = json.loads(scores.read_text())
        if cached["args"] == job.args and cached.get("config", job.config) == job.config:
            job.metrics = cached["metrics"]
            return job
        # the folder holds a run with other settings (e.g. a new selection): redo it
        shutil.rmtree(job.out)
    job.out.mkdir(parents=True, exist_ok=True)
    adapter = None
    if job.config:
        cmd = [sys.executable, "-m", "lightning_aug_dpo", "fit", "--config", job.config,
               "--seed_everything", str(job.seed), "--data.init_args.seed", str(job.seed),
               "--trainer.default_root_dir", str(job.out),
               "--trainer.logger.init_args.save_dir", str(job.out), *job.args]  # fmt: skip
        cmd += world_args(job.config, world)
        t0 = time.time()
        with open(job.out / "fit.log", "w") as log:
            subprocess.run(cmd, check=True, cwd=REPO, env=thread_env(), stdout=log, stderr=log)
        (job.out / "fit_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
        adapter = next(job.out.rglob("adapter/adapter_config.json")).parent
    cmd = [sys.executable, str(REPO / "benchmarks" / "toy_world_eval.py"),
           "--model", str(TOY_BASE_DIR),
           "--split-dir", str(world / job.split), "--image-dir", str(world / "images"),
           "--out", str(job.out / f"eval-{job.split}"), "--dtype", "float32", "--device", "cpu",
           "--batch-size", "64", "--max-new-tokens", "64"]  # fmt: skip
    if adapter is not None:
        cmd += ["--adapter", str(adapter)]
    with open(job.out / f"eval-{job.split}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, env=thread_env(), stdout=log, stderr=log)
    record = json.loads((job.out / f"eval-{job.split}" / "scores.json").read_text())
    job.metrics = {k: float(v) for k, v in record["metrics"].items()}
    record = {"metrics": job.metrics, "args": job.args, "config": job.config}
    scores.write_text(json.dumps(record, indent=2) + "\n")
    return job


def world_args(config: str, world: Path) -> list[str]:
    if "sft" in config:
        return ["--data.init_args.data_path", str(world / "train.json"),
                "--data.init_args.image_folder", str(world / "images")]  # fmt: skip
    return ["--data.init_args.data_path", str(world / "pool.jsonl"),
            "--data.init_args.image_folder", str(world / "images")]  # fmt: skip


def run_all(jobs: list[Job], world: Path, workers: int) -> list[Job]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda j: run_job(j, world), jobs))


def lr_args(lr: float) -> list[str]:
    return ["--model.init_args.optimizer.init_args.lr", str(lr)]


def select(out: Path, world: Path, workers: int) -> dict:
    """The DPO recipe and learning rate, and the SFT control's learning rate, chosen on the
    validation split (seed 0): lowest CHAIR_i among runs whose coverage stays within 2 points
    of the base (else lowest CHAIR_i)."""
    base = Job("SFT base", "", [], 0, "val", out / "val" / "base")
    dpo = [Job(f"{recipe} lr {lr:g}", SEVA, [*args, *lr_args(lr)], 0, "val",
               out / "val" / f"{recipe}-{lr:g}")
           for recipe, (args, lrs) in RECIPES.items() for lr in lrs]  # fmt: skip
    sft = [Job(f"sft lr {lr:g}", SFT, [*SFT_CONTROL, *lr_args(lr)], 0, "val",
               out / "val" / f"sft-{lr:g}") for lr in SFT_LRS]  # fmt: skip
    done = run_all([base, *dpo, *sft], world, workers)
    base_cov = done[0].metrics["toy/coverage"]

    def best(group: list[Job]) -> Job:
        ok = [j for j in group if j.metrics["toy/coverage"] >= base_cov - 0.02] or group
        return min(ok, key=lambda j: j.metrics["toy/chair_i"])

    top_dpo, top_sft = best(done[1 : 1 + len(dpo)]), best(done[1 + len(dpo) :])
    recipe, lr = top_dpo.name.split(" lr ")
    chosen = {"recipe": recipe, "dpo_lr": float(lr), "sft_lr": float(top_sft.name.split()[-1])}
    table = {j.name: j.metrics for j in done}
    (out / "selected.json").write_text(json.dumps({"selected": chosen, "val": table}, indent=2))
    rows = {j.name: [j.metrics] for j in done}
    text = format_rows(rows) + "\n\nLast epoch of each DPO run:\n\n" + format_training(dpo)
    (out / "selection.md").write_text(text + "\n")
    print(text)
    print(f"selected on val: {chosen}")
    return chosen


def test(out: Path, world: Path, workers: int, chosen: dict[str, float]) -> dict:
    jobs = [Job("SFT base", "", [], 0, "test", out / "test" / "base")]
    dpo = [*RECIPES[chosen["recipe"]][0], *lr_args(chosen["dpo_lr"])]
    for name, args in AUGMENTATIONS.items():
        slug = name.split(" ", 1)[1].replace(" ", "-")
        jobs += [Job(name, SEVA, [*dpo, *args], s, "test", out / "test" / f"{slug}-s{s}")
                 for s in SEEDS]  # fmt: skip
    jobs += [Job("(a) DPO, two samples, clean image", SEVA, [*dpo, *CONTROL_SAMPLES], s,
                 "test", out / "test" / f"samples-s{s}") for s in SEEDS]  # fmt: skip
    jobs += [Job("(b) SFT continued", SFT, [*SFT_CONTROL, *lr_args(chosen["sft_lr"])], s,
                 "test", out / "test" / f"sft-s{s}") for s in SEEDS]  # fmt: skip
    done = run_all(jobs, world, workers)
    rows: dict[str, list[dict[str, float]]] = {}
    for job in done:
        rows.setdefault(job.name, []).append(job.metrics)
    summary = {name: aggregate(runs) for name, runs in rows.items()}
    result = {"selected": chosen, "seeds": list(SEEDS), "rows": summary,
              "runs": {j.out.name: j.metrics for j in done}}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_rows(rows) + "\n\nLast epoch of each DPO run:\n\n" + format_training(jobs)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return result


def audit(out: Path, world: Path, workers: int) -> dict:
    """What each augmentation does to the answers: one ``predict`` pass over the pool per
    augmentation (identical pairs kept), audited by the library's pair audit
    (:func:`lightning_aug_dpo.audit.audit_pairs`) with the pool's scene records, so both answers
    are scored exactly. Labels are used here for analysis only; training never sees them.
    ``OUT/audit.json`` keeps each augmentation's exact-quality statistics and examples
    (:data:`~lightning_aug_dpo.audit_truth.TOY_AUDIT_KEYS`); each folder gets the full report
    (``audit.json``, ``audit.md``: lengths, words, openings, verdicts)."""
    from lightning_aug_dpo.atomic import write_json, write_text
    from lightning_aug_dpo.audit import audit_pairs
    from lightning_aug_dpo.audit_format import format_markdown
    from lightning_aug_dpo.audit_truth import TOY_AUDIT_KEYS, load_scenes
    from lightning_aug_dpo.data.pairs import load_pairs

    scenes = load_scenes(world / "scenes.json")

    def one(item: tuple[str, list[str]]) -> tuple[str, dict]:
        name, args = item
        folder = out / "audit" / name.split(" ", 1)[1].replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        pairs = folder / "pairs.jsonl"
        # the summary is written once predict has finished (.done grows batch by batch)
        if not (folder / "pairs.jsonl.summary.json").is_file():
            cmd = [sys.executable, "-m", "lightning_aug_dpo", "predict",
                   "--config", str(REPO / SEVA),
                   "--config", str(REPO / "configs/toy/audit_pairs.yaml"),
                   "--model.init_args.model_name_or_path", str(TOY_BASE_DIR), *args,
                   *world_args(SEVA, world)]  # fmt: skip
            with open(folder / "predict.log", "w") as log:
                subprocess.run(
                    cmd, check=True, cwd=folder, env=thread_env(), stdout=log, stderr=log
                )
        report = audit_pairs(load_pairs(pairs).pairs, scenes=scenes)
        write_json(folder / "audit.json", report)
        write_text(folder / "audit.md", format_markdown(report, f"{name}, {pairs}"))
        truth = report["truth"]
        stats = {key: truth["stats"][key] for key in TOY_AUDIT_KEYS}
        return name, {"stats": stats, "examples": truth["examples"],
                      "verdicts": report["verdicts"]}  # fmt: skip

    with ThreadPoolExecutor(workers) as pool:
        result = dict(pool.map(one, AUGMENTATIONS.items()))
    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_audit(result))
    for name, entry in result.items():  # which shortcut each augmentation's pairs carry
        for line in entry.get("verdicts", []):
            print(f"{name}: {line}")
    return result


def format_audit(result: dict) -> str:
    cols = [("identical (desc.)", "identical_rate/description"),
            ("identical (quest.)", "identical_rate/question"),
            ("CHAIR_i chosen", "chosen_chair_i"), ("CHAIR_i rejected", "rejected_chair_i"),
            ("rej. names more", "rejected_names_more"),
            ("rej. names fewer", "rejected_names_fewer"),
            ("chosen less halluc.", "chosen_fewer_hallucinations"),
            ("rejected less halluc.", "rejected_fewer_hallucinations")]  # fmt: skip
    lines = ["| augmentation | " + " | ".join(c for c, _ in cols) + " | words rej. - chosen |",
             "|" + "---|" * (len(cols) + 2)]  # fmt: skip
    for name, entry in result.items():
        st = entry["stats"]
        cells = [f"{100 * st[k]:.0f}%" for _, k in cols]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {st['rejected_minus_chosen_words']:+.1f} |"
        )
    return "\n".join(lines)


def training_stats(folder: Path) -> dict[str, float]:
    """Means over a DPO run's last epoch (from its metrics.csv): reward accuracy and margin,
    identical-pair rate, pairs kept per step; empty for runs without DPO steps."""
    import csv

    files = sorted(folder.rglob("metrics.csv"))
    if not files:
        return {}
    rows = list(csv.DictReader(files[-1].open()))
    keys = {
        "reward_accuracy": "train/rewards/accuracies",
        "reward_margin": "train/rewards/margins",
        "identical_rate": "train/pairs/identical_rate",
        "pairs_kept": "train/pairs/kept",
    }
    steps = [r for r in rows if r.get("train/loss")]
    if not steps or "train/rewards/accuracies" not in steps[0]:
        return {}
    last = steps[len(steps) // 2 :]  # the second of two epochs
    out = {}
    for name, key in keys.items():
        values = [float(r[key]) for r in last if r.get(key) and not math.isnan(float(r[key]))]
        out[name] = statistics.fmean(values) if values else float("nan")
    return out


def format_training(jobs: list[Job]) -> str:
    lines = ["| run | reward accuracy | reward margin | identical rate | pairs kept / step |",
             "|---|---|---|---|---|"]  # fmt: skip
    for job in jobs:
        st = training_stats(job.out)
        if st:
            lines.append(f"| {job.name} | {st['reward_accuracy']:.2f} | {st['reward_margin']:.3f} "
                         f"| {st['identical_rate']:.2f} | {st['pairs_kept']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def aggregate(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = runs[0].keys()
    return {k: {"mean": statistics.fmean(r[k] for r in runs),
                "std": statistics.pstdev([r[k] for r in runs]) if len(runs) > 1 else 0.0}
            for k in keys}  # fmt: skip


def format_rows(rows: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per setting, mean +- std over its runs, percent."""
    head = ["setting", "runs", "CHAIR_i", "CHAIR_s", "coverage", "count err", "POPE F1", "adv F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        agg = aggregate(runs)
        cells = []
        for key in HEADLINE:
            scale = 1.0 if "/pope/" in key else 100.0
            m, s = agg[key]["mean"] * scale, agg[key]["std"] * scale
            cells.append(f"{m:.1f}" if len(runs) == 1 else f"{m:.1f} ± {s:.1f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="toy_world.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/toy_world"), help="output folder")
    p.add_argument("--stage", choices=["select", "test", "audit", "all"], default="all")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    args = p.parse_args(argv)
    from lightning_aug_dpo.data.toy_world import write_toy_world

    args.out = args.out.resolve()  # subprocesses run in their own folders
    world = args.out / "world"
    if not (world / "world.json").is_file():
        write_toy_world(world)
    t0 = time.time()
    if args.stage in ("select", "all"):
        chosen = select(args.out, world, args.workers)
    elif args.stage == "audit":
        chosen = {}
    else:
        chosen = json.loads((args.out / "selected.json").read_text())["selected"]
    if args.stage in ("test", "all"):
        test(args.out, world, args.workers, chosen)
    if args.stage in ("audit", "all"):
        audit(args.out, world, args.workers)
    print(f"wall time {time.time() - t0:.0f} s with {args.workers} workers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
