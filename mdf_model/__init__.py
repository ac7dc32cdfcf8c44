"""MDF-MLLM: LLaMA 3.2 Vision fused with a ResNet50 U-Net, for fundus screening.

The model of arXiv 2509.21358 on top of transformers' ``MllamaForConditionalGeneration`` and
segmentation-models-pytorch's ResNet50 U-Net. The presets share all code: ``llama-3.2-11b-vision``
(the real model, weights from a local Hugging Face directory, one vision tile per photograph),
``llama-3.2-11b-vision-4-tiles`` (the same computing all four tile slots, as the released model
does) and ``tiny`` (the same architecture at toy width with a ResNet18 U-Net encoder, built
offline, for tests, the demo and CPUs).

Inference API
-------------
::

    from mdf_model import load_classifier, build_tiny_checkpoint

    build_tiny_checkpoint(directory, *, seed=0, labels=None, **config_changes) -> Path
    classifier = load_classifier(checkpoint_dir, device="cpu", dtype=None, *, base_dir=None,
                                 expected_manifest_sha256=None,  # refused unless it matches
                                 vision_tiles=None)  # refused unless trained with these tiles
    classifier.version_hash  # manifest hash of the checkpoint (64 hex digits)
    classifier.labels        # list[str], from the configuration
    classifier.model         # MDFModel (an nn.Module)
    item = classifier.prepare(image, clinical_text=None, *, seg_target=None)  # PreparedInput
    classifier.classify_prepared([item, ...], *, generate_text=True, segment=True,
                                 max_new_tokens=16)
    classifier.classify(images, clinical_texts=None, *, batch_size=16, generate_text=True,
                        segment=True, max_new_tokens=16)
    classifier.save(directory, *, include_base=None) -> str  # new version hash

Each `ClassificationResult` has ``label`` and ``probabilities`` from label scoring (one batched
teacher-forced forward pass scores the answer of every label for every image; the probabilities
are the answers' sequence probabilities normalised over the labels), ``text`` from one batched
greedy ``generate()``, ``text_label`` (the label the text names, or None), ``agrees`` and
``mask`` (uint8 (N, N) at the U-Net input size, 0..255 = probability of the first segmentation
channel, vessels; (0, 0) for baseline models and with ``segment=False``, which skips FiLM, the
U-Net decoder and its bottleneck stage when only labels are wanted). ``prepare`` takes
(H, W, 3) uint8 RGB of any size and raises ValueError for unusable input. `format_clinical`
turns age, sex, history and family history into the clinical text.

Training API
------------
::

    inputs = classifier.training_inputs(prepared_batch, target_labels)  # ModelInputs
    out = classifier.model(inputs)  # MDFOutput(loss, lm_loss, seg_loss, logits, seg_logits)
    model.set_frozen(ABLATIONS["fusion_only"])  # or any subset of COMPONENTS
    torch.optim.AdamW(model.parameter_groups({"unet": 1e-4, "default": 2e-5}))

``lm_loss`` is the cross-entropy of the teacher-forced answer tokens; ``seg_loss`` the per-pixel
BCE over the studies and channels that have a reference mask (prepare with ``seg_target``);
``loss`` = lm_loss + seg_loss_weight * seg_loss. Components: unet, fusion (skip projection and
scaled cross-attention), film, mllm (the whole base model) and vision_tower (part of mllm).
A frozen U-Net also keeps its batch-norm statistics. ``MDFModel.save_pretrained`` /
``MDFModel.from_pretrained`` write and verify checkpoint directories (see pretrained.py and
checkpoint.py); a damaged or mismatched checkpoint raises `CheckpointError` (a ValueError) naming
the file.

Architecture choices (the paper leaves these open)
--------------------------------------------------
- Skip levels: smp encoder features 1..4, the four tensors smp's U-Net decoder uses as skip
  connections (strides 2, 4, 8, 16; 64, 256, 512, 1024 channels), so the same tensors are fused
  into the MLLM and modulated by FiLM, and the stride-2 level keeps thin vessels.
- Skip projection: each level becomes a ``patch_grid`` x ``patch_grid`` grid of patches, each
  average-pooled to ``patch_pool`` x ``patch_pool`` cells, flattened and projected to the text
  width, plus a level embedding and a row + column position embedding. 11B: 8 x 8 grid, pool 2,
  256 tokens per image; tiny: 4 x 4, pool 2, 64 tokens.
- Scaled cross-attention: Q from the text hidden states leaving a base cross-attention layer,
  K/V from the U-Net tokens (as stock Mllama does with image tokens), output times alpha, added
  to the residual stream and masked by Mllama's full_text_row_masked_out_mask. Layers
  3, 18, 28, 38 (11B) and 1, 3, 5, 7 (tiny); only the base model's cross-attention layers are
  accepted. Fusion blocks start from the base layer's own cross-attention weights.
- alpha: learnable per layer, initialised to 0.5 by default. alpha = 0 makes the untrained
  model exactly the base model, but it also zeroes every gradient upstream of the scale, so
  fusion never starts learning; ``alpha_learnable=False`` makes it a fixed constant.
- generate() and the KV cache: the fusion runs in forward hooks on the base layers, with the
  U-Net tokens as module state for the duration of one call; their keys and values are computed
  once per call and reused at every decoding step, beside Mllama's own cached image K/V.
- FiLM: the mean final hidden state over the prompt tokens gives (gamma, beta) per skip level
  from zero-initialised heads: exactly the identity at initialisation.
- Vision tiles: the vision tower computes ``vision_tiles`` tile slots (1 for the 11B and tiny
  presets), not the released model's four, of which a square photograph uses one; see tiles.py.
- U-Net input: 512 x 512 for the 11B preset (as in the paper), 128 x 128 with a narrower decoder
  for the tiny preset (CPU speed); images are letterboxed onto a black square first.
- Answer: ``" {label}<|end_of_text|>"`` (tiny) or ``"{label}<|eot_id|>"`` (11B chat format); the
  end token makes scoring prefer "diabetic retinopathy" over its prefix "diabetic".

This package imports nothing from the service packages. Its names load lazily, so importing
``mdf_model.cli`` to register commands does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ABLATIONS",
    "COMPONENTS",
    "PRESETS",
    "CheckpointError",
    "ClassificationResult",
    "Classifier",
    "MDFConfig",
    "MDFModel",
    "MDFOutput",
    "ModelInputs",
    "PreparedInput",
    "build_tiny_checkpoint",
    "format_clinical",
    "load_classifier",
]

_SOURCES = {
    "ABLATIONS": "configuration",
    "COMPONENTS": "configuration",
    "PRESETS": "presets",
    "MDFConfig": "configuration",
    "CheckpointError": "checkpoint",
    "ClassificationResult": "classifier",
    "Classifier": "classifier",
    "load_classifier": "classifier",
    "MDFModel": "modeling",
    "MDFOutput": "modeling",
    "ModelInputs": "inputs",
    "PreparedInput": "inputs",
    "build_tiny_checkpoint": "tiny",
    "format_clinical": "prompt",
}


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'mdf_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mdf_model.{_SOURCES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
