from lottery import stage, tracking
from lottery.steps.control import control

if __name__ == "__main__":
    stage.run(control, per_round=True, per_control=True, on_failure=tracking.branch_failed)
