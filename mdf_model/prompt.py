"""Prompt text in, label out: the text side of classification.

The prompt names the configured labels, so a multi-class label set needs no code change. Clinical
text is optional (only some sources have it); without it the ``{clinical}`` slot is empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mdf_model.configuration import MDFConfig

__all__ = ["answer_text", "build_prompt", "format_clinical", "label_in_text"]


def format_clinical(
    *,
    age: int | float | None = None,
    sex: str | None = None,
    history: str | None = None,
    family_history: str | None = None,
) -> str | None:
    """Structured clinical fields as one line of text, or None when every field is empty."""
    parts = []
    if age is not None:
        parts.append(f"age {age:g}" if isinstance(age, float) else f"age {age}")
    for name, value in (("sex", sex), ("history", history), ("family history", family_history)):
        if value is not None and value.strip():
            parts.append(f"{name} {value.strip()}")
    return ", ".join(parts) + "." if parts else None


def _labels_phrase(labels: Sequence[str]) -> str:
    return f"{', '.join(labels[:-1])} or {labels[-1]}"


def _clean_clinical(text: str, max_chars: int) -> str:
    # Collapse whitespace and defuse special-token syntax: clinical text is data, and an
    # "<|image|>" inside it would change how many images the processor expects.
    text = " ".join(text.replace("<|", "<").split())
    return text[:max_chars].strip()


def build_prompt(config: MDFConfig, clinical_text: str | None = None) -> str:
    """The prompt for one study: the template with the label list and the (optional) notes."""
    clinical = ""
    if clinical_text is not None:
        cleaned = _clean_clinical(clinical_text, config.max_clinical_chars)
        if cleaned:
            clinical = config.clinical_template.format(text=cleaned)
    return config.prompt_template.format(clinical=clinical, labels=_labels_phrase(config.labels))


def answer_text(config: MDFConfig, label: str) -> str:
    """The teacher-forced answer for ``label`` (also what label scoring scores)."""
    return config.answer_template.format(label=label)


def label_in_text(text: str, labels: Sequence[str]) -> str | None:
    """The label named in generated text, or None (the paper's "None" failure).

    Case-insensitive whole-word match; the earliest mention wins, and at the same position the
    longer label wins (so "non-proliferative diabetic retinopathy" beats "diabetic retinopathy").
    Negations are not understood: "not inherited" names "inherited".
    """
    best: tuple[int, int, str] | None = None
    for label in labels:
        pattern = rf"(?<!\w){re.escape(label.strip())}(?!\w)"
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match is not None:
            key = (match.start(), -len(label), label)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]
