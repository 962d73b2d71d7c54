"""``lightning-aug-dpo audit`` as a user runs it, the remedies' filters, and the places that
share the audit: predict's summary (PairsWriter) and benchmarks/toy_world.py --stage audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_audit import blurry_pairs

from lightning_aug_dpo.audit_cli import audit_main
from lightning_aug_dpo.callbacks.pairs_writer import PairsWriter, audit_path, summary_path
from lightning_aug_dpo.cli import cli_main, main
from lightning_aug_dpo.data.filters import FlaggedWordsFilter, OpeningFlipFilter
from lightning_aug_dpo.errors import UserInputError
from lightning_aug_dpo.toy_base import TOY_BASE_DIR
from lightning_aug_dpo.types import Rollout

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"image": "a.png", **row}) + "\n" for row in rows))
    return path


def r(text: str) -> Rollout:
    return Rollout(text=text, finished=True)


def test_the_audit_command_prints_the_verdict_and_writes_both_files(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", blurry_pairs())
    out = tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # no verdict wrapped
    command = [str(BIN / "lightning-aug-dpo"), "audit", str(pairs), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DPO can satisfy 100% of these 24 pairs by preferring the shorter answer." in done.stdout
    assert "blurry" in done.stdout and "trl format, 24 pairs" in done.stdout
    report = json.loads((out / "audit.json").read_text())
    assert report["features"]["length"]["accuracy"] == 1.0 and report["format"] == "trl"
    assert report["words"]["unigrams"]["rejected"][0]["term"] == "blurry"
    assert report["lengths"]["counted_by"] == "whitespace"
    assert "## Verdict" in (out / "audit.md").read_text()


def test_user_mistakes_name_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    """Through the console entry point (``main``): a message and exit status 2, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(tmp_path / "nope.jsonl")])
    assert exit_info.value.code == 2
    assert "nope.jsonl: pairs file not found. Fix:" in capsys.readouterr().err
    bad = write_pairs(tmp_path / "bad.jsonl", blurry_pairs(1))
    bad.write_text(bad.read_text() + '{"prompt": "Q", "chosen": "A"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{bad}: line 2: missing 'rejected'" in err
    assert "--skip-bad-rows" in err and err.startswith("lightning-aug-dpo: error:")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserInputError, match="no pairs to audit"):
        audit_main([str(empty)])
    pairs = write_pairs(tmp_path / "p.jsonl", blurry_pairs())
    with pytest.raises(UserInputError, match=r"--tokenizer .*no such folder"):
        audit_main([str(pairs), "--tokenizer", str(tmp_path / "no-model")])
    (tmp_path / "scenes.json").write_text('{"a.png": {"objects": 3}}')
    with pytest.raises(UserInputError, match="not a toy-world scene"):
        audit_main([str(pairs)])  # found beside the pairs file
    with pytest.raises(UserInputError, match=r"threshold=2.0: .*; min_pairs=0: give 1 or more"):
        audit_main([str(pairs), "--scenes", str(tmp_path / "none.json"), "--threshold", "2",
                    "--min-pairs", "0"])  # fmt: skip
    with pytest.raises(UserInputError, match=r"none\.json: scene file not found"):
        audit_main([str(pairs), "--scenes", str(tmp_path / "none.json")])
    skipped = tmp_path / "elsewhere" / "mixed.jsonl"  # no scenes.json beside it
    skipped.parent.mkdir()
    skipped.write_text(pairs.read_text() + "not json\n")
    report = audit_main([str(skipped), "--skip-bad-rows"])
    assert report["rows_skipped"] == 1 and report["pairs"] == 24 and report["scenes"] is None


def test_lengths_in_tokens_of_a_given_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    rows = blurry_pairs(12)
    report = audit_main([str(write_pairs(tmp_path / "p.jsonl", rows)), "--tokenizer",
                         str(TOY_BASE_DIR)])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(TOY_BASE_DIR)
    counts = [len(tokenizer(row["chosen"], add_special_tokens=False)["input_ids"]) for row in rows]
    assert report["lengths"]["unit"] == "tokens"
    assert report["lengths"]["counted_by"] == f"tokenizer {TOY_BASE_DIR}"
    assert report["lengths"]["chosen_mean"] == pytest.approx(sum(counts) / len(counts))
    assert report["features"]["length"]["accuracy"] == 1.0


def test_opening_flip_filter() -> None:
    f = OpeningFlipFilter(openings=["yes", "no"])
    assert f(r("No, there is no red circle."), r("Yes, there is a red circle.")) == "opening_flip"
    assert f(r("Yes, a red one."), r("Yes, a blue one.")) is None  # the same opening
    assert f(r("There is a red circle."), r("Yes.")) is None  # one side opens otherwise
    bare = OpeningFlipFilter(openings=["yes", "no"], only_opening=True)
    assert bare(r("No, a red circle."), r("Yes, a red circle.")) == "opening_flip"
    assert bare(r("No, there is none."), r("Yes, there is one.")) is None
    many = OpeningFlipFilter(openings=["there is", "there are"])
    assert many(r("There is one shape."), r("There are two shapes.")) == "opening_flip"
    with pytest.raises(ValueError, match="two or more"):
        OpeningFlipFilter(openings=["yes"])


