"""Helpers the tests (and a few bench/ scripts) share: real servers and worker processes."""
