"""What every service process shares: settings, logging, the Celery app, image decoding, the CLI.

The service packages build on this one: ``db`` (schema), ``scheduler`` (intake),
``worker`` (inference), ``training`` (fine-tuning and promotion). ``mdf_model`` is
the model itself and imports nothing from any of them.
"""
