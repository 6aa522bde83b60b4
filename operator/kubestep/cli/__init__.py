"""The ``kubestep`` command line."""
