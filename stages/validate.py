from lottery import stage
from lottery.steps.validate import validated

if __name__ == "__main__":
    stage.run(validated)
