"""Lightning callbacks: benchmark evaluation (MM-Vet, LLaVA-Bench, POPE, toy world), adapter
checkpoints, pair export, gallery and audit, run summary."""

from lightning_aug_dpo.callbacks.adapter import AdapterCheckpoint, adapter_dir_for
from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.callbacks.gallery import PairGalleryCallback
from lightning_aug_dpo.callbacks.llava_bench import LLaVABenchCallback
from lightning_aug_dpo.callbacks.mmvet import MMVetCallback
from lightning_aug_dpo.callbacks.pair_audit import PairAuditCallback
from lightning_aug_dpo.callbacks.pairs_writer import PairsWriter
from lightning_aug_dpo.callbacks.pope import POPECallback
from lightning_aug_dpo.callbacks.summary import RunSummary
from lightning_aug_dpo.callbacks.toy_world import ToyWorldCallback

__all__ = [
    "AdapterCheckpoint",
    "BenchmarkCallback",
    "LLaVABenchCallback",
    "MMVetCallback",
    "POPECallback",
    "PairAuditCallback",
    "PairGalleryCallback",
    "PairsWriter",
    "RunSummary",
    "ToyWorldCallback",
    "adapter_dir_for",
]
