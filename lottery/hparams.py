"""Typed hyperparameters read from params.yaml.

Every key is required in params.yaml, so an experiment's params file says everything that
shaped it. A value of the wrong type, a missing or unknown key, or a value its section refuses
(each section is a dataclass of lottery.sections with checks of its own) raises `ParamsError`
whose one-line message names the key. The file is read as YAML 1.2, as DVC reads it
(lottery.yaml12).

Reading needs no registry: what a value may be given the other sections, and each method's
rules, are checked once, by the validate stage (lottery.validation), which every other stage
runs after. Which params name a lineage is lottery.identity's schema.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from lottery import yaml12
from lottery.errors import ParamsError
from lottery.sections import (
    SECTIONS,
    CompactHparams,
    ControlsHparams,
    DataHparams,
    DistributedHparams,
    EarlyBirdHparams,
    FactorizeHparams,
    ModelHparams,
    PruneHparams,
    ReportHparams,
    RewindHparams,
    SupermaskHparams,
    TrackingHparams,
    TrainHparams,
    WeightAgnosticHparams,
)


@dataclass(frozen=True)
class Hparams:
    seed: int
    data: DataHparams
    model: ModelHparams
    train: TrainHparams
    prune: PruneHparams
    rewind: RewindHparams
    controls: ControlsHparams
    early_bird: EarlyBirdHparams
    supermask: SupermaskHparams
    weight_agnostic: WeightAgnosticHparams
    factorize: FactorizeHparams
    compact: CompactHparams
    distributed: DistributedHparams
    rounds: int  # pruning rounds after the dense round 0
    tracking: TrackingHparams
    report: ReportHparams
    raw: dict = dataclasses.field(compare=False, repr=False)

    def branches(self):
        """(round, control) of every branch the params ask for: the ticket's rounds 0..N (control
        None), then each control at rounds 1..N."""
        ticket = [(round_, None) for round_ in range(self.rounds + 1)]
        return ticket + [(round_, name) for round_ in range(1, self.rounds + 1) for name in self.controls.run]


def from_dict(raw):
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    known = {"seed", "rounds", *SECTIONS}
    for key in raw:
        if key not in known:
            raise ParamsError(f"{key}: unknown section (expected one of {sorted(known)})")
    sections = {name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    for section in sections.values():
        section.check()
    return Hparams(
        seed=_typed("seed", _required(raw, "seed", ""), int),
        rounds=_rounds(_required(raw, "rounds", "")),
        raw=raw,
        **sections,
    )


def load(path="params.yaml"):
    return from_dict(_read(path))


def load_section(name, path="params.yaml"):
    """One section of a params file, typed and checked on its own: for commands that need only it
    (the lineage commands read `tracking`), so the rest of the file may ask for what this machine
    lacks (train.device: cuda on a CPU)."""
    raw = _read(path)
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    section = _section(name, SECTIONS[name], raw.get(name))
    section.check()
    return section


def _read(path):
    path = Path(path)
    try:
        return yaml12.load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def rounds_section(count):
    """The `rounds` mapping for `count` rounds: DVC's foreach needs each round's predecessor."""
    return {str(r): {"prev": r - 1} for r in range(1, count + 1)}


def _section(name, cls, values):
    if not isinstance(values, dict):
        raise ParamsError(f"{name}: missing section" if values is None else f"{name}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in fields:
            raise ParamsError(f"{name}.{key}: unknown key (expected one of {fields})")
    return cls(**{f: _typed(f"{name}.{f}", _required(values, f, name), hints[f]) for f in fields})


_MISSING = object()


def _required(values, key, section):
    value = values.get(key, _MISSING)
    if value is _MISSING:
        raise ParamsError(f"{section + '.' if section else ''}{key}: missing key")
    return value


def _typed(key, value, hint):
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: must be a list")
        (item,) = typing.get_args(hint)
        return [_typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
            return value
        if kind is bool and isinstance(value, bool):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ParamsError(f"{key} = {value!r}: must be {names}")


def _rounds(section):
    # Keys are strings: DVC's params context drops integer keys, and foreach needs them.
    hint = "(run `make rounds N=<count>`)"
    if not isinstance(section, dict) or not section:
        raise ParamsError(f"rounds: must map each round '1'..'N' to {{prev: N-1}} {hint}")
    expected = [str(r) for r in range(1, len(section) + 1)]
    if sorted(section, key=str) != sorted(expected) or any(type(k) is not str for k in section):
        raise ParamsError(f"rounds: keys {list(section)!r} must be the strings '1'..'{len(section)}' {hint}")
    for key in expected:
        if section[key] != {"prev": int(key) - 1}:
            raise ParamsError(f"rounds.{key} = {section[key]!r}: must be {{prev: {int(key) - 1}}}")
    return len(section)
