"""The ``tussis`` command: submitting recordings to a Tussis server (``submit``,
``status``, ``results``), and training and evaluating model bundles."""
