"""Code shared by the API and the workers: configuration, database, storage, audio."""
