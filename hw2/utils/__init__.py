"""Utilities below everything else: atomic file writes, process checks, runtime settings,
and the one module that touches private library internals (compat)."""
