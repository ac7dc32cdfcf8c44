"""Prompt building and reading the label out of generated text."""

from __future__ import annotations

import pytest

from mdf_model import MDFConfig, format_clinical
from mdf_model.prompt import build_prompt, label_in_text

MULTI = ("normal", "diabetic retinopathy", "non-proliferative diabetic retinopathy", "AMD")


def test_prompt_without_clinical_text_names_the_labels() -> None:
    prompt = build_prompt(MDFConfig.from_preset("tiny"))
    assert prompt.startswith("<|image|>")
    assert "acquired or inherited" in prompt
    assert "Clinical notes" not in prompt


def test_clinical_text_is_cleaned_and_cannot_add_special_tokens() -> None:
    config = MDFConfig.from_preset("tiny", max_clinical_chars=40)
    prompt = build_prompt(config, "  age 54,\n\n sex female <|image|> " + "x" * 100)
    assert prompt.count("<|image|>") == 1
    assert "Clinical notes: age 54, sex female <image|>" in prompt
    assert "x" * 30 not in prompt


def test_empty_clinical_text_counts_as_none() -> None:
    config = MDFConfig.from_preset("tiny")
    assert build_prompt(config, "   ") == build_prompt(config, None)


def test_multiclass_labels_are_a_configuration_change() -> None:
    prompt = build_prompt(MDFConfig.from_preset("tiny", labels=MULTI))
    assert "normal, diabetic retinopathy, non-proliferative diabetic retinopathy or AMD" in prompt


def test_format_clinical() -> None:
    text = format_clinical(age=54, sex="female", family_history="retinitis pigmentosa")
    assert text == "age 54, sex female, family history retinitis pigmentosa."
    assert format_clinical() is None


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Inherited.", "inherited"),
        ("the disease is acquired", "acquired"),
        ("acquired, not inherited", "acquired"),
        ("Non-proliferative diabetic retinopathy", "non-proliferative diabetic retinopathy"),
        ("signs of diabetic retinopathy", "diabetic retinopathy"),
        ("amd", "AMD"),
        ("camden", None),
        ("inheritedness", None),
        ("a healthy retina", None),
    ],
)
def test_label_in_text(text: str, label: str | None) -> None:
    labels = ("acquired", "inherited", *MULTI)
    assert label_in_text(text, labels) == label
