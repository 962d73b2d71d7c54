"""Model families (one ``AugDPOModule`` subclass each) and the tiny checkpoint writer."""

from lightning_aug_dpo.models.gemma3 import Gemma3DPOModule
from lightning_aug_dpo.models.internvl import InternVLDPOModule
from lightning_aug_dpo.models.llava import LlavaDPOModule
from lightning_aug_dpo.models.llava_next import LlavaNextDPOModule
from lightning_aug_dpo.models.qwen2_vl import Qwen2VLDPOModule
from lightning_aug_dpo.models.smolvlm import SmolVLMDPOModule
from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava
from lightning_aug_dpo.models.tiny_gemma3 import TinyGemma3Spec, write_tiny_gemma3
from lightning_aug_dpo.models.tiny_internvl import TinyInternVLSpec, write_tiny_internvl
from lightning_aug_dpo.models.tiny_llava_next import TinyLlavaNextSpec, write_tiny_llava_next
from lightning_aug_dpo.models.tiny_qwen2_vl import TinyQwen2VLSpec, write_tiny_qwen2_vl
from lightning_aug_dpo.models.tiny_smolvlm import TinySmolVLMSpec, write_tiny_smolvlm

__all__ = [
    "Gemma3DPOModule",
    "InternVLDPOModule",
    "LlavaDPOModule",
    "LlavaNextDPOModule",
    "Qwen2VLDPOModule",
    "SmolVLMDPOModule",
    "TinyGemma3Spec",
    "TinyInternVLSpec",
    "TinyLlavaNextSpec",
    "TinyLlavaSpec",
    "TinyQwen2VLSpec",
    "TinySmolVLMSpec",
    "write_tiny_gemma3",
    "write_tiny_internvl",
    "write_tiny_llava",
    "write_tiny_llava_next",
    "write_tiny_qwen2_vl",
    "write_tiny_smolvlm",
]
