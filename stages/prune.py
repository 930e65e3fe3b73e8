from lottery import stage, tracking
from lottery.steps.prune import prune

if __name__ == "__main__":
    stage.run(prune, per_round=True, on_failure=tracking.branch_failed)
