"""The offline BPE training every tiny checkpoint writer (``models/tiny*.py``) shares.

Each writer trains a tokenizer of exactly ``vocab_size`` entries on the same fixed word list
(:data:`WORDS`), capitalised and with punctuation, plus the text its chat template adds, with the
pre-tokenization of the tokenizer class it wraps the result in, so that every merge is reachable
and every id the model can emit decodes. Deterministic: the same arguments give the same vocab
and merges.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any, Literal

# A fixed corpus: enough distinct words for BPE to reach the target vocabulary deterministically.
WORDS = """
the a an is are was were of in on at to and or not with what which who how many much color
colour shape shapes circle square triangle rectangle left right top bottom middle center above
below next behind front red green blue yellow purple orange white black gray grey brown pink
one two three four five six seven eight nine ten zero yes no there image picture photo book
cover title author word written text letter number count answer question describe detail
caption provide sentence single phrase reference ocr token this that these those it its
they them he she his her we you your can could would should do does did has have had be been
large small big little tall short round dark light bright background object objects scene
person people man woman dog cat car bus tree house sky water road sign street table food
USER ASSISTANT User Assistant
""".split()  # noqa: SIM905 (a word list reads best as prose)

#: How text is split before BPE, as the wrapping tokenizer class does it:
#: ``byte_level``: GPT-2's byte-level pre-tokenizer (LLaVA's fast tokenizer, ``GPT2Tokenizer``);
#: ``qwen2``: ``Qwen2Tokenizer``'s regex split, then byte-level without its own regex;
#: ``sentencepiece``: no pre-tokenizer, spaces normalised to ``▁`` (``GemmaTokenizer``), the
#: corpus lines start with a space so that words come out as ``▁``-prefixed pieces.
PreTokenization = Literal["byte_level", "qwen2", "sentencepiece"]


def train_bpe(
    vocab_size: int,
    special_tokens: Sequence[str],
    *,
    template_text: Sequence[str] = (),
    pre_tokenization: PreTokenization = "byte_level",
    unk_token: str | None = None,
    label: str = "tiny tokenizer",
    writer: str = "tiny.py",
) -> Any:
    """A ``tokenizers.Tokenizer`` (BPE) of exactly ``vocab_size`` entries, ``special_tokens``
    first (ids 0, 1, ...), trained on :data:`WORDS` and the chat template's ``template_text``.

    ``label`` and ``writer`` (the ``models/`` file) name the tokenizer in the error raised when
    the corpus is too small for ``vocab_size``.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=unk_token) if unk_token else models.BPE())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if pre_tokenization == "byte_level":
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif pre_tokenization == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre_tokenization == "sentencepiece":
        bpe.normalizer = normalizers.Replace(" ", "▁")  # GemmaTokenizer's normaliser
        alphabet = list("\n▁?.,:!0123456789")
    else:
        raise ValueError(f"unknown pre_tokenization {pre_tokenization!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    # Vary capitalisation and punctuation so merges cover realistic prompts.
    corpus = [" ".join(WORDS), " ".join(w.capitalize() for w in WORDS), "? . , : ! 0 1 2 3"]
    if pre_tokenization == "sentencepiece":
        corpus = [f" {line}" for line in corpus]  # words after a space: the ▁-prefixed pieces
    corpus += list(template_text)
    corpus += [f"{a} {b}" for a, b in itertools.pairwise(WORDS)]
    bpe.train_from_iterator(corpus * 4, trainer=trainer)
    if bpe.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"{label} has {bpe.get_vocab_size()} entries, expected {vocab_size}; "
            f"extend the corpus (WORDS in lightning_aug_dpo/models/tiny_tokenizer.py, or the "
            f"template text in lightning_aug_dpo/models/{writer})"
        )
    return bpe


def vocab_and_merges(bpe: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The trained ``vocab`` and ``merges`` of :func:`train_bpe`'s tokenizer, as the slow-API
    tokenizer classes (``Qwen2Tokenizer``, ``GPT2Tokenizer``, ``GemmaTokenizer``) take them."""
    trained = json.loads(bpe.to_str())["model"]
    return trained["vocab"], [tuple(pair) for pair in trained["merges"]]
