"""From artifacts to a running cluster (lands with the deploy issue)."""

__all__: list[str] = []
