"""Model families (one ``AugDPOModule`` subclass each) and the tiny checkpoint writer."""

from lightning_aug_dpo.models.llava import LlavaDPOModule
from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava

__all__ = ["LlavaDPOModule", "TinyLlavaSpec", "write_tiny_llava"]
