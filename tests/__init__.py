"""The test suite: unit and integration tests on CPU, real components at small scale (tests/helpers.py: shared builders)."""