def test_flagged_words_filter() -> None:
    f = FlaggedWordsFilter(words=["blurry", "white triangle"])
    assert f(r("A red circle."), r("A red circle. The image is Blurry.")) == "flagged_word"
    assert f(r("A red circle."), r("A small White triangle.")) == "flagged_word"
    assert f(r("A red circle."), r("A white circle and a triangle.")) is None  # not the phrase
    assert f(r("A blurry circle."), r("A blurry square.")) == "flagged_word"
    keep = FlaggedWordsFilter(words=["blurry"], unless_in_chosen=True)
    assert keep(r("A blurry circle."), r("A blurry square.")) is None
    with pytest.raises(ValueError, match="one or more"):
        FlaggedWordsFilter(words=[])


def test_the_remedies_are_selected_in_yaml() -> None:
    configs = ["--config", str(ROOT / "configs" / "seva_toy.yaml"),
               "--config", str(ROOT / "configs" / "toy" / "shortcut_filters.yaml")]  # fmt: skip
    cli = cli_main([*configs, *CPU], run=False)
    names = [type(f).__name__ for f in cli.datamodule.filters]
    assert names == ["IdenticalFilter", "LengthMatchFilter", "OpeningFlipFilter",
                     "OpeningFlipFilter", "FlaggedWordsFilter"]  # fmt: skip
    assert cli.datamodule.filters[3].openings == ["there is", "there are"]
    assert cli.datamodule.filters[4].words == ["three shapes"]


def test_predict_summary_carries_the_audit(tmp_path: Path, capsys) -> None:
    out = write_pairs(tmp_path / "pairs.jsonl", blurry_pairs())
    writer = PairsWriter(str(out))
    writer.on_predict_end(SimpleNamespace(world_size=1, is_global_zero=True), None)
    summary = json.loads(summary_path(out).read_text())
    audit = summary["audit"]
    assert audit["length_accuracy_pct"] == 100.0 and audit["rejected_longer_pct"] == 100.0
    assert audit["verdicts"][0] == (
        "DPO can satisfy 100% of these 24 pairs by preferring the shorter answer."
    )
    assert json.loads(audit_path(out).read_text())["pairs"] == 24
    assert audit_path(out, ".md").is_file()
    printed = capsys.readouterr().out
    assert "pair audit: DPO can satisfy 100%" in printed and "audit: length accuracy" in printed
    quiet = PairsWriter(str(out), audit=False)
    quiet.on_predict_end(SimpleNamespace(world_size=1, is_global_zero=True), None)
    assert "audit" not in json.loads(summary_path(out).read_text())


def test_the_toy_benchmark_audit_is_the_library_audit(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import toy_world as experiment

    from lightning_aug_dpo.audit_truth import TOY_AUDIT_KEYS

    world = tmp_path / "world"
    world.mkdir()
    record = {"objects": [{"color": "red", "kind": "circle", "size": "small", "column": 0}],
              "cy": [30], "cx_jitter": [0], "noise_seed": 1}  # fmt: skip
    (world / "scenes.json").write_text(json.dumps({"pool/a.png": record}))
    folder = tmp_path / "audit" / "diffusion-500"
    folder.mkdir(parents=True)
    rows = [{"id": str(i), "image": "pool/a.png", "prompt": "Describe this picture.",
             "chosen": "There is a small red circle on the left.",
             "rejected": "There are two shapes: a small red circle and a green triangle."}
            for i in range(3)]  # fmt: skip
    rows.append({**rows[0], "id": "same", "rejected": rows[0]["chosen"]})
    write_pairs(folder / "pairs.jsonl", rows)
    (folder / "pairs.jsonl.summary.json").write_text("{}")  # predict has run
    monkeypatch.setattr(experiment, "AUGMENTATIONS", {"SeVa diffusion 500": []})
    result = experiment.audit(tmp_path, world, workers=1)
    stats = result["SeVa diffusion 500"]["stats"]
    assert list(stats) == list(TOY_AUDIT_KEYS)
    assert stats["pairs"] == 4 and stats["identical_rate/description"] == 0.25
    assert stats["rejected_names_more"] == 1.0 and stats["rejected_chair_i"] == 0.5
    assert json.loads((tmp_path / "audit.json").read_text()) == result
    assert (folder / "audit.md").is_file()


def test_the_audit_benchmark_runs_on_a_small_file(tmp_path: Path) -> None:
    """benchmarks/perf/audit.py end to end on 300 pairs (its numbers are not checked: no timing
    in tests); the generated pairs carry the shortcut they are built with."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))
    import audit as bench

    out = tmp_path / "audit.json"
    assert bench.main(["--pairs", "300", "--repeats", "1", "--no-cli", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record) >= {"date", "machine", "settings", "results", "table"}
    assert record["machine"]["python"] and record["settings"]["pairs"] == 300
    assert list(record["results"]) == [
        "read", "audit (words)", "audit (words + scenes)", "audit (tokens + scenes)"
    ]  # fmt: skip
    assert any("shorter answer" in line for line in record["verdicts"])


def test_seva_step3_files_are_audited_too(tmp_path: Path) -> None:
    """SeVa's dumps: chosen / reject as one-element lists, the question with <image>."""
    rows = [{"image_id": f"{i}.jpg", "question": "<image>\nDescribe the image.",
             "chosen": [row["chosen"]], "reject": [row["rejected"]]}
            for i, row in enumerate(blurry_pairs(12))]  # fmt: skip
    path = tmp_path / "seva.json"
    path.write_text(json.dumps(rows))
    report = audit_main([str(path), "--flag-words", "blurry"])
    assert report["format"] == "seva" and report["kinds"][0]["kind"] == "describe the image"
    assert report["features"]["flagged words"]["accuracy"] == 1.0
