"""The data stage: corpus readers, tokenizer, the five disjoint token splits, and sharded tokenization.

    python -m pvs.data --config CONFIG --out results/data          # prepare (pvs.data.prepare)
    python -m pvs.data.shards tokenize|assemble ...                 # a large HF dataset in shards

Modules: ``prepare`` (documents -> tokenizer -> split files + manifest), ``tokens`` (the readers every
stage shares), ``shards`` (parallel, resumable tokenization at scale), ``corpus/`` (offline text readers).
"""
