from lottery import stage
from lottery.steps.retrain import retrain

if __name__ == "__main__":
    stage.run(retrain, per_round=True)
