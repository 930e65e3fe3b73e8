from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage  # noqa: E402
from lottery.steps.rewind import rewind  # noqa: E402

if __name__ == "__main__":
    stage.run(rewind, per_round=True)
