"""The coded concepts of our result objects, and who made them.

Standard codes (DICOM's DCM, SNOMED CT, and UMLS where TID 1500 uses it) name what a
viewer knows: a finding, image quality, a recommendation, the retina and its blood
vessels. What only this service means (its labels, gradable or not, referable or not,
refer or not and why, a quality reason, the model's generated answer) is coded in a
private scheme, ``99MDF``, which each SR declares in its Coding Scheme Identification
Sequence as the standard asks of a private scheme.
"""

from __future__ import annotations

from importlib.metadata import version

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

ALGORITHM = "MDF-MLLM"
MANUFACTURER = "MDF-MLLM fundus screening"
SOFTWARE_VERSION = version("mdf-screening")

SCHEME = "99MDF"
SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=SCHEME, name="MDF-MLLM fundus screening results", version="1"
)


def mdf_code(value: str, meaning: str) -> CodedConcept:
    """A concept of our scheme (a value over 16 characters becomes a Long Code Value)."""
    return CodedConcept(value, SCHEME, meaning)


FINDING = codes.DCM.Finding  # the label the model chose
IMAGE_QUALITY = codes.DCM.ImageQuality  # gradable or not
QUALITY_SCORE = codes.DCM.ImageQualityRating  # 0 to 1, gradable from 0.5
QUALITY_FINDING = codes.DCM.QualityFinding  # why an image is not gradable, one per reason
RECOMMENDATION = codes.DCM.Recommendation  # referable or not
NO_UNITS = codes.UCUM.NoUnits
RETINA = codes.SCT.Retina
BLOOD_VESSEL = codes.SCT.BloodVessel
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
LATERALITY = {"R": codes.SCT.Right, "L": codes.SCT.Left}
ARTIFICIAL_INTELLIGENCE = codes.cid7162.ArtificialIntelligence
PROCEDURE = CodedConcept("410451008", "SCT", "Ophthalmic photography")
#: TID 1500's container of the report's own evaluations (row 12): the study's decision.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

GRADABLE = mdf_code("GRADABLE", "Gradable")
UNGRADABLE = mdf_code("UNGRADABLE", "Ungradable")
REFERABLE = mdf_code("REFERABLE", "Referable")
NOT_REFERABLE = mdf_code("NOT-REFERABLE", "Not referable")
REFERRAL_PROBABILITY = mdf_code("REFERRAL-P", "Referral probability")
MODEL_ANSWER = mdf_code("MODEL-ANSWER", "Model's generated answer")
#: The study's decision (screening_outcomes.decision) and why (its reason).
DECISION = {"refer": mdf_code("REFER", "Refer"), "no_refer": mdf_code("NO-REFER", "Do not refer")}
DECISION_REASON = mdf_code("DECISION-REASON", "Reason for the decision")


def label(name: str) -> CodedConcept:
    return mdf_code(name, name)


def probability_of(name: str) -> CodedConcept:
    return mdf_code(f"P-{name}", f"Probability of {name}")


def quality_reason(code: str) -> CodedConcept:
    return mdf_code(code, code.replace("_", " "))
