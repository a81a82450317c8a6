"""Networks: ``create(name, in_channels=4, out_channels=3, **options)`` and ``list_models()``."""
from glioseg.models.registry import count_parameters, create, describe, list_models

__all__ = ["count_parameters", "create", "describe", "list_models"]
