from lottery import stage
from lottery.steps.rewind import rewind

if __name__ == "__main__":
    stage.run(rewind, per_round=True)
