"""Atomic outputs: a write killed midway leaves the previous file (or nothing) under the final
name, never a partial one; and a truncated file is refused on load with a message naming it.

A "kill" is a real one: the write runs in a forked child that SIGKILLs itself after writing half
of the bytes, so no ``finally`` or ``except`` of the writer runs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lightning_aug_dpo.atomic import atomic_dir, remove_leftovers, write_json
from lightning_aug_dpo.callbacks import RunSummary
from lightning_aug_dpo.callbacks.pairs_writer import done_path, merge_shards, read_done
from lightning_aug_dpo.checkpoint_io import AtomicCheckpointIO
from lightning_aug_dpo.eval.cache import JudgeCache
from lightning_aug_dpo.eval.files import read_json_dict
from lightning_aug_dpo.eval.judges import Grade
from lightning_aug_dpo.eval.llava_bench import read_answers_jsonl, write_answers_jsonl
from lightning_aug_dpo.eval.mmvet import read_answers, read_grades, write_answers, write_grades
from lightning_aug_dpo.safe_loading import check_adapter_dir


def killed_midway(write: Callable[[], None]) -> None:
    """Run ``write`` in a forked child that is expected to SIGKILL itself (see the hooks)."""
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # no intra-op pool in a forked child
            write()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)  # not killed: the assertion below fails
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def torn_write_text(self: Path, data: str, *args, **kwargs) -> None:
    """``Path.write_text`` that writes half of ``data``, flushes, and dies."""
    with open(self, "w", encoding="utf-8") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
    die()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def same(data):
    return data


def grade_scores(grades: dict[str, Grade]) -> dict[str, list[float]]:
    return {qid: [grade.score] for qid, grade in grades.items()}


def by_question(rows: list[dict]) -> dict[int, dict]:
    return {row["question_id"]: row for row in rows}


def read_scores(path: Path) -> dict:
    return read_json_dict(path, "scores")


ANSWERS_NEW = {f"v1_{i}": "long answer " * 20 for i in range(40)}
GRADES_NEW = {f"v1_{i}": Grade(0.0, "wrong " * 40, "judge") for i in range(40)}
ROWS_NEW = [{"question_id": i, "text": "x" * 300} for i in range(40)]
KINDS = {  # name: (file name, write, read, old data, new data, what `read` gives for data)
    "mmvet-answers": ("answers.json", write_answers, read_answers, {"v1_0": "a cat"},
                      ANSWERS_NEW, same),
    "mmvet-grades": ("grades.json", write_grades, read_grades,
                     {"v1_0": Grade(1.0, "1.0", "judge")}, GRADES_NEW, grade_scores),
    "llava-bench-answers": ("answers.jsonl", write_answers_jsonl, read_answers_jsonl,
                            [{"question_id": 0, "text": "a dog"}], ROWS_NEW, by_question),
    "scores": ("scores.json", write_json, read_scores, {"total": 41.5}, {"total": 99.0}, same),
}  # fmt: skip


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "fresh"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_answers_or_grades_write_killed_midway_leaves_the_previous_file_or_none(
    tmp_path: Path, kind: str, previous: bool
) -> None:
    name, write, read, old, new, expect = KINDS[kind]
    path = tmp_path / name
    if previous:
        write(path, old)

    def torn() -> None:
        Path.write_text = torn_write_text
        write(path, new)

    killed_midway(torn)
    if previous:
        assert read(path) == expect(old)  # intact, and it loads
    else:
        assert not path.exists()
    (leftover,) = [n for n in names(tmp_path) if n != name]  # the torn bytes: a hidden temp
    assert leftover.startswith(f".{name}.tmp-")
    write(path, new)  # the next write of that name clears the dead writer's leftover
    assert names(tmp_path) == [name]
    assert read(path) == expect(new)


def test_a_truncated_answers_or_grades_file_is_refused_naming_it(tmp_path: Path) -> None:
    answers, grades = tmp_path / "answers.json", tmp_path / "grades.json"
    jsonl = tmp_path / "answers.jsonl"
    write_answers(answers, ANSWERS_NEW)
    write_grades(grades, GRADES_NEW)
    write_answers_jsonl(jsonl, ROWS_NEW)
    for path in (answers, grades, jsonl):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{answers}: invalid JSON at line \d+"):
        read_answers(answers)
    with pytest.raises(ValueError, match=rf"{grades}: invalid JSON at line \d+"):
        read_grades(grades)
    with pytest.raises(ValueError, match=rf"{jsonl}: line \d+ is not valid JSON"):
        read_answers_jsonl(jsonl)


def fake_run(tmp_path: Path, prompts: float) -> tuple[SimpleNamespace, SimpleNamespace]:
    """The trainer and module attributes RunSummary reads, for a run in ``tmp_path``."""
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), global_step=int(prompts),
        callback_metrics={}, is_global_zero=True,
    )  # fmt: skip
    metrics = {"pairs/prompts": prompts, "pairs/candidates": prompts, "pairs/kept": prompts}
    module = SimpleNamespace(train_metrics=SimpleNamespace(compute=lambda: metrics))
    return trainer, module


def test_a_summary_write_killed_midway_keeps_the_previous_summary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    RunSummary().on_fit_end(*fake_run(tmp_path, 8.0))
    assert read_json_dict(path, "a run summary")["prompt_visits"] == 8

    def torn() -> None:
        Path.write_text = torn_write_text
        RunSummary().on_fit_end(*fake_run(tmp_path, 64.0))

    killed_midway(torn)
    assert read_json_dict(path, "a run summary")["prompt_visits"] == 8  # the finished run's, whole
    path.write_bytes(path.read_bytes()[:40])  # as a non-atomic writer would have left it
    with pytest.raises(ValueError, match=rf"{path}: invalid JSON"):
        read_json_dict(path, "a run summary")


def test_an_adapter_save_killed_midway_keeps_the_previous_adapter(make_module, tmp_path) -> None:
    module = make_module()
    path = tmp_path / "adapter"
    module.save_adapter(path)
    before = load_file(path / "adapter_model.safetensors")
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(1.0)

    def torn() -> None:
        import peft.peft_model
        from safetensors.torch import save

        def half_then_die(tensors, filename, metadata=None) -> None:
            data = save(tensors, metadata=metadata)
            Path(filename).write_bytes(data[: len(data) // 2])
            die()

        peft.peft_model.safe_save_file = half_then_die
        module.save_adapter(path)

    killed_midway(torn)
    assert check_adapter_dir(path) == path  # a complete adapter, loadable
    after = load_file(path / "adapter_model.safetensors")
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the previous one, unchanged
    (leftover,) = tmp_path.glob(".adapter.tmp-*")  # the torn save, under a hidden name
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: not a complete safetensors"):
        check_adapter_dir(leftover)  # and refused should anyone point init_adapter at it
    module.save_adapter(path)
    assert names(tmp_path) == ["adapter"]  # leftover removed by the next save
    saved = load_file(path / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], before[k] + 1.0) for k in before)


def test_a_kill_between_the_folder_renames_is_repaired_by_the_next_write(tmp_path) -> None:
    path = tmp_path / "merged"
    with atomic_dir(path) as tmp:
        (tmp / "weights").write_text("old")

    def torn() -> None:
        rename = os.rename

        def rename_then_die(src, dst) -> None:
            rename(src, dst)
            if Path(dst).name.startswith(".merged.old-"):
                die()  # the old folder is aside, the new one not yet in place

        os.rename = rename_then_die
        with atomic_dir(path) as tmp:
            (tmp / "weights").write_text("new")

    killed_midway(torn)
    assert not path.exists()  # nothing under the final name: never a partial folder
    remove_leftovers(path)  # what every write of that name does first
    assert names(tmp_path) == ["merged"] and (path / "weights").read_text() == "old"


def torn_torch_save(obj, f, *args, **kwargs) -> None:
    buffer = io.BytesIO()
    torch.serialization.save(obj, buffer)
    Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    die()


def test_a_checkpoint_save_killed_midway_keeps_the_previous_checkpoint(tmp_path) -> None:
    checkpoint_io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, path)

    def torn() -> None:
        torch.save = torn_torch_save
        checkpoint_io.save_checkpoint({"state_dict": {"w": torch.ones(10_000)}, "step": 2}, path)

    killed_midway(torn)
    restored = checkpoint_io.load_checkpoint(path)
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["w"], torch.zeros(3))
    (leftover,) = tmp_path.glob(".last.ckpt.tmp-*")
    assert not leftover.name.endswith(".ckpt")  # never picked up as a checkpoint by a glob
    with pytest.raises(ValueError, match=rf"{leftover}: not a complete checkpoint"):
        checkpoint_io.load_checkpoint(leftover)


@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, keep: float) -> None:
    checkpoint_io, path = AtomicCheckpointIO(), tmp_path / "epoch=0-step=8.ckpt"
    checkpoint_io.save_checkpoint({"state_dict": {"w": torch.ones(10_000)}}, path)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(ValueError, match=r"step=8.ckpt: not a complete checkpoint .*another"):
        checkpoint_io.load_checkpoint(path)


def test_the_judge_cache_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "judge_cache.jsonl"
    cache = JudgeCache(path)
    cache.put({"q": 1}, {"text": "0.5"})
    cache.put({"q": 2}, {"text": "ünïcode"})
    whole = path.read_bytes()
    # killed mid-append, inside a two-byte UTF-8 character: not even decodable
    fragment = '{"key": "abc", "value": {"text": "ü'.encode()[:-1]
    path.write_bytes(whole + fragment)
    reloaded = JudgeCache(path)
    assert len(reloaded) == 2 and reloaded.get({"q": 2}) == {"text": "ünïcode"}
    assert path.read_bytes() == whole  # the fragment is cut off the file
    reloaded.put({"q": 3}, {"text": "1.0"})  # so the next append is a line of its own
    assert len(JudgeCache(path)) == 3


def pair_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_torn_write_is_repaired_and_its_prompt_rolled_out_again(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    rows = [{"id": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(3)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "p3", "cho')
    done_path(out).write_text("p0\np1\n")  # p2's rows were written, its commit was not
    assert merge_shards([out], out) == 2
    assert [r["id"] for r in pair_rows(out)] == ["p0", "p1"]
    assert read_done(out) == {"p0", "p1"}
    # a shard from an interrupted DDP run is merged in (and removed); duplicate ids once
    shard = tmp_path / "pairs.rank1.jsonl"
    shard.write_text(json.dumps(rows[1]) + "\n" + json.dumps({"id": "q", "a": 1}) + "\n")
    done_path(shard).write_text("p1\nq\n")
    assert merge_shards([out, shard], out) == 3
    assert [r["id"] for r in pair_rows(out)] == ["p0", "p1", "q"]
    assert not shard.exists() and not done_path(shard).exists()
    # a damaged line in the middle is an error naming the file and line
    out.write_text('{"id": "p0"}\nnot json\n{"id": "p1"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl: line 2 is not valid JSON"):
        merge_shards([out], out)


def test_leftovers_of_a_killed_writer_that_had_this_process_pid_are_cleared(tmp_path) -> None:
    # A job restarted in a fresh container often gets the killed one's PID (the entry point is
    # PID 1): its leftovers are no live writer's and must still be cleared (or put back).
    path, pid = tmp_path / "merged", os.getpid()
    old = tmp_path / f".merged.old-{pid}-0000abcd"  # killed between the two renames
    old.mkdir()
    (old / "weights").write_text("old")
    (tmp_path / f".merged.tmp-{pid}-0000beef").mkdir()
    remove_leftovers(path)
    assert names(tmp_path) == ["merged"] and (path / "weights").read_text() == "old"
    (tmp_path / f".summary.json.tmp-{pid}-0000cafe").write_text('{"torn')
    write_json(tmp_path / "summary.json", {"done": True})
    assert names(tmp_path) == ["merged", "summary.json"]


def test_a_checkpoint_saved_to_a_file_url_lands_at_that_path(tmp_path, monkeypatch) -> None:
    # Lightning's own CheckpointIO writes file:///x.ckpt to /x.ckpt; so must the atomic one
    # (not to ./file:/x.ckpt under the working directory).
    monkeypatch.chdir(tmp_path)
    url = f"file://{tmp_path}/ckpt/last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 3}, url)
    assert names(tmp_path) == ["ckpt"] and names(tmp_path / "ckpt") == ["last.ckpt"]
    assert AtomicCheckpointIO().load_checkpoint(url) == {"step": 3}
