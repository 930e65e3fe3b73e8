from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage, tracking  # noqa: E402
from lottery.steps.control import control  # noqa: E402

if __name__ == "__main__":
    stage.run(control, per_round=True, per_control=True, on_failure=tracking.branch_failed, data_parallel=True)
