"""The stored values that can identify a patient, listed in one place.

Sites name folders and files after patients (``DOE_JANE_0012345/right.jpg``), build
study ids from the patient ID, and write names into free clinical text; DICOM UIDs
link back to the hospital's records (the DICOM confidentiality profile replaces them).
The service keeps these values because intake and the workers need them, to read a
file again or to find a study delivered twice, but they stay on the operator's side:
no analysts' view, export, report or log line carries them. The analysts' views
(migration 0004) and ``mdf.analysis`` leave these columns out, ``mdf.logs`` withholds
log fields of the same names, and the tests check every output against this list.
"""

from __future__ import annotations

from sqlalchemy.orm import InstrumentedAttribute

from db.models import Batch, Image, ImagePath, Study

IDENTIFYING: tuple[InstrumentedAttribute[str | None], ...] = (
    Batch.source,  # the delivered folder
    ImagePath.path,  # every path a file was seen under
    Image.source_path,  # the first of them (or manifest:line:file)
    Image.mask_path,  # a delivered ground-truth mask, named like its image
    Image.clinical_text,  # free text from the manifest or DICOM
    Image.study_uid,
    Image.series_uid,
    Image.sop_uid,
    Study.study_key,  # StudyInstanceUID or the manifest's study id
)

#: The column names, as log fields and view columns would carry them.
IDENTIFYING_NAMES = frozenset(column.key for column in IDENTIFYING)

#: What the analyst role may read (``mdf db upgrade`` grants it): none of the above.
ANALYST_VIEWS = ("study_results", "study_rollup", "screening_outcomes")
