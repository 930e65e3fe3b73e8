from lottery import stage, tracking
from lottery.steps.evaluate import evaluate

if __name__ == "__main__":
    stage.run(evaluate, per_round=True, on_failure=tracking.branch_failed)
