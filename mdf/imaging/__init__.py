"""What a delivered file is: probing, decoding, rejection reasons, and the DICOM writer.

``probe`` examines a file once at intake; ``load_frame`` decodes the same file the same
way wherever pixels are needed (workers, training, the report, ``mdf classify``).
"""

from mdf.imaging.files import ProbedFile, ProbedImage, decode_frame, load_frame, probe
from mdf.imaging.rejection import Rejection

__all__ = ["ProbedFile", "ProbedImage", "Rejection", "decode_frame", "load_frame", "probe"]
