"""data: the dataset's verified raw files (and their tensor file) under data/<dataset>."""

from lottery import data, paths


def fetch(hp):
    data.fetch(hp.data, paths.dataset_root(hp.data.dataset))
