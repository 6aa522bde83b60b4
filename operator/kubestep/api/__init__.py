"""The kubestep resources as Pydantic models: the single source of truth for the CRDs.

Import the module you need (``kubestep.api.workflow``, ``kubestep.api.run``, ...): nothing is imported
here, so that a step pod's runner loads only the models it reads (its start is on every step's path).
"""
