from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage, tracking  # noqa: E402
from lottery.steps.prune import prune  # noqa: E402

if __name__ == "__main__":
    stage.run(prune, per_round=True, on_failure=tracking.branch_failed)
