"""Everything about models: audio -> spectrogram (``spectrogram``), backbones
(``backbones``, ``yamnet``), the bundle format (``bundle``), the ``Model`` that
serving calls (``model``), training, evaluation, the cough gate's training,
data-set readers and splits. Imported by the worker and the ``tussis`` model
commands, never by the API (an import-linter contract in pyproject.toml)."""
