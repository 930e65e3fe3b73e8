"""params.yaml read as DVC reads it: YAML 1.2 scalars (its core schema), through PyYAML.

PyYAML implements YAML 1.1, where `1e-4` is a string, `on`/`yes` are booleans, `017` is octal and
`1:30` is 90. DVC reads params.yaml as YAML 1.2 (ruamel.yaml), where `1e-4` is a float and the
others are the string 'on', the integer 17 and the string '1:30'. This loader types scalars as
DVC's parser does, so a value means the same to the stages as to `dvc params diff` and `dvc exp run -S`.
"""

import math
import re

import yaml

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"

# YAML 1.2 implicit scalars as DVC's parser (ruamel.yaml, version 1.2) resolves them: the core
# schema plus ruamel's extensions (`_` digit separators, 0b binary ints).
_CORE = (
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_INT, r"[-+]?(?:0b[01_]+|0o?[0-7_]+|[0-9_]+|0x[0-9a-fA-F_]+)", "-+0123456789"),
    (
        _FLOAT,
        r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
)


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.1's bool, int and float resolution replaced by 1.2's."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in _CORE:
    Loader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_first))


def _construct_int(loader, node):
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits, 10)  # leading zeros stay decimal in 1.2


def _construct_float(loader, node):
    text = loader.construct_scalar(node).replace("_", "").lower()
    if text.endswith(".nan"):
        return math.nan
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    return float(text)


def _construct_bool(loader, node):
    return loader.construct_scalar(node).lower() == "true"


Loader.add_constructor(_INT, _construct_int)
Loader.add_constructor(_FLOAT, _construct_float)
Loader.add_constructor(_BOOL, _construct_bool)


def load(text):
    """The YAML document in `text`, scalars typed as YAML 1.2 types them."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
