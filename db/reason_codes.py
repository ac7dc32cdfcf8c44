"""Every reason code any part of the service records, in one enumeration.

Stored in ``images.reason_code`` as the member's string value, so the values are a
stable interface for statistics and the analysts' views: add members, never rename.
``db.lifecycle`` is where statuses change with these reasons and re-exports the enum.
"""

from __future__ import annotations

import enum

__all__ = ["ReasonCode"]


class ReasonCode(enum.StrEnum):
    """Why an image was rejected or failed: stable values for machines and statistics."""

    # A file refused for its content (mdf.imaging's Rejection), at intake or by a worker
    # decoding it again.
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
    GRAYSCALE = "grayscale"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    DECODE_ERROR = "decode_error"
    # A file intake or a worker cannot read at all.
    UNREADABLE = "unreadable"
    # A manifest row that names no usable file.
    BAD_MANIFEST = "bad_manifest"
    OUTSIDE_INBOX = "outside_inbox"
    MISSING_FILE = "missing_file"
    # A worker's failures: the model refuses the picture, or preparing it, the forward
    # pass or the whole chunk raised.
    UNUSABLE_IMAGE = "unusable_image"
    PREPROCESS_ERROR = "preprocess_error"
    INFERENCE_ERROR = "inference_error"
    WORKER_ERROR = "worker_error"
    # Started max_attempts times and never finished (give_up).
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    # A delivery entry that is not a regular file inside the inbox, or too big to read.
    SPECIAL_FILE = "special_file"
    OUTSIDE_INBOX_LINK = "outside_inbox_link"
    FILE_TOO_LARGE = "file_too_large"
    # A manifest that cannot be decoded or parsed, and single rows that cannot be applied.
    UNREADABLE_MANIFEST = "unreadable_manifest"
    FIELD_TOO_LONG = "field_too_long"
    UNKNOWN_LATERALITY = "unknown_laterality"
    METADATA_CONFLICT = "metadata_conflict"
    # A DICOM whose compressed frames contradict its header, or with too many frames.
    CODESTREAM_MISMATCH = "codestream_mismatch"
    TOO_MANY_FRAMES = "too_many_frames"
    # The bytes a worker reads are not the ones intake registered.
    CONTENT_CHANGED = "content_changed"
