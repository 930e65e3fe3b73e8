from lottery import pipeline, stage

if __name__ == "__main__":
    stage.run(pipeline.compact, per_round=True)
