"""Name -> implementation tables for models, pruning strategies and controls."""


class Registry(dict):
    """A dict filled by a `@registry.register("name")` decorator on each implementation."""

    def register(self, name):
        def add(implementation):
            if name in self:
                raise ValueError(f"{name!r} is registered twice")
            self[name] = implementation
            return implementation

        return add
