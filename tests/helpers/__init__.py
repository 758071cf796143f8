"""Code shared by the test modules (and a few bench/ scripts): data makers, commands, real
servers, worker processes and test clusters (no tests, no fixtures)."""
