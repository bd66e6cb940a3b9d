"""The ``tussis`` command: training and evaluating model bundles (and, later,
submitting recordings to a Tussis server)."""
