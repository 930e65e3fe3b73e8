from lottery import pipeline, stage

if __name__ == "__main__":
    stage.run(pipeline.control, per_round=True, per_control=True)
