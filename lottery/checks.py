"""The small checks params rules are written with; each failure is a ParamsError naming the key."""

from lottery.errors import ParamsError


def one_of(key, value, allowed):
    if value not in allowed:
        raise ParamsError(f"{key} = {value!r}: unknown (expected one of {sorted(allowed)})")


def positive(key, value):
    if not value > 0:
        raise ParamsError(f"{key} = {value!r}: must be > 0")


def at_least(key, value, minimum):
    if value < minimum:
        raise ParamsError(f"{key} = {value!r}: must be >= {minimum}")


def fraction(key, value, closed_low=False, closed_high=False):
    """`value` in (0, 1), with either end included when asked."""
    low_ok = 0 <= value if closed_low else 0 < value
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok):
        interval = f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}"
        raise ParamsError(f"{key} = {value!r}: must be in {interval}")
