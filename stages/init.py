from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage, tracking  # noqa: E402
from lottery.steps.init import init  # noqa: E402

if __name__ == "__main__":
    stage.run(init, on_failure=tracking.lineage_failed)
