"""The rollout engine: one batched ``generate`` for both images, sampling, stop strings, filters
and the per-step rollout statistics."""

from __future__ import annotations

import pytest
import torch
from test_datamodule import datamodule, no_augmentation, prompt_batch

from lightning_aug_dpo import DiffusionNoise
from lightning_aug_dpo.data.filters import IdenticalFilter, LengthFilter
from lightning_aug_dpo.data.rollouts import pair_id, prompt_id_of
from lightning_aug_dpo.generation import cut_at_stop, generated_lengths
from lightning_aug_dpo.types import Sampling

EOS, PAD = 2, 0


def test_generated_lengths_count_through_eos_and_stop_at_pad() -> None:
    new_tokens = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # EOS after two tokens: 3 generated, finished
            [5, 6, 7, 8, 9],  # cut by max_new_tokens
            [5, PAD, PAD, PAD, PAD],  # stopped by a stop string: pad follows, no EOS
            [EOS, PAD, PAD, PAD, PAD],  # an immediate EOS
        ]
    )
    lengths, eos = generated_lengths(new_tokens, EOS, PAD)
    assert lengths == [3, 5, 1, 1]
    assert eos == [True, False, False, True]
    # a tokenizer whose pad is its EOS (LLaVA-1.5's): the first EOS ends the answer
    lengths, eos = generated_lengths(torch.tensor([[5, EOS, EOS], [5, 6, 7]]), EOS, EOS)
    assert (lengths, eos) == ([2, 3], [True, False])
    assert generated_lengths(torch.zeros((2, 0), dtype=torch.long), EOS, PAD) == ([0, 0], [0, 0])


def test_cut_at_stop_takes_the_earliest_stop_string() -> None:
    assert cut_at_stop("a cat. USER: hi", ["USER:", "."]) == ("a cat", True)
    assert cut_at_stop("a cat", ["USER:"]) == ("a cat", False)
    assert cut_at_stop("a cat", []) == ("a cat", False)


def test_sampling_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="temperature"):
        Sampling(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=1.5)
    with pytest.raises(ValueError, match="do_sample"):
        Sampling(num_samples=2)
    with pytest.raises(ValueError, match="empty"):
        Sampling(stop_strings=[""])


def test_pair_ids_with_several_samples_round_trip() -> None:
    assert pair_id("p1", 0, 1) == "p1"
    assert pair_id("p1#x", 1, 2) == "p1#x#1"
    assert prompt_id_of({"id": "p1#x#1", "sample": 1}) == "p1#x"
    assert prompt_id_of({"id": "p1#x"}) == "p1#x"


def count_generate_calls(module) -> list[int]:
    """Record the batch size of each real ``generate`` call (a spy: the call still runs)."""
    sizes: list[int] = []
    generate = module.model.generate

    def spy(*args, **kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)

    module.model.generate = spy
    return sizes


def test_clean_and_augmented_rollouts_share_one_generate_call(make_module, demo_assets) -> None:
    module = make_module()
    dm = datamodule(demo_assets, augmentation=DiffusionNoise(noise_step=800), drop_identical=False)
    sizes = count_generate_calls(module)
    batch = dm.make_pairs(prompt_batch(4), module, epoch=0)
    assert sizes == [8]  # 4 clean + 4 augmented rows, one call
    # the same answers as two separate greedy calls
    questions = prompt_batch(4).questions
    clean = module.generate(batch.pixel_values, questions, 8, use_reference=True)
    rejected = module.generate(batch.aug_pixel_values, questions, 8, use_reference=True)
    assert [r["chosen"] for r in batch.meta["rows"]] == clean
    assert [r["rejected"] for r in batch.meta["rows"]] == rejected
    stats = batch.meta["stats"]
    assert stats.candidates == 4 and stats.rollout_seconds > 0
    # 8 answers, each 1..8 tokens (EOS included); finished ones ended by EOS
    assert 8 <= stats.chosen_tokens + stats.rejected_tokens <= 64
    assert 0 <= stats.finished <= 8


def test_sampling_several_samples_is_seeded(make_module, demo_assets) -> None:
    module = make_module()
    sampling = Sampling(do_sample=True, temperature=1.5, top_p=0.95, num_samples=3)

    def pairs(seed: int) -> list[dict]:
        dm = datamodule(demo_assets, sampling=sampling, drop_identical=False, seed=seed)
        batch = dm.make_pairs(prompt_batch(2), module, epoch=0)
        assert batch.meta["stats"].candidates == 6 and len(batch) == 6
        return batch.meta["rows"]

    rows = pairs(seed=1)
    assert [r["id"] for r in rows] == ["p0#0", "p0#1", "p0#2", "p1#0", "p1#1", "p1#2"]
    assert [r["sample"] for r in rows] == [0, 1, 2, 0, 1, 2]
    assert rows == pairs(seed=1)  # same seed, same samples (and the same augmentation)
    # three samples of one prompt on one image differ: sampling happened
    assert len({r["chosen"] for r in rows[:3]}) > 1
    assert [r["chosen"] for r in rows] != [r["chosen"] for r in pairs(seed=2)]
    # the global RNG is left alone
    state = torch.get_rng_state()
    pairs(seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_stop_strings_end_answers_and_count_as_finished(make_module, demo_assets) -> None:
    module = make_module()
    pixels = module.preprocess_images(prompt_batch(2).images)
    questions = prompt_batch(2).questions
    greedy = module.rollout(pixels, questions, 12, use_reference=True)
    text = greedy[0].text
    # a two-letter piece from the middle of the (random model's) greedy answer
    starts = [i for i in range(3, len(text) - 1) if text[i : i + 2].isascii()]
    starts = [i for i in starts if text[i : i + 2].isalpha()]
    assert starts, greedy
    stop = text[starts[0] : starts[0] + 2]
    stopped = module.rollout(pixels, questions, 12, True, Sampling(stop_strings=[stop]))
    assert stopped[0].text == text[: text.find(stop)].strip()
    assert stopped[0].finished
    assert stopped[0].num_tokens < greedy[0].num_tokens


def test_filters_are_applied_in_order_and_counted(make_module, demo_assets) -> None:
    module = make_module()
    dm = datamodule(
        demo_assets,
        augmentation=no_augmentation(),
        drop_identical=False,
        filters=[IdenticalFilter(normalize=True), LengthFilter(min_words=1)],
    )
    stats = dm.make_pairs(prompt_batch(3), module).meta["stats"]
    assert stats.kept == 0 and stats.dropped == {"identical_normalized": 3}
    dm = datamodule(demo_assets, augmentation=DiffusionNoise(noise_step=999),
                    filters=[LengthFilter(min_words=1000)])  # fmt: skip
    stats = dm.make_pairs(prompt_batch(4), module).meta["stats"]
    assert stats.kept == 0
    expected = {"identical": stats.identical, "too_short": 4 - stats.identical}
    assert stats.dropped == {k: v for k, v in expected.items() if v}
