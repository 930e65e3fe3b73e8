"""What each DVC stage does, one module per stage, as plain functions of the params and the round.

Stage scripts (stages/<name>.py) only parse arguments and call one of these; tests call them
without DVC. A stage imports only its own module's code, so dvc.yaml's code deps (lottery.deps)
rerun a stage only when code it can run has changed. `lottery.pipeline` chains them in-process.
"""
