from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage, tracking  # noqa: E402
from lottery.steps.train import train_dense  # noqa: E402

if __name__ == "__main__":
    stage.run(train_dense, on_failure=tracking.branch_failed, data_parallel=True)
