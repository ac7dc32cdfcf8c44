"""The inference API: images (and optional clinical text) in, label + probability + text + mask out.

Every study gets a label and a probability from label scoring, even when the generated text
names no label (the paper's "None" failure): one batched, teacher-forced forward pass scores
the answer continuation of every label for every image, and the scores are normalised over the
labels. Each image's prompt runs once in that pass, its label answers packed behind it. The
generated text (the paper's way) comes from one batched ``generate()`` call that continues from
that pass (its prompt keys and values, image states and U-Net tokens), and is kept beside the
scores with the label it names and whether the two agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdf_model.inputs import ModelInputs, PreparedInput, collate, prepare_input
from mdf_model.modeling import MDFModel
from mdf_model.prompt import answer_text, build_prompt, label_in_text

__all__ = ["ClassificationResult", "Classifier", "load_classifier"]


@dataclass(frozen=True)
class ClassificationResult:
    """One study's result.

    label: the label with the highest score; probabilities: label -> probability (sums to 1);
    text: the generated answer ("" when text generation was off); text_label: the label the text
    names, or None; agrees: text_label == label; mask: uint8 (C, N, N) at the U-Net input size
    in the letterboxed frame (the image centred on a black square), 0..255 = sigmoid probability
    of each segmentation channel, in ``Classifier.mask_channels`` order. Baseline models have no
    segmentation: their mask is empty, shape (0, 0, 0).
    """

    label: str
    probabilities: dict[str, float]
    text: str
    text_label: str | None
    agrees: bool
    mask: np.ndarray


@contextlib.contextmanager
def _evaluating(model: MDFModel) -> Iterator[None]:
    """Eval mode for the duration, then back to whatever a trainer had set."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _bf16_on_gpu(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 matrix products on a GPU (its tensor cores' format) whatever the weights'
    dtype; on the CPU the weights' own dtype, so CPU results stay exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Classifier:
    """A model with its processor, prompt and labels. ``model`` is the trainable nn.Module;
    ``version_hash`` is the manifest hash of the checkpoint it came from ("unsaved" for a model
    that was never saved or loaded)."""

    def __init__(self, model: MDFModel, *, version_hash: str | None = None) -> None:
        if model.processor is None:
            raise ValueError("a Classifier needs a model with a processor")
        self.model = model
        self.processor = model.processor
        self.version_hash: str = version_hash or model.version_hash or "unsaved"
        tokenizer = self.processor.tokenizer
        self._pad_token_id = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else model.base.config.text_config.pad_token_id
        )
        self._answers = [
            tokenizer(answer_text(model.config, label), add_special_tokens=False)["input_ids"]
            for label in model.config.labels
        ]

    @property
    def labels(self) -> list[str]:
        return list(self.model.config.labels)

    @property
    def mask_channels(self) -> list[str]:
        """The segmentation channels a result's mask holds, in order (none for a baseline)."""
        return [] if self.model.config.baseline else list(self.model.config.seg_classes)

    @property
    def input_side(self) -> int:
        """The longest side ``prepare`` resamples a photograph to: the vision tiles' widest
        canvas or the U-Net's square. A photograph decoded at least this large on its long
        side gives the same model input, up to resampling."""
        config = self.model.config
        canvas = config.vision_tiles * config.vision_config["image_size"]
        return canvas if config.baseline else max(canvas, config.unet_input_size)

    @property
    def answer_token_ids(self) -> list[list[int]]:
        """The token ids of each label's answer, in label order (what scoring scores)."""
        return [list(ids) for ids in self._answers]

    def _collate(
        self, batch: Sequence[PreparedInput], answers: list | None, *, packed: bool = False
    ) -> ModelInputs:
        return collate(
            batch,
            answers,
            pad_token_id=self._pad_token_id,
            image_token_id=self.processor.image_token_id,
            packed=packed,
        ).to(self.model.device)

    def prepare(
        self,
        image: np.ndarray,
        clinical_text: str | None = None,
        *,
        seg_target: np.ndarray | None = None,
    ) -> PreparedInput:
        """Prepare one study: ``image`` (H, W, 3) uint8 RGB of any size; ``seg_target`` an
        optional reference mask for training, (H, W) for the first segmentation channel or
        (H, W, C) for the first C. Raises ValueError for unusable input."""
        config = self.model.config
        return prepare_input(
            self.processor,
            image,
            build_prompt(config, clinical_text),
            unet_size=None if config.baseline else config.unet_input_size,
            seg_target=seg_target,
            seg_channels=len(config.seg_classes),
        )

    def scoring_inputs(self, batch: Sequence[PreparedInput]) -> ModelInputs:
        """One ordinary causal row per (image, label), each prompt followed by that label's
        answer: the reference layout of label scoring, which runs the prompt once per label."""
        return self._collate(batch, [self._answers] * len(batch))

    def packed_scoring_inputs(self, batch: Sequence[PreparedInput]) -> ModelInputs:
        """The same scores with the prompt run once: one row per image, its prompt followed by
        every label's answer, each answer seeing the prompt and itself only (what
        ``classify_prepared`` scores)."""
        return self._collate(batch, [self._answers] * len(batch), packed=True)

    def generation_inputs(self, batch: Sequence[PreparedInput]) -> ModelInputs:
        return self._collate(batch, None)

    def training_inputs(
        self, batch: Sequence[PreparedInput], targets: Sequence[str]
    ) -> ModelInputs:
        """Teacher-forced rows: each prompt followed by the answer for its target label, plus the
        reference masks the studies were prepared with. Feed to ``model(inputs)``."""
        if len(targets) != len(batch):
            raise ValueError(f"{len(batch)} studies but {len(targets)} targets")
        unknown = sorted(set(targets) - set(self.labels))
        if unknown:
            raise ValueError(f"unknown target labels {unknown}; labels are {self.labels}")
        index = {label: i for i, label in enumerate(self.labels)}
        return self._collate(batch, [[self._answers[index[t]]] for t in targets])

    def classify_prepared(
        self,
        batch: Sequence[PreparedInput],
        *,
        generate_text: bool = True,
        segment: bool = True,
        max_new_tokens: int = 16,
    ) -> list[ClassificationResult]:
        """Label scores from one batched forward pass over the whole batch (vision tower,
        U-Net and prompt once per image); text continues from that pass in one batched
        ``generate()``; ``segment=False`` skips the mask (empty, shape (0, 0, 0)) and the work
        that makes it. On a GPU the matrix products run in bfloat16."""
        if not batch:
            return []
        labels = self.labels
        scoring = self.packed_scoring_inputs(batch)
        texts = [""] * len(batch)
        with torch.inference_mode(), _evaluating(self.model), _bf16_on_gpu(self.model.device):
            if generate_text:
                prompts = self.generation_inputs(batch)
                scores, seg_logits, sequences = self.model.score_and_generate(
                    scoring, prompts, segment=segment, max_new_tokens=max_new_tokens
                )
                texts = self.processor.tokenizer.batch_decode(
                    sequences[:, prompts.input_ids.shape[1] :], skip_special_tokens=True
                )
            else:
                scores, seg_logits = self.model.score(scoring, segment=segment)
            probabilities = torch.softmax(scores.view(len(batch), len(labels)), dim=-1).cpu()
            if seg_logits is None:
                masks = [np.zeros((0, 0, 0), dtype=np.uint8)] * len(batch)
            else:
                channels = torch.sigmoid(seg_logits.float()) * 255
                masks = list(channels.round().to(torch.uint8).cpu().numpy())

        results = []
        for row, text, mask in zip(probabilities.tolist(), texts, masks, strict=True):
            label = labels[int(np.argmax(row))]
            text = text.strip()
            text_label = label_in_text(text, labels) if text else None
            results.append(
                ClassificationResult(
                    label=label,
                    probabilities=dict(zip(labels, row, strict=True)),
                    text=text,
                    text_label=text_label,
                    agrees=text_label == label,
                    mask=mask,
                )
            )
        return results

    def classify(
        self,
        images: Sequence[np.ndarray],
        clinical_texts: Sequence[str | None] | None = None,
        *,
        batch_size: int = 16,
        generate_text: bool = True,
        segment: bool = True,
        max_new_tokens: int = 16,
    ) -> list[ClassificationResult]:
        """Prepare and classify, ``batch_size`` studies per forward pass."""
        if clinical_texts is None:
            clinical_texts = [None] * len(images)
        if len(clinical_texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(clinical_texts)} clinical texts")
        prepared = [self.prepare(i, t) for i, t in zip(images, clinical_texts, strict=True)]
        results: list[ClassificationResult] = []
        for start in range(0, len(prepared), batch_size):
            results += self.classify_prepared(
                prepared[start : start + batch_size],
                generate_text=generate_text,
                segment=segment,
                max_new_tokens=max_new_tokens,
            )
        return results

    def save(self, directory: str | Path, *, include_base: bool | None = None) -> str:
        """Save the model as a checkpoint directory; this classifier takes its version hash."""
        self.version_hash = self.model.save_pretrained(directory, include_base=include_base)
        return self.version_hash


def load_classifier(
    checkpoint_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    base_dir: str | Path | None = None,
    expected_manifest_sha256: str | None = None,
    vision_tiles: int | None = None,
) -> Classifier:
    """Load and verify a checkpoint directory (see `MDFModel.from_pretrained`); with
    ``expected_manifest_sha256``, only the checkpoint of that version id; with
    ``vision_tiles``, only a checkpoint trained with that many vision tiles."""
    model = MDFModel.from_pretrained(
        checkpoint_dir,
        device=device,
        dtype=dtype,
        base_dir=base_dir,
        expected_manifest_sha256=expected_manifest_sha256,
        vision_tiles=vision_tiles,
    )
    return Classifier(model)
