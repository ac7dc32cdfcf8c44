"""The named starting points of an MDF-MLLM model.

``llama-3.2-11b-vision`` is the paper's model on the released base, computing one vision tile
per photograph (new fine-tunes start here); ``llama-3.2-11b-vision-4-tiles`` is the same model
computing all four tile slots as the released checkpoint does, for serving or fine-tuning that
behaviour; ``tiny`` has the same architecture at a size that trains on a CPU in tests and the demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mdf_model.configuration import MDFConfig

__all__ = ["PRESETS", "TINY_VOCAB_SIZE"]

_LLAMA_32_11B_VISION = {
    "vision_config": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_global_layers": 8,
        "attention_heads": 16,
        "image_size": 560,
        "patch_size": 14,
        "max_num_tiles": 4,
        "intermediate_layers_indices": [3, 7, 15, 23, 30],
        "vision_output_dim": 7680,
    },
    "text_config": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "pad_token_id": 128004,
    },
    "image_token_index": 128256,
}

# The tiny tokenizer (see tokenizer.py) has exactly TINY_VOCAB_SIZE text tokens; <|image|> comes
# after them, as in Llama 3.2 Vision where the image token id equals the text vocabulary size.
TINY_VOCAB_SIZE = 512

_TINY = {
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_global_layers": 2,
        "attention_heads": 4,
        "image_size": 112,
        "patch_size": 14,
        "max_num_tiles": 4,
        "intermediate_layers_indices": [1, 3],
        "vision_output_dim": 192,
    },
    "text_config": {
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "cross_attention_layers": [1, 3, 5, 7],
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "max_position_embeddings": 2048,
        # Ids of <|begin_of_text|>, <|end_of_text|> and <|finetune_right_pad_id|> in tokenizer.py.
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    },
    "image_token_index": TINY_VOCAB_SIZE,
}

_LLAMA = MDFConfig(
    preset="llama-3.2-11b-vision",
    base_config=_LLAMA_32_11B_VISION,
    # A fundus photograph is a disc in a frame of aspect 1 to 1.5: one 560 px tile holds it.
    vision_tiles=1,
    fusion_layers=(3, 18, 28, 38),
    unet_input_size=512,
    patch_grid=8,
    patch_pool=2,
    # Llama 3.2 Vision Instruct chat format; the answer ends the assistant turn.
    prompt_template=(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>{clinical}"
        "Is the retinal disease in this fundus photograph {labels}? "
        "Answer with the diagnosis only.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    answer_template="{label}<|eot_id|>",
)

PRESETS: Mapping[str, MDFConfig] = MappingProxyType(
    {
        "llama-3.2-11b-vision": _LLAMA,
        "llama-3.2-11b-vision-4-tiles": _LLAMA.replace(
            preset="llama-3.2-11b-vision-4-tiles", vision_tiles=4
        ),
        "tiny": MDFConfig(
            preset="tiny",
            base_config=_TINY,
            vision_tiles=1,
            fusion_layers=(1, 3, 5, 7),
            unet_input_size=128,
            # ResNet18: the ResNet50 encoder took about 80% of a tiny training step on a CPU.
            unet_encoder="resnet18",
            unet_decoder_channels=(64, 32, 16, 16, 8),
            patch_grid=4,
            patch_pool=2,
        ),
    }
)
