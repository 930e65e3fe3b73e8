from lottery import stage
from lottery.steps.data import fetch

if __name__ == "__main__":
    stage.run(fetch)
