"""Wall time of `mdf pull` against a local Orthanc: N fundus photographs found, fetched, taken in.

Starts Orthanc with its DICOMweb plugin on loopback (Debian packages orthanc and
orthanc-dicomweb), stores N synthetic fundus photographs of N/4 studies into it, then
times ``Scheduler.pull`` on a fresh SQLite database and the embedded Redis: the QIDO-RS
search, the WADO-RS retrieval into the spool (retrieve_s) and intake with queueing
(ingest_s); then a second pull of the same window, which must transfer nothing.

    python bench/dicom_pull.py [--instances 200] [--size 1024] [--syntax jpeg-baseline]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from db.cli import upgrade
from mdf.broker import stop_embedded_redis
from mdf.imaging.dicom_writer import TRANSFER_SYNTAXES, write_dicom_op
from mdf.settings import Settings
from mdf.synthetic.fundus import generate_case
from scheduler.pull import Puller, batch_name
from scheduler.service import Scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_peers import Orthanc  # the tests' Orthanc: tests/ is not a package

DAY = datetime(2026, 3, 10, 9, 0)
WINDOW = (date(2026, 3, 10), date(2026, 3, 10))


def write_studies(folder: Path, n: int, size: int, syntax: str) -> list[Path]:
    """N photographs, four per study (two per eye), from a few synthetic fundus images."""
    bases = [generate_case(seed, size=size).image for seed in range(8)]
    paths = []
    for i in range(n):
        pixels = bases[i % len(bases)].copy()
        pixels[0, :8] = [(i >> shift) & 0xFF for shift in (0, 8, 16)]  # distinct content
        study = f"1.2.826.0.1.3680043.8.498.77.{i // 4 + 1}"
        paths.append(
            write_dicom_op(
                folder / f"{i:05d}",
                pixels,
                transfer_syntax=syntax,
                study_uid=study,
                series_uid=f"{study}.1",
                sop_uid=f"{study}.1.{i % 4 + 1}",
                laterality="LR"[i % 2],
                acquired=DAY,
            )
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--syntax", choices=sorted(TRANSFER_SYNTAXES), default="jpeg-baseline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mdf-bench-pull-") as scratch:
        work = Path(scratch)
        files = write_studies(work / "camera", args.instances, args.size, args.syntax)
        pacs = Orthanc(work / "orthanc")
        pacs.start()
        data_dir = work / "data"
        try:
            pacs.upload(files)
            database_url = f"sqlite:///{data_dir / 'mdf.sqlite3'}"
            upgrade(database_url)
            settings = Settings(
                data_dir=data_dir,
                database_url=database_url,
                pseudonym_key="bench-pseudonym-key-of-32-bytes-or-more",
            )
            scheduler = Scheduler(settings)
            scheduler.app.connection_for_write().ensure_connection(max_retries=3)

            start = time.perf_counter()
            puller = Puller(pacs.dicomweb, settings)
            pulled = puller.pull(*WINDOW, ["OP"])
            retrieved = time.perf_counter()
            report, queued = scheduler.ingest(puller.folder, batch_name(pacs.dicomweb))
            done = time.perf_counter()
            again, _, _ = scheduler.pull(pacs.dicomweb, WINDOW, ["OP"])
            second = time.perf_counter() - done
        finally:
            pacs.stop()
            stop_embedded_redis(data_dir)
        assert pulled.retrieved == args.instances and pulled.failures == 0, pulled
        assert report.images == queued == args.instances, report
        assert again.retrieved == 0 and again.already_held == args.instances, again
        megabytes = sum(path.stat().st_size for path in files) / 1e6

    print(f"instances: {args.instances}")
    print(f"transfer_syntax: {args.syntax}")
    print(f"image_side: {args.size}")
    print(f"megabytes: {megabytes:.1f}")
    print(f"pull_s: {done - start:.2f}")
    print(f"retrieve_s: {retrieved - start:.2f}")
    print(f"ingest_s: {done - retrieved:.2f}")
    print(f"instances_per_s: {args.instances / (done - start):.1f}")
    print(f"second_pull_s: {second:.2f}")


if __name__ == "__main__":
    main()
