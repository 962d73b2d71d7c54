"""The toy world: deterministic writer, priors, true SFT answers, exact scoring (hand-computed),
POPE probe files; the epoch-end callback and the standalone job on the tiny LLaVA."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_aug_dpo import ToyWorldCallback
from lightning_aug_dpo.data.toy_world import (
    DESCRIBE_PROMPTS,
    PRIOR_PAIRS,
    SPLIT_SEEDS,
    ToyObject,
    ToyScene,
    build_split,
    kind_statistics,
    pope_probes,
    sft_turns,
    write_toy_world,
)
from lightning_aug_dpo.eval import load_pope, read_scores
from lightning_aug_dpo.eval.toy_world import (
    ToyBenchmark,
    format_toy_table,
    load_toy_benchmark,
    score_answer,
    score_descriptions,
    score_toy,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import toy_world_eval as toy_job  # noqa: E402

SIZES = {"train": 40, "pool": 8, "val": 12, "test": 12}
PARTNER = {" ".join(a): " ".join(b) for a, b in PRIOR_PAIRS.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "world"
    write_toy_world(root, SIZES)
    return root


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _kind(question: str) -> str:
    """``Is there a red circle in the image?`` -> ``red circle``."""
    return " ".join(question.split()[3:5])


# ------------------------------------------------------------------ the world on disk
def test_writer_is_deterministic_sized_and_disjoint(world: Path, tmp_path: Path) -> None:
    write_toy_world(tmp_path / "again", SIZES)
    first, second = _files(world), _files(tmp_path / "again")
    assert list(first) == list(second) and first == second  # byte-identical
    train = json.loads((world / "train.json").read_text())
    assert len(train) == 40 and len((world / "pool.jsonl").read_text().splitlines()) == 8
    for split in ("val", "test"):
        assert len((world / split / "descriptions.jsonl").read_text().splitlines()) == 12
        for sampling in ("random", "popular", "adversarial"):
            probes = world / split / "pope" / f"coco_pope_{sampling}.json"
            assert len(probes.read_text().splitlines()) == 24  # one yes, one no per image
    pngs = {s: sorted((world / "images" / s).glob("*.png")) for s in SIZES}
    assert {s: len(p) for s, p in pngs.items()} == SIZES
    # disjoint by id (the split prefixes the name) and by content (no image repeats anywhere)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for ps in pngs.values() for p in ps]
    assert len(set(digests)) == sum(SIZES.values())
    scenes = json.loads((world / "scenes.json").read_text())
    assert len(scenes) == sum(SIZES.values())
    assert len({json.dumps(s, sort_keys=True) for s in scenes.values()}) == len(scenes)


def _partner_rate(split: str, n: int) -> tuple[float, int]:
    anchored = with_partner = 0
    for item in build_split(split, n):
        names = item.scene.names()
        for anchor, partner in PARTNER.items():
            if anchor in names:
                anchored += 1
                with_partner += partner in names
    return with_partner / anchored, anchored


def test_priors_hold_in_train_and_break_in_val_and_test() -> None:
    rate, anchored = _partner_rate("train", 400)
    assert anchored > 100 and abs(rate - 0.9) < 0.05
    for split in ("val", "test"):
        rate, anchored = _partner_rate(split, 300)
        # 0.5 by construction, a little more where the partner was drawn before its anchor
        assert anchored > 100 and 0.4 < rate < 0.65, (split, rate)


def test_every_sft_answer_is_true_for_its_scene(world: Path) -> None:
    import random

    scenes = json.loads((world / "scenes.json").read_text())
    conversations = [
        (ToyScene.from_record(scenes[row["image"]]), row["conversations"])
        for row in json.loads((world / "train.json").read_text())
    ]
    rng = random.Random(0)  # and many more scenes than the fixture writes, without rendering
    for item in build_split("train", 300):
        turns = sft_turns(item.scene, rng)
        conv = [{"value": v} for q, a in turns for v in (q, a)]
        conversations.append((item.scene, conv))
    descriptions = 0
    for scene, conv in conversations:
        for human, gpt in zip(conv[::2], conv[1::2], strict=True):
            question = human["value"].removeprefix("<image>\n")
            s = score_answer(gpt["value"], scene)
            assert s["size_errors"] == s["position_errors"] == 0 and not s["count_error"]
            if gpt["value"].startswith("No, there is no "):  # a negated kind names nothing
                kind = _kind(question)
                assert s["mentioned"] == [] and kind not in scene.names()
                continue
            assert s["hallucinated"] == [], gpt["value"]
            if question in DESCRIBE_PROMPTS:
                descriptions += 1
                assert s["covered"] == s["objects"] == len(scene.objects)
                assert s["placed"] == s["sized"] == len(scene.objects)
    assert descriptions > 300


# ------------------------------------------------------------------ scoring, by hand
def _scene(*objects: tuple[str, str, str, int]) -> ToyScene:
    objs = tuple(ToyObject(c, k, size, col) for c, k, size, col in objects)
    return ToyScene(objs, (32,) * len(objs), (0,) * len(objs), 0)


CRAFTED = {
    "a": (
        _scene(("red", "circle", "large", 0), ("blue", "square", "small", 1)),
        # one hallucinated kind whose shape is absent (not a colour error); a repeat counted once
        "There are two shapes in the image: a large red circle on the left, a small blue square "
        "in the middle and a small orange triangle on the right. The red circle is big.",
    ),
    "b": (
        _scene(("green", "triangle", "small", 2)),
        # wrong size and column; a colour error (a triangle is there, not a blue one)
        "I can see a large green triangle in the middle and a blue triangle.",
    ),
    "c": (
        _scene(
            ("yellow", "triangle", "large", 0),
            ("green", "circle", "small", 1),
            ("purple", "square", "large", 2),
        ),
        # wrong count, a wrong column, the purple square left out
        "There are two shapes: a yellow triangle on the left and a small green circle on the left.",
    ),
    "d": (
        _scene(("green", "triangle", "small", 2)),
        "There is one shape in the image: a small green triangle on the right.",
    ),
}


def test_score_answer_counts_by_hand() -> None:
    scene, text = CRAFTED["b"]
    assert score_answer(text, scene) == {
        "mentioned": ["green triangle", "blue triangle"], "hallucinated": ["blue triangle"],
        "covered": 1, "objects": 1, "colour_errors": 1, "size_errors": 1, "sized": 1,
        "position_errors": 1, "placed": 1, "count": None, "count_error": False, "words": 14,
    }  # fmt: skip
    a = score_answer(*reversed(CRAFTED["a"]))
    assert a["mentioned"] == ["red circle", "blue square", "orange triangle"]
    assert (a["colour_errors"], a["sized"], a["placed"], a["count"]) == (0, 2, 2, 2)


def test_description_metrics_by_hand() -> None:
    scenes = {k: s for k, (s, _) in CRAFTED.items()}
    answers = {k: t for k, (_, t) in CRAFTED.items()}
    words = sum(len(t.split()) for t in answers.values())
    metrics = score_descriptions(scenes, answers)
    # distinct mentions 3 + 2 + 2 + 1 = 8, of which 2 hallucinated (a: orange triangle, b: blue
    # triangle); objects 2 + 1 + 3 + 1 = 7, named 2 + 1 + 2 + 1 = 6; sized mentions of present
    # kinds 2 + 1 + 1 + 1 (1 wrong), placed 2 + 1 + 2 + 1 (b and c wrong); counts in a, c, d
    assert metrics == pytest.approx({
        "chair_i": 2 / 8, "chair_s": 2 / 4, "coverage": 6 / 7, "colour_errors": 1 / 8,
        "size_errors": 1 / 5, "position_errors": 2 / 6, "count_errors": 1 / 3,
        "mentions_per_answer": 8 / 4, "words_per_answer": words / 4,
    })  # fmt: skip
    bench = ToyBenchmark(
        {k: "Describe the image in detail." for k in scenes}, scenes,
        {k: Path(f"{k}.png") for k in scenes}, None,
    )  # fmt: skip
    toy = score_toy(bench, answers)
    assert toy["toy/chair_i"] == 0.25 and not any("/pope/" in k for k in toy)
    table = format_toy_table({"base": toy}).splitlines()
    assert table[0].split()[1:] == [
        "CHAIR_i", "CHAIR_s", "cover", "colour", "count", "POPE-F1", "POPE-acc", "adv-F1"
    ]  # fmt: skip
    assert table[1].split() == ["base", "25.0", "50.0", "85.7", "12.5", "33.3", "-", "-", "-"]
    with pytest.raises(ValueError, match=r"no answer for toy-world questions \['d'\]"):
        score_descriptions(scenes, {k: answers[k] for k in "abc"})


# ------------------------------------------------------------------ POPE probes
def test_pope_probe_files_load_and_hold_by_construction(world: Path) -> None:
    bench = load_pope(world / "val" / "pope", world / "images")  # images are checked here
    scenes = json.loads((world / "scenes.json").read_text())
    assert len(bench.items) == 3 * 2 * 12
    for item in bench.items.values():
        names = ToyScene.from_record(scenes[item.image]).names()
        assert (_kind(item.question) in names) == (item.label == "yes")


def test_adversarial_negative_is_the_missing_prior_partner() -> None:
    freq, pairs = kind_statistics(build_split("train", 6000))
    images = build_split("test", 300)
    probes = pope_probes(images, freq, pairs, SPLIT_SEEDS["test"] + 11)
    negative = {r["image"]: _kind(r["text"]) for r in probes["adversarial"] if r["label"] == "no"}
    checked = 0
    for item in images:
        names = item.scene.names()
        missing = {PARTNER[a] for a in names if a in PARTNER and PARTNER[a] not in names}
        if missing:
            checked += 1
            assert negative[item.image] in missing, (sorted(names), negative[item.image])
    assert checked > 50
    popular = {r["image"]: _kind(r["text"]) for r in probes["popular"] if r["label"] == "no"}
    assert all(popular[i.image] not in i.scene.names() for i in images)


def test_limited_keeps_the_probes_of_kept_images_only(world: Path) -> None:
    full = load_toy_benchmark(world / "val", world / "images")
    bench = load_toy_benchmark(world / "val", world / "images", limit=5)
    assert list(bench.questions) == list(full.questions)[:5]
    kept = {str(p) for p in bench.images.values()}
    assert bench.pope is not None and len(bench.pope.items) == 5 * 2 * 3
    assert {str(p) for p in bench.pope.images.values()} == kept
    assert load_toy_benchmark(world / "val", world / "images", pope=False).pope is None


# ------------------------------------------------------------------ callback and job
def _fake_trainer(root: Path, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=0, world_size=1, is_global_zero=True, current_epoch=epoch, loggers=[],
        default_root_dir=str(root), strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
        max_epochs=epoch + 1, max_steps=-1, global_step=0,
    )  # fmt: skip


def test_callback_writes_scores_and_logs_toy_metrics(make_module, world: Path, tmp_path) -> None:
    cb = ToyWorldCallback(split_dir=str(world / "val"), limit=3, max_new_tokens=4)
    assert not cb.needs_judge and cb.image_dir == world / "images"
    module, logged = make_module(), {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)  # no Trainer needed
    cb.on_train_epoch_end(_fake_trainer(tmp_path, epoch=1), module)  # last epoch: due
    out = tmp_path / "eval" / "toy" / "epoch=1"
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 3 + 3 * 2 * 3 and all(set(r) == {"id", "prompt", "answer"} for r in rows)
    assert rows[0]["id"] == "val_00000" and rows[3]["id"] == "pope:random/val_00000/yes"
    scores = read_scores(out)
    assert scores["complete"] and scores["model"]["model"] == "policy" and scores["judge"] is None
    assert scores["table"].startswith("model") and "policy" in scores["table"]
    expected = score_toy(cb.bench(), {r["id"]: r["answer"] for r in rows})
    assert scores["metrics"] == {"toy/complete": 1.0, **expected}
    assert logged == pytest.approx(scores["metrics"])
    assert {"toy/chair_i", "toy/coverage", "toy/pope/adversarial/f1"} <= set(logged)


def test_job_writes_scores_then_resumes_without_regenerating(
    tiny_llava_dir: Path, world: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import lightning_aug_dpo.eval.jobs as jobs

    asked: list[int] = []
    real = jobs.generate_answers

    def counting(model, questions, images, **kwargs):
        asked.append(len([q for q in questions if q not in kwargs.get("done", {})]))
        return real(model, questions, images, **kwargs)

    monkeypatch.setattr(jobs, "generate_answers", counting)
    out = tmp_path / "out"
    argv = ["--split-dir", str(world / "test"), "--out", str(out), "--limit", "2"]
    model = ["--model", str(tiny_llava_dir), "--dtype", "float32", "--max-new-tokens", "3",
             "--device", "cpu", "--batch-size", "16"]  # fmt: skip
    assert toy_job.main([*argv, *model]) == 0 and asked == [14]
    answers = (out / "answers.jsonl").read_bytes()
    first = read_scores(out)
    assert first["questions"] == 14 and first["descriptions"] == 2 and first["complete"]
    assert "CHAIR_i" in capsys.readouterr().out
    # complete: no model is loaded, nothing is generated, the same answers and metrics
    assert toy_job.main(argv) == 0 and asked == [14]
    assert (out / "answers.jsonl").read_bytes() == answers
    assert read_scores(out)["metrics"] == first["metrics"]
    # one answer lost: only that one is generated again
    progress = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text("\n".join(progress[1:]) + "\n")
    assert toy_job.main([*argv, *model]) == 0 and asked == [14, 1]
    assert len((out / "progress.jsonl").read_text().splitlines()) == 14


def test_job_bad_split_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert toy_job.main(["--split-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "descriptions.jsonl: toy-world descriptions not found" in capsys.readouterr().err


def test_callback_under_validate_by_class_path(demo_assets, world: Path, tmp_path, monkeypatch):
    from lightning_aug_dpo.cli import cli_main

    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    callback = {
        "class_path": "lightning_aug_dpo.ToyWorldCallback",
        "init_args": {"split_dir": str(world / "val"), "limit": 2, "max_new_tokens": 3},
    }
    (tmp_path / "toy.yaml").write_text(json.dumps({"trainer": {"callbacks": [callback]}}))
    cli = cli_main(
        ["validate", "--config", str(ROOT / "configs" / "demo_mmvet.yaml"),
         "--config", str(tmp_path / "toy.yaml"),
         "--data.init_args.num_prompts=8", "--data.init_args.num_val_prompts=4"]
    )  # fmt: skip
    logged = cli.trainer.callback_metrics
    assert {"toy/chair_i", "toy/chair_s", "toy/coverage", "toy/pope/mean/f1"} <= set(logged)
    (scores,) = (tmp_path / "runs").rglob("eval/toy/epoch=0/scores.json")
    assert json.loads(scores.read_text())["descriptions"] == 2


def test_run_summary_picks_up_toy_metrics(tmp_path: Path) -> None:
    import torch

    from lightning_aug_dpo import RunSummary

    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), global_step=1, is_global_zero=True,
        callback_metrics={"toy/chair_i": torch.tensor(0.25), "train/loss": torch.tensor(0.7),
                          "toy/pope/random/recall": torch.tensor(50.0)},
    )  # fmt: skip
    module = SimpleNamespace(train_metrics=SimpleNamespace(compute=lambda: {}))
    summary = RunSummary().summary(trainer, module)  # type: ignore[arg-type]
    # one unit: the fraction 0.25 is 25 percent, under a key that says so
    assert summary["toy/chair_i_pct"] == 25.0 and "toy/chair_i" not in summary
    assert "train/loss" not in summary and "train/loss_pct" not in summary
    # the headline only; eval/toy/ has the rest
    assert not any(k.startswith("toy/pope/random/") for k in summary)
