"""A sweep's grid: `-S key=v1,v2` settings and seeds, crossed into points, each a set of params
overrides with a name of its own.

A value is read as YAML 1.2 reads it (`0.3` a float, `[reinit,random_sparse]` a list); commas split
values only outside brackets and quotes. `rounds=N` sets the number of pruning rounds, as
`lottery rounds N` does. A point's name is `sweep-` and a digest of its overrides, so the same
point always has the same DVC experiment name, whichever sweep asks for it.
"""

import copy
import itertools
from dataclasses import dataclass

from lottery import hparams, identity, yaml12
from lottery.errors import ParamsError

PREFIX = "sweep-"


@dataclass(frozen=True)
class Point:
    """One experiment of a sweep: its DVC experiment name and its params overrides, {dotted key: value}."""

    name: str
    overrides: dict

    def label(self):
        """`key=value` pairs, as `dvc exp run -S` takes them."""
        return " ".join(f"{key}={_shown(value)}" for key, value in self.overrides.items())


def _shown(value):
    if isinstance(value, list):
        return "[" + ",".join(map(_shown, value)) + "]"
    return "true" if value is True else "false" if value is False else str(value)


def split_values(text):
    """`a,[b,c],'d,e'` → ['a', '[b,c]', "'d,e'"]: commas outside brackets and quotes."""
    values, depth, quote, start = [], 0, None, 0
    for at, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:at])
            start = at + 1
    return values + [text[start:]]


def parse_setting(text):
    """`prune.rate=0.2,0.3` → ('prune.rate', [0.2, 0.3])."""
    key, sign, values = text.partition("=")
    if not sign or not key.strip() or not values.strip():
        raise ParamsError(f"-S {text!r}: expected KEY=VALUE[,VALUE...], e.g. -S prune.rate=0.2,0.3")
    parsed = []
    for value in split_values(values):
        try:
            parsed.append(yaml12.load(value))
        except Exception as err:  # a YAML error's message spans lines
            raise ParamsError(f"-S {key}: {value!r} is not a YAML value ({str(err).splitlines()[0]})") from None
    return key.strip(), parsed


def points(settings, seeds=()):
    """Every combination of the settings' values (the first setting varies slowest), each with
    every seed; one point with no overrides when there is nothing to vary."""
    axes = [parse_setting(text) for text in settings]
    if seeds:
        axes.append(("seed", list(seeds)))
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ParamsError(f"-S: a key is set twice ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))})")
    found = []
    for values in itertools.product(*(values for _, values in axes)):
        overrides = dict(zip(keys, values))
        found.append(Point(PREFIX + identity.digest(overrides)[:10], overrides))
    return list({point.name: point for point in found}.values())  # a value given twice is one point


def applied(raw, overrides):
    """A copy of the params dict `raw` with the overrides set; a key that params.yaml lacks is refused."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"-S {dotted}: params.yaml has no such key")
        node[key] = _rounds(value) if dotted == "rounds" else value
    return raw


def _rounds(count):
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ParamsError(f"-S rounds={count!r}: must be a number of rounds >= 1")
    return hparams.rounds_section(count)
