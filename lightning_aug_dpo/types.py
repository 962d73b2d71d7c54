"""Batch types that flow between the DataModule and the LightningModule.

Both are plain dataclasses so that Lightning's ``move_data_to_device`` moves their tensors and
leaves their Python fields alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptBatch:
    """What CPU workers produce: decoded images at native size and the prompt text.

    Images stay a list because real datasets mix sizes; padding to square and resizing happen on
    the device (``ImagePreprocessor``), batched per image.
    """

    ids: list[str]
    indices: list[int]  # dataset indices, used to derive per-sample augmentation seeds
    image_paths: list[str]  # as given in the prompt source, relative to the image folder
    images: list[torch.Tensor]  # uint8 (3, H, W), RGB
    questions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PreferenceBatch:
    """One DPO batch: a prompt, a chosen and a rejected response per row.

    Token tensors are right-padded; masks are 1 on real tokens. The prompt ids already contain the
    model's expanded image tokens. ``pixel_values`` is the CLEAN image: SeVa scores both the chosen
    and the rejected answer on the original image. ``aug_pixel_values`` (the image the rejected
    answer was generated from) is kept for inspection and may be ``None`` for offline pairs.
    """

    pixel_values: torch.Tensor
    prompt_input_ids: torch.Tensor
    prompt_attention_mask: torch.Tensor
    chosen_input_ids: torch.Tensor
    chosen_attention_mask: torch.Tensor
    rejected_input_ids: torch.Tensor
    rejected_attention_mask: torch.Tensor
    aug_pixel_values: torch.Tensor | None = None
    # The reference's log-probs of the chosen responses, when a reference rollout computed
    # them already (``reuse_rollout_reference_logps``); None: the DPO step computes them.
    reference_chosen_logps: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prompt_input_ids.shape[0])


@dataclass(frozen=True)
class Rollout:
    """One generated answer.

    ``finished`` is False when ``max_new_tokens`` cut it off (True after EOS or a stop string);
    ``num_tokens`` counts the tokens generated for it, up to and including EOS, which
    ``token_ids`` lists; ``logp`` is their summed log-probability under the model that generated
    them (``rollout(..., return_logps=True)``), e.g. the reference's for a reference rollout.
    """

    text: str
    finished: bool
    num_tokens: int = 0
    token_ids: tuple[int, ...] = ()  # the generated ids, through EOS
    logp: float | None = None  # their summed log-prob under the rollout model, when asked for


@dataclass(frozen=True)
class Sampling:
    """How rollouts decode. The default is SeVa's: greedy, one answer per image.

    Args:
        do_sample: sample instead of greedy decoding.
        temperature: softmax temperature when sampling (> 0).
        top_p: nucleus sampling mass when sampling, in (0, 1].
        num_samples: answers per (prompt, image): sample ``k`` of the clean image is paired with
            sample ``k`` of the augmented one, so a prompt yields up to ``num_samples`` pairs.
            More than one needs ``do_sample`` (greedy answers would all be the same).
        stop_strings: generation of a row ends at the first of these strings (as at EOS); the
            answer is cut before it and counts as finished.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise ValueError(f"sampling.num_samples must be >= 1, got {self.num_samples}")
        if self.num_samples > 1 and not self.do_sample:
            raise ValueError(
                f"sampling.num_samples={self.num_samples} with greedy decoding gives identical "
                "answers; set sampling.do_sample: true or num_samples: 1"
            )
        if any(not s for s in self.stop_strings):
            raise ValueError("sampling.stop_strings may not contain an empty string")


@dataclass
class PairStats:
    """Counts of one pair-making step, carried in ``PreferenceBatch.meta['stats']``.

    ``prompts`` prompts gave ``candidates`` pairs (``num_samples`` each), of which ``kept``
    passed the filters; ``identical`` had the same answer on both images (whether or not that
    drops them) and ``dropped`` counts each filter's reason. The rollout fields cover all
    ``2 * candidates`` answers: tokens generated, answers finished by EOS or a stop string, and
    the wall time of the ``generate`` call. Offline pairs (read from a file) have no rollouts.
    """

    prompts: int
    kept: int
    identical: int
    candidates: int = -1  # -1: as many as prompts
    dropped: dict[str, int] = field(default_factory=dict)
    chosen_tokens: int = 0
    rejected_tokens: int = 0
    finished: int = 0
    rollout_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.candidates < 0:
            self.candidates = self.prompts

    @property
    def identical_rate(self) -> float:
        return self.identical / self.candidates if self.candidates else 0.0


#: A conversation as the SFT path sees it: ``(role, text)`` turns, roles ``user`` and
#: ``assistant`` alternating from ``user``, ending on ``assistant``; the image belongs to the
#: first user turn (its placeholder is stripped from the text, the chat template places it).
Turns = list[tuple[str, str]]


@dataclass
class ConversationBatch:
    """What CPU workers produce for supervised fine-tuning: decoded images at native size and
    the conversations. Tokenisation happens after transfer, through the module's hooks."""

    ids: list[str]
    indices: list[int]  # dataset indices
    image_paths: list[str]  # as given in the data file, relative to the image folder
    images: list[torch.Tensor]  # uint8 (3, H, W), RGB
    conversations: list[Turns]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SFTBatch:
    """One supervised fine-tuning batch: full sequences (prompt, image tokens, every turn).

    Right-padded; ``labels`` equals ``input_ids`` on the tokens trained on (assistant answers
    and their end token) and is ``-100`` everywhere else (system and user text, role headers,
    image tokens, padding), the ``ignore_index`` convention of transformers.
    ``meta``: ``ids``, ``dropped`` (reason -> rows refused), ``truncated`` (rows whose answers
    were cut at ``max_length``), ``bad_images`` (images skipped by the workers).
    """

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])
