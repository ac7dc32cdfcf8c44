"""Wall time of delivering N instances' results to a local Orthanc: SR and SEG built and sent.

Starts Orthanc with its DICOMweb plugin on loopback (Debian packages orthanc and
orthanc-dicomweb) and stores N synthetic fundus photographs of N/4 studies into it, as
``bench/dicom_pull.py`` does. They are taken in by intake and answered as a worker would
(a prediction and a vessel mask at the source size each, without the model, whose time
``bench/pipeline.py`` measures), then every finished study is delivered by STOW-RS as
``mdf deliver`` delivers it (deliver_s: plan, read and check the sources, build the SR and
the SEGs, send, record); then once more, which must send nothing (second_deliver_s), and
with ``--resend`` semantics, which sends every object again under the same UIDs
(resend_s).

    python bench/dicom_deliver.py [--instances 200] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dicom_pull import write_studies  # noqa: E402
from db.cli import upgrade  # noqa: E402
from db.deliveries import finished_dicom_studies  # noqa: E402
from db.session import session_factory  # noqa: E402
from delivery.service import Deliverer  # noqa: E402
from mdf.settings import Settings  # noqa: E402
from scheduler.intake import ingest  # noqa: E402
from tests.delivery.classified import classify_registered  # noqa: E402
from tests.dicom_peers import Orthanc  # noqa: E402


def deliver_all(deliverer: Deliverer, studies: list[int], again: bool = False) -> tuple[float, int]:
    """Seconds to deliver every study, and the objects sent."""
    start = time.perf_counter()
    sent = 0
    for study_id in studies:
        report = deliverer.deliver(study_id, again=again)
        assert not report.failed, report.failed
        sent += report.sent
    return time.perf_counter() - start, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mdf-bench-deliver-") as scratch:
        work = Path(scratch)
        files = write_studies(work / "camera", args.instances, args.size, "jpeg-baseline")
        pacs = Orthanc(work / "orthanc")
        pacs.start()
        try:
            pacs.upload(files)
            data_dir = work / "data"
            database_url = f"sqlite:///{data_dir / 'mdf.sqlite3'}"
            upgrade(database_url)
            settings = Settings(
                data_dir=data_dir,
                database_url=database_url,
                pseudonym_key="bench-pseudonym-key-of-32-bytes-or-more",
                results_destinations=[f"dicomweb:{pacs.dicomweb}"],
            )
            sessions = session_factory(database_url)
            ingest(work / "camera", settings=settings, sessions=sessions, batch_name="bench")
            classify_registered(settings)
            with sessions() as session:
                studies = finished_dicom_studies(session)
            held = len(pacs.instances())
            deliverer = Deliverer(settings, sessions)
            deliver_s, objects = deliver_all(deliverer, studies)
            second_s, again = deliver_all(deliverer, studies)
            resend_s, resent = deliver_all(deliverer, studies, again=True)
            stored = len(pacs.instances()) - held
        finally:
            pacs.stop()
    assert again == 0 and resent == objects == stored, (again, resent, objects, stored)

    print(f"instances: {args.instances}")
    print(f"studies: {len(studies)}")
    print(f"image_side: {args.size}")
    print(f"objects: {objects}")
    print(f"deliver_s: {deliver_s:.2f}")
    print(f"instances_per_s: {args.instances / deliver_s:.1f}")
    print(f"objects_per_s: {objects / deliver_s:.1f}")
    print(f"second_deliver_s: {second_s:.2f}")
    print(f"resend_s: {resend_s:.2f}")


if __name__ == "__main__":
    main()
