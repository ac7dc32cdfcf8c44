"""Clinical text for a synthetic case: age, sex, history and family history.

Text typical of the disease (age of onset, symptoms, family history) tells a model as much as
a real referral would; `text_signal` mixes in neutral text so it can be made to tell less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["clinical_text"]


@dataclass(frozen=True)
class _Profile:
    """Who tends to present with a disease, for the clinical text."""

    ages: tuple[int, int]
    histories: tuple[str, ...]
    family_history_rate: float


_PROFILES = {
    "diabetic_retinopathy": _Profile(
        (40, 80),
        (
            "Type 2 diabetes for {years} years, poorly controlled; gradual blurring of vision.",
            "Type 1 diabetes since age 12; referred from diabetic eye screening.",
        ),
        0.15,
    ),
    "glaucoma": _Profile(
        (50, 85),
        (
            "Raised intraocular pressure ({iop} mmHg) at the optician; no symptoms.",
            "Gradual loss of peripheral vision noticed over {years} years.",
        ),
        0.25,
    ),
    "amd": _Profile(
        (60, 90),
        (
            "Distorted central vision when reading; smoker for {years} years.",
            "Slowly worsening central vision in both eyes.",
        ),
        0.2,
    ),
    "retinitis_pigmentosa": _Profile(
        (12, 45),
        (
            "Night blindness since childhood and a narrowing field of vision.",
            "Difficulty seeing in dim light for {years} years; bumps into objects.",
        ),
        0.7,
    ),
    "stargardt": _Profile(
        (8, 30),
        (
            "Progressive loss of central vision since adolescence; poor reading vision.",
            "Central vision declining for {years} years; struggles to recognise faces.",
        ),
        0.6,
    ),
    "best_disease": _Profile(
        (5, 40),
        (
            "Mildly blurred central vision found at a school eye test.",
            "Slowly blurring central vision for {years} years.",
        ),
        0.75,
    ),
}
# Text that says nothing about the disease: what `text_signal` < 1 mixes in.
_NEUTRAL = _Profile((20, 85), ("Referred from routine screening; no visual complaints.",), 0.1)
_FAMILY = {
    True: (
        "Family history: a sibling has the same eye condition.",
        "Family history: mother and maternal uncle affected.",
        "Family history: father has a similar retinal disease.",
    ),
    False: (
        "No family history of eye disease.",
        "Family history unremarkable.",
    ),
}


def clinical_text(rng: np.random.Generator, disease: str, text_signal: float) -> str:
    """Age, sex, history and family history; disease-typical with probability `text_signal`."""
    profile = _PROFILES[disease] if rng.random() < text_signal else _NEUTRAL
    age = rng.integers(profile.ages[0], profile.ages[1] + 1)
    sex = ("man", "woman")[rng.integers(2)] if age >= 18 else ("boy", "girl")[rng.integers(2)]
    history = profile.histories[rng.integers(len(profile.histories))].format(
        years=rng.integers(2, 15), iop=rng.integers(24, 36)
    )
    family = _FAMILY[bool(rng.random() < profile.family_history_rate)]
    return f"{age}-year-old {sex}. {history} {family[rng.integers(len(family))]}"
