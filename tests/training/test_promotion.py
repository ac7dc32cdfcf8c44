"""Splits, the promotion rule, and promotion/rollback in the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from in_process import mdf_command
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from db.model_versions import promote, promoted_version, register_version, rollback
from db.models import ModelVersion, Promotion
from db.session import session_factory
from training.metrics import Evaluation, evaluate
from training.promotion import decide
from training.splits import Example, split_by_patient, split_by_source

LABELS = ["acquired", "inherited"]


def examples() -> list[Example]:
    rows = []
    for patient in range(20):
        label = LABELS[patient % 2]
        source = "atlas" if label == "inherited" and patient % 4 == 1 else f"site{patient % 3}"
        for eye in range(2):
            rows.append(
                Example(
                    patient * 2 + eye, f"/p{patient}/{eye}.jpg", 0, label, f"P{patient}", source
                )
            )
    return rows


def test_patient_split_keeps_patients_whole_and_both_labels_in_evaluation() -> None:
    split = split_by_patient(examples(), eval_fraction=0.25, seed=3)
    train = {e.patient for e in split.train}
    held = {e.patient for e in split.evaluation}
    assert train and held and not train & held
    assert {e.label for e in split.evaluation} == set(LABELS)
    assert len(split.train) + len(split.evaluation) == 40
    assert split_by_patient(examples(), seed=3) == split  # deterministic by seed
    assert split_by_patient(examples(), seed=4) != split


def test_source_split_holds_out_the_source_and_its_patients() -> None:
    data = examples()
    moved = Example(999, "/p1/other.jpg", 0, "inherited", "P1", "site0")  # P1 is also at atlas
    split = split_by_source([*data, moved], "atlas")
    assert {e.source for e in split.evaluation} == {"atlas"}
    assert "P1" not in {e.patient for e in split.train}
    with pytest.raises(ValueError, match="not among"):
        split_by_source(data, "nowhere")


def scores(recall_inherited: float) -> Evaluation:
    """10 + 10 cases: acquired all right, inherited right at the given recall."""
    hits = round(recall_inherited * 10)
    truth = ["acquired"] * 10 + ["inherited"] * 10
    probs = [{"acquired": 0.9, "inherited": 0.1}] * 10
    probs += [{"acquired": 0.2, "inherited": 0.8}] * hits
    probs += [{"acquired": 0.6, "inherited": 0.4}] * (10 - hits)
    return evaluate(LABELS, truth, probs, [None] * 20)


def test_decide_needs_a_margin_and_protects_every_class() -> None:
    champion = scores(0.6)
    assert decide(scores(0.8), champion, margin=0.05).promote
    worse = decide(scores(0.6), champion, margin=0.01)
    assert not worse.promote and "does not beat" in worse.reason
    assert decide(scores(0.5), None).promote  # the first model is always promoted

    # Better accuracy bought with a collapse of inherited recall is refused.
    champion = evaluate(
        LABELS,
        ["acquired"] * 10 + ["inherited"] * 10,
        [{"acquired": 0.4, "inherited": 0.6}] * 20,
        [None] * 20,
    )  # predicts inherited always: accuracy 0.5, inherited recall 1.0
    challenger = scores(0.7)  # accuracy 0.85, inherited recall 0.7
    refused = decide(challenger, champion, max_recall_drop=0.1)
    assert not refused.promote and "recall of inherited drops" in refused.reason


def _version(session, tag: str) -> ModelVersion:
    return register_version(
        session, path=Path(f"/ckpt/{tag}"), manifest_sha256=tag * 64, labels=LABELS, name=tag
    )


def test_promote_and_rollback_are_recorded(database_url: str) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        first, second = _version(session, "a"), _version(session, "b")
        assert _version(session, "a").id == first.id  # registration is idempotent
        promote(session, first, reason="first model")
        promote(session, second, reason="better", metrics={"accuracy": 0.9})
    with sessions() as session:
        assert promoted_version(session).name == "b"
        assert session.scalars(select(ModelVersion.name).where(ModelVersion.is_promoted)).all() == [
            "b"
        ]
    with sessions.begin() as session:
        record = rollback(session)
        assert record.action == "rollback"
    with sessions.begin() as session:
        assert promoted_version(session).name == "a"
        with pytest.raises(ValueError, match="replaced no earlier version"):
            rollback(session)
        log = session.scalars(select(Promotion.action).order_by(Promotion.id)).all()
        assert log == ["promote", "promote", "rollback"]


def test_two_promoted_versions_are_impossible(database_url: str) -> None:
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        promote(session, _version(session, "a"), reason="first")
        _version(session, "b")
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(update(ModelVersion).values(is_promoted=True))


def test_mdf_models_shows_each_versions_referral_thresholds(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = {"threshold": 0.4125, "sensitivity": 0.92, "specificity": 0.7}
    with session_factory(database_url).begin() as session:
        register_version(
            session,
            path=Path("/ckpt/t"),
            manifest_sha256="t" * 64,
            labels=LABELS,
            name="trained",
            referral={"target_sensitivity": 0.9, "labels": {"inherited": chosen}},
        )
        _version(session, "u")
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    with mdf_command(capsys) as mdf:
        code, table, _ = mdf("models")
        assert code == 0
        _, listed, _ = mdf("models", "--json")
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}  # none promoted
    assert "inherited>=0.412" in lines["trained"] and " - " in lines["u"]
    referral = {row["name"]: row["referral"] for row in json.loads(listed)}
    assert referral == {"trained": {"target_sensitivity": 0.9, "labels": {"inherited": chosen}},
                        "u": None}  # fmt: skip
