"""A run's own files: its record (run.json), where it resumes from, loading and checking
checkpoints, and writing them atomically."""
