"""The Ray Serve application (lands with the serving issue). Never imports torch."""

__all__: list[str] = []
