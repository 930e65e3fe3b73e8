from lottery import stage, tracking
from lottery.steps.report import summarize

if __name__ == "__main__":
    stage.run(summarize, on_failure=tracking.lineage_failed)
