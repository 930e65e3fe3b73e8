"""The walk of hp: how far the params travel through the library in the prune step of round 1.

Runs `lottery.steps.prune.prune(hp, 1)` (the prune@1 stage, without DVC) on a tiny setup in a
temporary folder: LeNet-300-100 with params.yaml's defaults, round 0's trained weights a fresh
draw, its mask all ones, tracking pointed at a closed port (so it warns and gives up, as on an
unreachable store). `--strategy edge_popup` searches a supermask instead (3 iterations on 600
MNIST images). The step runs under `sys.setprofile`, which sees every Python call:

- An hp call is a call of a function defined in a `lottery` module that is handed the params:
  one of its arguments is the `Hparams` or one of its sections (`hp.prune`, `hp.data`, ...), or
  holds one as an attribute (`self.hp` of a method, `inputs.hp` of SearchInputs).
  Methods that `dataclasses` generates (`__init__`, `__hash__`, compiled from a string) are not
  counted: nobody reads them.
- Its caller in the walk is the innermost hp call still running when it starts (none for the first).
- Rooms: the distinct modules of the hp calls.
- A move: an hp call in another module than its caller in the walk.
- A climb back up: a move into a room the walk has entered before (its first module, or the
  target of an earlier move). Every move enters a new room or climbs, so climbs = moves - rooms + 1.

`--with-reading` walks the prune@1 stage's reading of params.yaml too (the checks run on the new
params, as the stage script runs them), not only the step.

Usage, from the checkout to measure (`--root`: another checkout's code, e.g. main's, with this
same tool and definition):
    .venv/bin/python tools/hp_walk.py [--strategy magnitude|edge_popup] [--with-reading] [--root PATH]
"""

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"tracking": {"uri": "http://127.0.0.1:9"}}
SEARCH = {"supermask": {"iterations": 3}, "data": {"train_subset": 600}}


class Walk:
    """The hp calls a profiled block makes, counted as the module docstring defines them."""

    def __init__(self, carries_hp):
        self.carries_hp = carries_hp
        self.stack, self.rooms, self.moves, self.climbs = [], [], [], 0

    def __call__(self, frame, event, arg):
        if event == "return" and self.stack and self.stack[-1][0] is frame:
            self.stack.pop()
        if event != "call" or not frame.f_globals.get("__name__", "").startswith("lottery"):
            return
        if not frame.f_code.co_filename.endswith(".py"):
            return  # a method that dataclasses wrote (__init__, __hash__): code nobody walks into
        if not any(self.carries_hp(value) for value in _arguments(frame)):
            return
        module = frame.f_globals["__name__"]
        caller = self.stack[-1][1] if self.stack else None
        if caller is not None and module != caller:
            self.moves.append(f"{self.stack[-1][0].f_code.co_qualname} -> {module}.{frame.f_code.co_qualname}")
            self.climbs += module in self.rooms
        if module not in self.rooms:
            self.rooms.append(module)
        self.stack.append((frame, module))


def _arguments(frame):
    """The values a call was handed (positional, keyword-only, *args, **kwargs)."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)  # CO_VARARGS, CO_VARKEYWORDS
    values = []
    for name in code.co_varnames[:count]:
        value = frame.f_locals.get(name)
        values += list(value) if isinstance(value, tuple) else list(value.values()) if isinstance(value, dict) else [value]
    return values


def hp_test(hparams, hp):
    """Whether a value is the params or a section of them, or holds one as an attribute."""
    # A section is an instance of one of the params file's section classes (before lottery.sections
    # existed, of hparams.Section): one test for this checkout and for an older one under --root.
    kinds = (hparams.Hparams, *{type(getattr(hp, name)) for name in hp.raw if name not in ("seed", "rounds")})

    def carries_hp(value):
        if isinstance(value, kinds):
            return True
        attributes = getattr(value, "__dict__", None)
        return isinstance(attributes, dict) and any(isinstance(held, kinds) for held in attributes.values())

    return carries_hp


def params(strategy):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = {**OVERRIDES, "prune": {"strategy": strategy}, **(SEARCH if strategy == "edge_popup" else {})}
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


def prepare(hp):
    """Round 0's trained weights (θ0 itself), its all-ones mask and the rewind point, in the cwd."""
    from lottery import checkpoints, data, masks, paths

    spec = data.DATASETS[hp.data.dataset]
    model_spec = checkpoints.model_spec(hp.model.name, spec.input_shape, spec.num_classes, hp.model.width)
    model = checkpoints.build(model_spec, seed=hp.seed)
    for path in (paths.trained_weights(0), paths.rewind_point()):
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save(path, model, spec=model_spec, round_=0, iteration=0, parents=[])
    masks.save(masks.ones(model), paths.mask(0))


def walk(strategy, with_reading):
    from lottery import hparams
    from lottery.steps import prune

    raw = params(strategy)
    hp = hparams.from_dict(raw)
    prepare(hp)
    recorder = Walk(hp_test(hparams, hp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreachable tracking store's warning
        sys.setprofile(recorder)
        try:
            # The stage reads its params first (lottery.stage: hparams.load), and the calls that
            # reading makes on the new params (their checks) are part of the walk.
            prune.prune(hparams.from_dict(raw) if with_reading else hp, 1)
        finally:
            sys.setprofile(None)
    return recorder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="magnitude", choices=("magnitude", "edge_popup"))
    parser.add_argument("--moves", action="store_true", help="also list each move (caller -> callee)")
    parser.add_argument("--with-reading", action="store_true", help="also walk the stage's reading of its params")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose lottery/ runs (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(ROOT / "data", Path(folder) / "data")
        tempfile.tempdir = folder  # tracking's probe answers and locks stay in the folder
        os.environ["DVC_ROOT"] = folder
        with contextlib.chdir(folder):
            recorder = walk(args.strategy, args.with_reading)
    counts = f"{len(recorder.rooms)} rooms, {len(recorder.moves)} moves, {recorder.climbs} climbs"
    print(f"{args.root.resolve()} ({args.strategy}): {counts}")
    print("rooms, in the order entered: " + ", ".join(recorder.rooms))
    if args.moves:
        print("\n".join(recorder.moves))


if __name__ == "__main__":
    main()
