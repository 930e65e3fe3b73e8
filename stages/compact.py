from lottery import stage, tracking
from lottery.steps.compact import compact

if __name__ == "__main__":
    stage.run(compact, per_round=True, on_failure=tracking.branch_failed)
