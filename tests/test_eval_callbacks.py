"""Benchmark callbacks and answer generation: sharding, output layout, outage and resume,
``validate``; the tiny model answers for real where it matters."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lightning_aug_dpo import LLaVABenchCallback, MMVetCallback, POPECallback
from lightning_aug_dpo.eval import OpenAIJudge, generate_answers, load_mmvet_dir, read_scores
from lightning_aug_dpo.eval.stub_server import StubChatServer


class FakeModel:
    """Answers ``"yes <question>"``; records what each call saw."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def preprocess_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        assert all(i.dtype == torch.uint8 and i.shape[0] == 3 for i in images)
        return torch.zeros(len(images), 3, 4, 4)

    def generate(self, pixels, questions, max_new_tokens=64, use_reference=True) -> list[str]:
        assert not use_reference and pixels.shape[0] == len(questions)
        self.calls.append(list(questions))
        return [f"yes {q}" for q in questions]


def fake_trainer(root: Path, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=0,
        world_size=1,
        is_global_zero=True,
        current_epoch=epoch,
        loggers=[],
        default_root_dir=str(root),
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)


def test_generation_is_sharded_batched_and_gathered(demo_assets) -> None:
    bench = load_mmvet_dir(demo_assets["benchmark"].parent, limit=7)
    questions = {q: i.question for q, i in bench.items.items()}
    single = generate_answers(FakeModel(), questions, bench.images, batch_size=3)
    assert list(single) == list(questions) and single["v1_0"] == f"yes {questions['v1_0']}"

    models, parts = [FakeModel(), FakeModel()], {}
    for rank in (1, 0):  # rank 1 first, so that rank 0's gather can return both shards

        def gather(obj, world, rank=rank):
            parts[rank] = obj
            return [parts.get(0, {}), parts.get(1, {})]

        out = generate_answers(
            models[rank], questions, bench.images, batch_size=2, rank=rank, world_size=2,
            gather=gather,
        )  # fmt: skip
    assert out == single
    asked = [[q for call in m.calls for q in call] for m in models]
    assert asked == [[questions[f"v1_{i}"] for i in (0, 2, 4, 6)],
                     [questions[f"v1_{i}"] for i in (1, 3, 5)]]  # fmt: skip
    assert [len(c) for c in models[0].calls] == [2, 2]  # batches of 2


def test_generation_resumes_and_names_bad_images(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (255, 0, 0))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    model = FakeModel()
    out = generate_answers(
        model, {"x": "Q1", "y": "Q2"}, {"x": tmp_path / "a.png", "y": tmp_path / "a.png"},
        done={"x": "kept"},
    )  # fmt: skip
    assert out == {"x": "kept", "y": "yes Q2"} and model.calls == [["Q2"]]
    with pytest.raises(ValueError, match=r"bad\.png: cannot read the image of question 'z'"):
        generate_answers(model, {"z": "Q"}, {"z": tmp_path / "bad.png"})


def test_mmvet_callback_with_the_tiny_model(make_module, demo_assets, tmp_path: Path) -> None:
    cb = MMVetCallback(
        data_dir=str(demo_assets["benchmark"].parent), limit=3, max_new_tokens=3, batch_size=2
    )
    metrics = cb.evaluate(fake_trainer(tmp_path, epoch=2), make_module())
    out = tmp_path / "eval" / "mmvet" / "epoch=2"
    answers = json.loads((out / "answers.json").read_text())
    grades = json.loads((out / "grades.json").read_text())
    scores = read_scores(out)
    assert list(answers) == ["v1_0", "v1_1", "v1_2"] and all(
        isinstance(a, str) for a in answers.values()
    )
    assert set(grades) == set(answers) and all(g["model"] == ["rule"] for g in grades.values())
    expected = 100 * sum(g["score"][0] for g in grades.values()) / 3
    assert metrics["mmvet/total"] == pytest.approx(expected) and metrics["mmvet/complete"] == 1.0
    assert scores["complete"] and scores["judge"] == {"class": "RuleJudge", "model": "rule"}
    assert scores["scores"]["total"] == pytest.approx(expected)


def test_judge_outage_marks_the_epoch_incomplete_then_resumes(demo_assets, tmp_path: Path) -> None:
    with StubChatServer(lambda body: "0.5") as server:
        judge = OpenAIJudge(base_url=server.base_url, model="m", max_retries=1, backoff=0.01)
        cb = MMVetCallback(data_dir=str(demo_assets["benchmark"].parent), judge=judge, limit=3)
        server.fail_next(*["503"] * 4)  # the first question's retries and a second worker's
        judge.concurrency = 1
        with pytest.warns(UserWarning, match=r"epoch=0 is incomplete \(.*HTTP 503"):
            metrics = cb.evaluate(fake_trainer(tmp_path, epoch=0), FakeModel())
        assert metrics == {"mmvet/complete": 0.0}  # no score logged, training goes on
        first = read_scores(tmp_path / "eval" / "mmvet" / "epoch=0")
        assert not first["complete"] and "HTTP 503" in first["error"]
        server.faults.clear()
        sent = len(server.requests)
        metrics = cb.evaluate(fake_trainer(tmp_path, epoch=1), FakeModel())
    assert metrics["mmvet/complete"] == 1.0 and metrics["mmvet/total"] == 50.0
    redone = read_scores(tmp_path / "eval" / "mmvet" / "epoch=0")
    assert redone["complete"] and redone["scores"]["total"] == 50.0
    # epoch 0 resumed from the cache (3 questions) + epoch 1's identical requests: cached too
    assert len(server.requests) == sent + 3
    assert (tmp_path / "eval" / "mmvet" / "judge_cache.jsonl").is_file()


