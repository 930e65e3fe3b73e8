"""Sweeps: a grid of lineages, one DVC experiment per point, run on a Ray cluster (`lottery sweep`).

`grid` turns settings and seeds into named points; `driver` checks the project and the points and
leaves out the finished ones; `cluster` runs the rest as Ray tasks (`task`), each of which runs
its point's pipeline in a workspace of its own (`workspace`) and pushes the results to the team's
git remote, DVC remote and MLflow store.
"""
