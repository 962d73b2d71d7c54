"""SFT data: the NLL maths, conversation segments and masks (both families), max_length,
LLaVA-665k parsing and the SFTDataModule's batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import random_images

from lightning_aug_dpo import Qwen2VLDPOModule, SFTDataModule
from lightning_aug_dpo.data.sft import load_conversations
from lightning_aug_dpo.losses import IGNORE_INDEX, token_nll
from lightning_aug_dpo.models.tiny_qwen2_vl import write_tiny_qwen2_vl
from lightning_aug_dpo.types import ConversationBatch

TWO_TURNS = [
    ("user", "What color is the circle?"),
    ("assistant", "The circle is red."),
    ("user", "How many shapes are there?"),
    ("assistant", "There are two shapes."),
]


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(params=["llava", "qwen2_vl"])
def family(request, make_module, tiny_qwen_dir):
    """A builder of configured modules of each shipped family."""
    if request.param == "llava":
        return make_module

    def build(**kwargs):
        kwargs.setdefault("lora_r", 8)
        kwargs.setdefault("lora_alpha", 16)
        torch.manual_seed(0)
        module = Qwen2VLDPOModule(model_name_or_path=str(tiny_qwen_dir), **kwargs)
        module.configure_model()
        return module

    return build


# ---------------------------------------------------------------------------- the maths
def test_token_nll_equals_hand_computed_value() -> None:
    # position 0 predicts token 1 (label 1): softmax([0, ln 3]) -> p = 3/4
    # position 1 predicts token 2 (label 0): softmax([0, 0])    -> p = 1/2
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    loss, count = token_nll(logits, labels)
    assert int(count) == 2
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, abs=1e-7)
    # logits of the last K positions only: same value while they cover every labelled token
    late = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]])
    assert token_nll(logits[:, 1:], late)[0].item() == pytest.approx(math.log(2), abs=1e-7)
    with pytest.raises(ValueError, match="keep more logits"):
        token_nll(logits[:, 2:], late)
    # a token mean over the batch: a row with more answer tokens weighs more
    two = torch.cat([logits, torch.zeros(1, 3, 2)])
    loss2, count2 = token_nll(two, torch.tensor([[IGNORE_INDEX, 1, 0], [IGNORE_INDEX, 0, 1]]))
    assert int(count2) == 4
    expected = (math.log(4 / 3) + math.log(2) + 2 * math.log(2)) / 4
    assert loss2.item() == pytest.approx(expected, abs=1e-7)
    empty = token_nll(logits, torch.full((1, 3), IGNORE_INDEX))
    assert empty[0].item() == 0.0 and int(empty[1]) == 0


# ---------------------------------------------------------------------------- segments
def test_single_turn_is_the_dpo_paths_tokens(family) -> None:
    module = family()
    question, answer = "What color is the circle?", "The circle is red."
    ids, trained = module.conversation_tokens([("user", question), ("assistant", answer)])
    out = module.tokenize_pairs([question], [answer], ["No."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert chosen[-1] == module.tokenizer.eos_token_id
    assert ids == prompt + chosen
    assert trained == [False] * len(prompt) + [True] * len(chosen)
    segments = module.format_conversation([("user", question), ("assistant", answer)])
    assert segments == [
        (module.format_prompt(question), False),
        (module.format_response(answer), True),
        (module.tokenizer.eos_token, True),
    ]


def test_multi_turn_mask_covers_answers_and_end_tokens_only(family) -> None:
    module = family()
    tok = module.tokenizer
    tokens, status = module.tokenize_conversations([TWO_TURNS])
    assert status == [None]
    ids, labels = tokens["input_ids"][0], tokens["labels"][0]
    trained = labels != IGNORE_INDEX
    assert torch.equal(labels[trained], ids[trained])
    answers = [module.format_response(a) for _, a in TWO_TURNS[1::2]]
    assert tok.decode(ids[trained]) == f"{answers[0]}{tok.eos_token}{answers[1]}{tok.eos_token}"
    assert int((ids[trained] == tok.eos_token_id).sum()) == 2
    # image tokens, user turns, role headers (and any system text) are never trained on
    image = ids == module.image_token_id()
    assert int(image.sum()) == module.num_image_tokens() and not trained[image].any()
    untrained = tok.decode(ids[~trained])
    for _, question in TWO_TURNS[::2]:
        assert question in untrained
    header = "ASSISTANT:" if module.tokenizer.bos_token else "<|im_start|>assistant"
    assert untrained.count(header) == 2
    assert "red" not in untrained and "two shapes" not in untrained
    # the mask starts right after the generation prompt of each turn
    first_answer = int(trained.nonzero()[0])
    prompt = tok(module.expand_image_tokens(module.format_prompt(TWO_TURNS[0][1]))).input_ids
    assert first_answer == len(prompt)


def test_one_pass_tokens_equal_the_prefix_split_and_fall_back_on_merges(
    family, monkeypatch
) -> None:
    module = family()
    segments = module.format_conversation(TWO_TURNS)
    texts = [t for t, _ in segments]
    texts[0] = module.expand_image_tokens(texts[0])
    expected = module.prefix_tokens(segments, texts)
    with monkeypatch.context() as patch:  # the one-pass path, no fallback
        patch.setattr(module, "prefix_tokens", lambda *a: pytest.fail("fell back"))
        assert module.conversation_tokens(TWO_TURNS) == expected
    # a boundary inside a word: the merged token straddles it, so the prefix split decides
    prompt = module.format_prompt("Q?")
    cut = [(prompt + "The circ", False), ("le is red.", True), (module.tokenizer.eos_token, True)]
    monkeypatch.setattr(module, "format_conversation", lambda turns: cut)
    calls = []
    split = module.prefix_tokens
    monkeypatch.setattr(module, "prefix_tokens", lambda *a: calls.append(1) or split(*a))
    ids, trained = module.conversation_tokens([("user", "Q?"), ("assistant", "unused")])
    assert calls  # "circle" is one token in both tiny vocabularies: it straddles the cut
    tok = module.tokenizer
    answer = [i for i, t in zip(ids, trained, strict=True) if t]
    assert tok.decode(answer) == f"le is red.{tok.eos_token}" and answer[-1] == tok.eos_token_id


def test_max_length_refuses_long_prompts_and_truncates_long_answers(make_module) -> None:
    module = make_module(max_length=40)
    tok = module.tokenizer
    prompt_len = len(tok(module.prompt_texts(["Q?"])[0]).input_ids)
    long_answer = "the circle is red and " * 10
    rows = [
        [("user", "Q?"), ("assistant", "yes")],
        [("user", "Q?"), ("assistant", long_answer)],
        [("user", "Q?"), ("assistant", "yes"), ("user", "and then " * 20), ("assistant", "no")],
        [("user", "what color is the circle " * 8), ("assistant", "red")],
    ]
    tokens, status = module.tokenize_conversations(rows)
    assert status == [None, "truncated", "truncated", "prompt_exceeds_max_length"]
    lengths = tokens["attention_mask"].sum(-1).tolist()
    assert lengths[0] == prompt_len + len(tok(" yes", add_special_tokens=False).input_ids) + 1
    assert lengths[1] == 40  # cut inside the answer, every kept answer token trained
    trained = tokens["labels"] != IGNORE_INDEX
    assert bool(trained[1, prompt_len:40].all())
    # the third row ends after its first answer: the untrained cut-off question is dropped
    assert lengths[2] == lengths[0] and bool(trained[2, lengths[2] - 1])
    assert not trained[3].any()
    image = tokens["input_ids"] == module.image_token_id()
    assert image[:3].sum(-1).tolist() == [module.num_image_tokens()] * 3  # never cut


# ---------------------------------------------------------------------------- the data file
def write_rows(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def conv(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def test_load_conversations_reads_every_turn_and_counts_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "image": "a.png", "conversations": conv("<image>\nQ1?", "A1.", "Q2?", "A2.")},
        {"id": "t", "conversations": conv("text only?", "yes")},
        {"id": "g", "image": "g.png", "conversations": [{"from": "gpt", "value": "hi"}]},
        {"id": "u", "image": "u.png", "conversations": conv("Q?", "A.", "unanswered?")},
        {"id": "b", "image": "b.png", "conversations": conv("Q?\n<image>", "A.")},
    ]
    path = write_rows(tmp_path / "mix.json", rows)
    source = load_conversations(path, on_bad_row="skip")
    assert [c.id for c in source.conversations] == ["a", "b"]
    assert source.conversations[0].turns == [
        ("user", "Q1?"), ("assistant", "A1."), ("user", "Q2?"), ("assistant", "A2."),
    ]  # fmt: skip
    assert source.conversations[1].turns[0] == ("user", "Q?")  # placeholder anywhere: removed
    assert source.text_only == 1
    assert [n for n, _ in source.bad_rows] == [2, 3]
    assert "without an answer" in source.bad_rows[1][1]
    with pytest.raises(ValueError, match=r"row 2 \(id 'g'\).*not a 'human' turn.*on_bad_image"):
        load_conversations(path)
    text_only = write_rows(tmp_path / "t.json", [rows[0], rows[1]])
    with pytest.raises(ValueError, match=r"1 rows have no image \(first: row 1\).*skip"):
        load_conversations(text_only)


def test_datamodule_batches_split_and_shuffle_deterministically(make_module, demo_assets) -> None:
    module = make_module()
    data = demo_assets["prompts"]

    def datamodule(seed: int = 42) -> SFTDataModule:
        dm = SFTDataModule(
            str(data), str(data.parent / "images"), num_val_samples=4, batch_size=4, seed=seed
        )
        dm.setup("fit")
        return dm

    dm = datamodule()
    assert len(dm.train_rows) == 28 and len(dm.val_rows) == 4
    assert not {r.id for r in dm.train_rows} & {r.id for r in dm.val_rows}
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, ConversationBatch) and len(batch) == 4
    sft = dm.make_batch(batch, module)
    assert len(sft) == 4 and sft.pixel_values.shape == (4, 3, 64, 64)
    assert sft.meta["dropped"] == {} and sft.meta["ids"] == batch.ids
    trained = sft.labels != IGNORE_INDEX
    assert not trained[sft.input_ids == module.image_token_id()].any()
    assert bool((trained.sum(-1) > 0).all())
    # the order is a function of the seed alone
    order = [b.ids for b in datamodule().train_dataloader()]
    assert order == [b.ids for b in datamodule().train_dataloader()]
    assert order != [b.ids for b in datamodule(seed=7).train_dataloader()]


def test_datamodule_refuses_rows_that_cannot_fit(make_module) -> None:
    module = make_module(max_length=40)
    long = [("user", "what color is the circle " * 8), ("assistant", "red")]
    batch = ConversationBatch(
        ids=["ok", "long"],
        indices=[0, 1],
        image_paths=["ok.png", "long.png"],
        images=random_images(2),
        conversations=[[("user", "Q?"), ("assistant", "yes")], long],
    )
    skip = SFTDataModule("unused.json", on_bad_sample="skip")
    sft = skip.make_batch(batch, module)
    assert sft.meta["ids"] == ["ok"] and sft.meta["dropped"] == {"prompt_exceeds_max_length": 1}
    assert len(sft) == 1 and sft.pixel_values.shape[0] == 1
    with pytest.raises(ValueError, match=r"row 'long' \(image long.png.*max_length=40"):
        SFTDataModule("unused.json", on_bad_sample="error").make_batch(batch, module)
