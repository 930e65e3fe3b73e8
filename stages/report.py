from lottery import warm

warm.hand_off(__name__)  # runs this stage in the warm worker when one answers; see lottery/warm.py

from lottery import stage, tracking  # noqa: E402
from lottery.steps.report import summarize  # noqa: E402

if __name__ == "__main__":
    stage.run(summarize, on_failure=tracking.lineage_failed)
