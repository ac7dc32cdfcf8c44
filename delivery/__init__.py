"""Results back to the PACS: a DICOM SR and SEG per finished study that came as DICOM.

``results`` reads what a study's images were found to be, ``objects`` plans each result
object (``uids``: derived, so a resend replaces) and builds it (``sr``, ``seg``, from the
``sources`` and the stored masks, coded with ``concepts``), ``destinations`` sends it by
STOW-RS or C-STORE, and ``service`` records every attempt in the deliveries table.
``tasks`` serves the deliver queue; ``cli`` is ``mdf deliver``. Like the scheduler and
the workers, this package meets the others only through the database and named Celery
tasks.
"""
