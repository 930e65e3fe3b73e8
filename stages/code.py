from lottery import stage
from lottery.steps.code import stamp_code

if __name__ == "__main__":
    stage.run(stamp_code, with_params=False)
