"""The model registry a model module registers itself in; lottery.models.catalog imports every
model module and is where the filled registry is read."""

from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register
