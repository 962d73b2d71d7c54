"""Model families (one ``AugDPOModule`` subclass each) and the tiny checkpoint writer."""

from lightning_aug_dpo.models.llava import LlavaDPOModule
from lightning_aug_dpo.models.qwen2_5_vl import Qwen2_5_VLDPOModule
from lightning_aug_dpo.models.qwen2_vl import Qwen2VLDPOModule
from lightning_aug_dpo.models.qwen3_vl import Qwen3VLDPOModule
from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava
from lightning_aug_dpo.models.tiny_qwen2_5_vl import TinyQwen2_5_VLSpec, write_tiny_qwen2_5_vl
from lightning_aug_dpo.models.tiny_qwen2_vl import TinyQwen2VLSpec, write_tiny_qwen2_vl
from lightning_aug_dpo.models.tiny_qwen3_vl import TinyQwen3VLSpec, write_tiny_qwen3_vl

__all__ = [
    "LlavaDPOModule",
    "Qwen2VLDPOModule",
    "Qwen2_5_VLDPOModule",
    "Qwen3VLDPOModule",
    "TinyLlavaSpec",
    "TinyQwen2VLSpec",
    "TinyQwen2_5_VLSpec",
    "TinyQwen3VLSpec",
    "write_tiny_llava",
    "write_tiny_qwen2_5_vl",
    "write_tiny_qwen2_vl",
    "write_tiny_qwen3_vl",
]
