"""Code shared by the test modules: data makers, commands, test clusters (no tests, no fixtures)."""
