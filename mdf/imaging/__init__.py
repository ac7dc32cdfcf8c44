"""What a delivered file is: probing, decoding, rejection reasons, and the DICOM writer.

``probe`` examines a file once at intake; ``load_frame`` decodes the same file the same
way wherever pixels are needed (workers, training, the report, ``mdf classify``);
``decode_reduced``, where fewer pixels will do (a JPEG at 1/2, 1/4 or 1/8 of its size).
"""

from mdf.imaging.files import (
    DecodedFrame,
    ProbedFile,
    ProbedImage,
    decode_frame,
    decode_reduced,
    load_frame,
    probe,
)
from mdf.imaging.rejection import Rejection

__all__ = [
    "DecodedFrame",
    "ProbedFile",
    "ProbedImage",
    "Rejection",
    "decode_frame",
    "decode_reduced",
    "load_frame",
    "probe",
]