def llava_bench_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"question_id": 0, "image": "a.jpg", "text": "What is it?", "category": "conv"},
        {"question_id": 1, "image": "a.jpg", "text": "Describe it.", "category": "detail"},
    ]
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "context.jsonl").write_text(
        json.dumps({"id": "a", "image": "a.jpg", "caption": "A large red square."}) + "\n"
    )
    refs = [{"question_id": q, "text": "A large red square.", "answer_id": f"g{q}"} for q in (1, 0)]
    (root / "answers_gpt4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    _png(root / "images" / "a.jpg", (200, 0, 0))
    return root


def test_llava_bench_callback_writes_official_files(tmp_path: Path) -> None:
    data = llava_bench_dir(tmp_path / "bench")
    with StubChatServer(lambda body: "8 4\nfine") as server:
        judge = OpenAIJudge(base_url=server.base_url, model="m")
        cb = LLaVABenchCallback(data_dir=str(data), judge=judge, runs=2)
        metrics = cb.evaluate(fake_trainer(tmp_path / "run"), FakeModel())
    out = tmp_path / "run" / "eval" / "llava_bench" / "epoch=0"
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [0, 1] and answers[0]["model_id"] == "policy"
    review = json.loads((out / "reviews-run2.jsonl").read_text().splitlines()[0])
    assert review["tuple"] == [8.0, 4.0] and review["answer1_id"] == "g0"
    assert review["answer2_id"] == "policy-0" and review["category"] == "llava_bench_conv"
    assert metrics["llava_bench/overall"] == 50.0 and metrics["llava_bench/failed"] == 0.0
    assert set(metrics) >= {"llava_bench/conv", "llava_bench/detail", "llava_bench/complete"}
    assert len(server.requests) == 4  # 2 questions x 2 runs
    assert read_scores(out)["judge"]["model"] == "m"


def test_pope_callback_scores_yes_no(tmp_path: Path) -> None:
    rows = [
        {"question_id": 1, "image": "c.jpg", "text": "Is there a dog?", "label": "yes"},
        {"question_id": 2, "image": "c.jpg", "text": "Is there a cat?", "label": "no"},
    ]
    for split in ("random", "adversarial"):
        (tmp_path / f"coco_pope_{split}.json").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    _png(tmp_path / "coco" / "c.jpg", (0, 0, 200))
    cb = POPECallback(
        data_dir=str(tmp_path), image_dir=str(tmp_path / "coco"), splits=["random", "adversarial"]
    )
    model = FakeModel()
    metrics = cb.evaluate(fake_trainer(tmp_path / "run"), model)
    assert model.calls[0][0].endswith("\nAnswer the question using a single word or phrase.")
    # the fake model always says yes: accuracy 50, precision 50, recall 100, yes-ratio 100
    assert metrics["pope/random/accuracy"] == 50.0 and metrics["pope/adversarial/recall"] == 100.0
    assert metrics["pope/f1"] == pytest.approx(200 / 3) and metrics["pope/yes_ratio"] == 100.0
    out = tmp_path / "run" / "eval" / "pope" / "epoch=0"
    assert len((out / "answers-random.jsonl").read_text().splitlines()) == 2


def test_due_epochs() -> None:
    cb = MMVetCallback(data_dir="x", every_n_epochs=5)

    def trainer(epoch: int, max_epochs, max_steps: int = -1, step: int = 0) -> SimpleNamespace:
        return SimpleNamespace(
            current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps, global_step=step
        )

    assert cb._due(trainer(4, 10)) and not cb._due(trainer(3, 10))
    assert cb._due(trainer(2, 3))  # last epoch
    assert cb._due(trainer(0, None, max_steps=10, step=10))  # step-limited run ends


def test_callback_runs_under_validate(demo_assets, tmp_path: Path, monkeypatch) -> None:
    from lightning_aug_dpo.cli import cli_main

    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "eval.yaml"
    callback = {
        "class_path": "lightning_aug_dpo.MMVetCallback",
        "init_args": {"data_dir": "demo_assets/data/mmvet", "limit": 4, "max_new_tokens": 3},
    }
    overlay.write_text(json.dumps({"trainer": {"callbacks": [callback]}}))
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo_mmvet.yaml"
    cli = cli_main(
        ["validate", "--config", str(demo), "--config", str(overlay),
         "--data.init_args.num_prompts=8", "--data.init_args.num_val_prompts=4"]
    )  # fmt: skip
    assert "mmvet/total" in cli.trainer.callback_metrics
    runs = list((tmp_path / "runs").rglob("eval/mmvet/epoch=0/scores.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["questions"] == 4


def test_eval_overlay_builds_judges_by_class_path() -> None:
    from lightning_aug_dpo.cli import cli_main
    from lightning_aug_dpo.eval import OpenAIJudge

    configs = Path(__file__).resolve().parents[1] / "configs"
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
    cli = cli_main(
        ["--config", str(configs / "seva_llava15_7b.yaml"),
         "--config", str(configs / "eval" / "seva_benchmarks.yaml"), *cpu],
        run=False,
    )  # fmt: skip
    found = {type(cb).__name__: cb for cb in cli.trainer.callbacks}
    assert {"MMVetCallback", "LLaVABenchCallback", "POPECallback", "AdapterCheckpoint"} <= set(
        found
    )
    judge = found["MMVetCallback"].judge
    assert isinstance(judge, OpenAIJudge) and judge.name == "gpt-4-0613" and judge.concurrency == 8
    assert found["LLaVABenchCallback"].runs == 3
