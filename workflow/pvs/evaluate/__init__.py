"""The evaluation stage: scoring a model, the lm-eval tasks it is scored on, and hub evaluation data.

    python -m pvs.evaluate --model DIR --data DIR --tasks DIR --out JSON   # score one model (pvs.evaluate.score)
    python -m pvs.evaluate.tasks --data DIR --out DIR                      # local lm-eval tasks from held-out text
    python -m pvs.evaluate.sets --config CONFIG --data DIR --out DIR       # hub perplexity sets / tasks, fetched once
"""
