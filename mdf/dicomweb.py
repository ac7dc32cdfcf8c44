"""A DICOMweb client as every process builds it: retries with backoff, the configured login.

``mdf pull`` reads a PACS through it (QIDO-RS, WADO-RS) and ``delivery`` stores results
into one (STOW-RS); both talk to the same kind of server with the same credentials
(``MDF_DICOMWEB_USERNAME`` and ``MDF_DICOMWEB_PASSWORD_FILE``, or ``MDF_DICOMWEB_TOKEN_FILE``).
"""

from __future__ import annotations

import logging

import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mdf.secret_files import read_secret
from mdf.settings import Settings

#: Statuses worth another try: the server or a proxy is busy or restarting.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


def client_for(url: str, settings: Settings, connections: int = 4) -> DICOMwebClient:
    """A client whose every request is retried with exponential backoff (connection errors
    too) up to ``MDF_DICOMWEB_RETRIES`` times; ``connections``: requests in parallel."""
    session = requests.Session()
    retry = Retry(
        total=settings.dicomweb_retries,
        backoff_factor=0.5,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # QIDO and WADO are GETs; STOW posts are idempotent by UID
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=connections)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if settings.dicomweb_token_file is not None:
        session.headers["Authorization"] = f"Bearer {read_secret(settings.dicomweb_token_file)}"
    elif settings.dicomweb_username is not None:
        password = settings.dicomweb_password_file
        session.auth = (settings.dicomweb_username, read_secret(password) if password else "")
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(retry=False)  # urllib3 retries, connection errors too
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # a line per request
    return client
