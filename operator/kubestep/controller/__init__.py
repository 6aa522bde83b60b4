"""The operator: kopf watches around the pure engine, one API module, pure builders of child objects."""
