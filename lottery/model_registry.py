"""A round's ticket in the MLflow Model Registry, registered once per lineage and round."""

import tempfile

from lottery import provenance, records
from lottery.runs import LINEAGE_TAG, ROUND_TAG


def register(runs, name, model, round_, example):
    """Log a round's ticket as an MLflow PyTorch model on the parent run of `runs` (a
    lottery.runs.RunIndex) and register it as `name`, unless this lineage registered that round
    there already; the model version.

    The model is saved in MLflow's safe `pt2` format (torch.export, no pickled code), traced on
    `example` (a few real inputs), with `mlflow.pytorch.save_model`, then logged through the
    index's client: `log_model` would set MLflow's process-wide tracking URI and active run.
    """
    import mlflow.pytorch
    import torch

    client = runs.client
    parent = runs.run_id(records.LINEAGE)
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{parent}'"):
        if version.tags.get(ROUND_TAG) == str(round_):
            return version.version
    artifact_path = f"ticket-round-{round_}"
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pytorch.save_model(
            model.eval(),
            f"{tmp}/{artifact_path}",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        client.log_artifacts(parent, f"{tmp}/{artifact_path}", artifact_path)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    tags = {
        LINEAGE_TAG: runs.lineage,
        ROUND_TAG: str(round_),
        "lottery.parent_run_id": parent,
        provenance.EXPERIMENT_TAG: provenance.dvc_experiment(),
    }
    source = f"{client.get_run(parent).info.artifact_uri}/{artifact_path}"
    return client.create_model_version(name, source, run_id=parent, tags=tags).version
