"""code: the stamp of each stage script's code (lottery.deps), which its stages depend on."""

from lottery import deps, paths


def stamp_code():
    """Write models/code/<script>.json for every stage script; unchanged code keeps its bytes."""
    deps.write_stamps(paths.code_stamps())
