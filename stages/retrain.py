from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage  # noqa: E402
from lottery.steps.retrain import retrain  # noqa: E402

if __name__ == "__main__":
    stage.run(retrain, per_round=True, data_parallel=True)
