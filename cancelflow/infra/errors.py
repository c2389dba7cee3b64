class InfraError(RuntimeError):
    """A one-line, actionable error about the local infrastructure (missing JDK, busy port...)."""
