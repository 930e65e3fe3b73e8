from lottery import stage, tracking
from lottery.steps.init import init

if __name__ == "__main__":
    stage.run(init, on_failure=tracking.lineage_failed)
