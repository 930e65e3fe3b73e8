from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage  # noqa: E402
from lottery.steps.code import stamp_code  # noqa: E402

if __name__ == "__main__":
    stage.run(stamp_code, with_params=False)
