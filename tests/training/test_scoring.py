"""The held-out evaluation generates answer text; the referral thresholds need only the
label probabilities, which come out the same without it."""

from __future__ import annotations

from pathlib import Path

from mdf.synthetic.fundus import generate_case
from training.dataset import PreparedSet
from training.run import classified, score
from training.splits import Example


def test_probabilities_without_text_are_those_the_evaluation_scores(tiny_checkpoint: Path) -> None:
    from mdf_model import load_classifier

    classifier = load_classifier(tiny_checkpoint)
    cases = [generate_case(seed, size=128, with_text=False) for seed in range(3)]
    examples = [Example(i, f"{i}.png", 0, c.label, c.patient_id, None) for i, c in enumerate(cases)]
    prepared = PreparedSet(examples, [classifier.prepare(c.image) for c in cases], 0)

    evaluated = score(classifier, prepared, batch_size=2)
    plain = classified(classifier, prepared, generate_text=False, batch_size=2)

    assert [r.probabilities for r in plain] == evaluated.probabilities
    assert all(r.text == "" and r.text_label is None for r in plain)
