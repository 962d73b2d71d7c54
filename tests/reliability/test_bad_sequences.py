"""No training on a sequence whose image tokens would be cut or disagree with its image
features: such a pair is refused and counted (``data.on_bad_pair: skip``) or stops the run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import random_images

from lightning_aug_dpo import AugPairDataModule
from lightning_aug_dpo.data.pairs import PairBatch
from lightning_aug_dpo.validation import IMAGE_TOKEN_MISMATCH, PROMPT_TOO_LONG

LONG_QUESTION = "Describe every object in the picture, its colour and its position. " * 4
ROWS = [  # (question, chosen, rejected, expected problem)
    ("What colour is the circle?", "Red.", "Blue.", None),
    (LONG_QUESTION, "Red.", "Blue.", PROMPT_TOO_LONG),
    ("How many shapes?", "Two <image> shapes.", "Three.", IMAGE_TOKEN_MISMATCH),
    ("Describe it.", "A square.", "A <image>", IMAGE_TOKEN_MISMATCH),
    ("Why?", "Because.", "No idea.", None),
]


def pair_batch(rows: list[tuple] = ROWS) -> PairBatch:
    n = len(rows)
    return PairBatch(
        ids=[f"pair{i}" for i in range(n)],
        indices=list(range(n)),
        image_paths=[f"img{i}.png" for i in range(n)],
        images=random_images(n),
        questions=[r[0] for r in rows],
        chosen=[r[1] for r in rows],
        rejected=[r[2] for r in rows],
        augmentations=[None] * n,
        chosen_finished=[True] * n,
        rejected_finished=[True] * n,
    )


@pytest.fixture
def module(make_module):
    """The tiny LLaVA with ``max_length`` between the short prompts and the long one."""
    built = make_module()
    lengths = [len(built.tokenizer(p).input_ids) for p in built.prompt_texts([r[0] for r in ROWS])]
    short, long = max(lengths[:1] + lengths[2:]), lengths[1]
    assert short + 8 < long  # the long question really is the only one that cannot fit
    built.hparams.max_length = short + 8
    return built


def pairs_data(tmp_path: Path, **kwargs) -> AugPairDataModule:
    return AugPairDataModule(pairs_path=str(tmp_path / "pairs.jsonl"), **kwargs)


def test_bad_pairs_are_refused_counted_and_logged(
    module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    batch = pair_batch()
    with caplog.at_level(logging.WARNING):
        out = pairs_data(tmp_path).pairs_from_file(batch, module)
    assert [row["id"] for row in out.meta["rows"]] == ["pair0", "pair4"]
    stats = out.meta["stats"]
    assert stats.kept == 2 and stats.prompts == 5
    assert stats.dropped == {PROMPT_TOO_LONG: 1, IMAGE_TOKEN_MISMATCH: 2}
    # every tensor of the batch lost the same rows: pixels and tokens stay aligned
    assert len(out) == 2 and out.pixel_values.shape[0] == 2
    clean = module.preprocess_images([batch.images[0], batch.images[4]])
    assert torch.equal(out.pixel_values, clean)
    for name in ("prompt", "chosen", "rejected"):
        assert getattr(out, f"{name}_input_ids").shape[0] == 2
    expected = module.tokenize_pairs(
        [ROWS[0][0], ROWS[4][0]], [ROWS[0][1], ROWS[4][1]], [ROWS[0][2], ROWS[4][2]]
    )
    width = expected["chosen_input_ids"].shape[1]
    assert torch.equal(out.chosen_input_ids[:, :width], expected["chosen_input_ids"])
    warned = [r.getMessage() for r in caplog.records if "refusing pair" in r.getMessage()]
    assert len(warned) == 3 and "'pair1'" in warned[0] and "raise model.max_length" in warned[0]


def test_every_kept_sequence_fits_max_length_with_all_its_image_tokens(module, tmp_path) -> None:
    out = pairs_data(tmp_path).pairs_from_file(pair_batch(), module)
    image_id, expected = module.image_token_id(), module.num_image_tokens()
    for name in ("chosen", "rejected"):
        mask = torch.cat([out.prompt_attention_mask, getattr(out, f"{name}_attention_mask")], 1)
        assert int(mask.sum(-1).max()) <= module.hparams.max_length
        ids = torch.cat([out.prompt_input_ids, getattr(out, f"{name}_input_ids")], 1)
        assert ((ids == image_id) & (mask > 0)).sum(-1).tolist() == [expected] * len(out)


def test_on_bad_pair_error_stops_naming_the_pair_and_the_fix(module, tmp_path: Path) -> None:
    data = pairs_data(tmp_path, on_bad_pair="error")
    with pytest.raises(ValueError, match=r"pair 'pair1' \(image img1.png, prompt of \d+ tokens"):
        data.pairs_from_file(pair_batch(), module)
    mismatch = pair_batch([ROWS[0], ROWS[2]])
    with pytest.raises(ValueError, match=r"'pair1'.*image_token_mismatch.*placeholder"):
        data.pairs_from_file(mismatch, module)


def test_a_batch_of_only_bad_pairs_is_empty(module, tmp_path: Path) -> None:
    out = pairs_data(tmp_path).pairs_from_file(pair_batch([ROWS[1], ROWS[3]]), module)
    assert len(out) == 0 and out.meta["stats"].kept == 0
    assert out.pixel_values.shape[0] == 0  # the training step makes no update from it
