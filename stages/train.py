from lottery import stage, tracking
from lottery.steps.train import train_dense

if __name__ == "__main__":
    stage.run(train_dense, on_failure=tracking.branch_failed)
