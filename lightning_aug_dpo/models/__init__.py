"""Model families (one ``AugDPOModule`` subclass each) and the tiny checkpoint writer."""

from lightning_aug_dpo._lazy import attach

# Names load on first use, so that `python -m` on a submodule runs it once (see _lazy).
__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "gemma3": ["Gemma3DPOModule"],
        "internvl": ["InternVLDPOModule"],
        "llava": ["LlavaDPOModule"],
        "llava_next": ["LlavaNextDPOModule"],
        "qwen2_5_vl": ["Qwen2_5_VLDPOModule"],
        "qwen2_vl": ["Qwen2VLDPOModule"],
        "qwen3_vl": ["Qwen3VLDPOModule"],
        "smolvlm": ["SmolVLMDPOModule"],
        "tiny": ["TinyLlavaSpec", "write_tiny_llava"],
        "tiny_gemma3": ["TinyGemma3Spec", "write_tiny_gemma3"],
        "tiny_internvl": ["TinyInternVLSpec", "write_tiny_internvl"],
        "tiny_llava_next": ["TinyLlavaNextSpec", "write_tiny_llava_next"],
        "tiny_qwen2_5_vl": ["TinyQwen2_5_VLSpec", "write_tiny_qwen2_5_vl"],
        "tiny_qwen2_vl": ["TinyQwen2VLSpec", "write_tiny_qwen2_vl"],
        "tiny_qwen3_vl": ["TinyQwen3VLSpec", "write_tiny_qwen3_vl"],
        "tiny_smolvlm": ["TinySmolVLMSpec", "write_tiny_smolvlm"],
    },
)
