# Corpus -> tokenizer -> five disjoint token splits (pvs.data.tokens.SPLITS); and the local lm-eval tasks made from held-out text.


TOKENIZER = config["data"]["tokenizer"] or (
    config["parent"]["pretrained"] if config["parent"]["source"] == "pretrained" else None
)
SHARDS = config["data"]["hf"]["shards"] if config["data"]["source"] == "hf" else 0
DATA_OUTPUTS = dict(
    manifest=f"{R}/data/manifest.json",
    heldout=f"{R}/data/heldout_docs.jsonl",
    tokenizer=directory(f"{R}/data/tokenizer"),
)
# the files holding the splits' tokens: five split files, or (sharded data) the shards, read in place
SPLIT_FILES = (
    expand(f"{R}/data/shards/{{shard}}.bin", shard=range(SHARDS))
    if SHARDS
    else expand(f"{R}/data/{{split}}.bin", split=SPLITS)
)

if not SHARDS:

    rule prepare_data:
        output:
            **DATA_OUTPUTS,
            splits=SPLIT_FILES,
        params:
            data=config["data"],
            seed=config["seed"],
            tokenizer=f"--tokenizer {TOKENIZER}" if TOKENIZER else "",
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/data/prepare_data.log",
        benchmark:
            f"{R}/benchmarks/data/prepare_data.tsv"
        threads: 16  # capped at --cores locally
        shell:
            f"{PY} -m pvs.data --config {CONFIG} --out {R}/data --cache {R}/downloads {{params.tokenizer}} > {{log}} 2>&1"

else:  # a large HF dataset: K parallel, resumable tokenize jobs, then splits by token offset (pvs.data.shards)

    rule tokenize_shard:
        output:
            tokens=f"{R}/data/shards/{{shard}}.bin",
            record=f"{R}/data/shards/{{shard}}.json",
        params:
            hf=config["data"]["hf"],
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/data/tokenize_shard/{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/data/tokenize_shard/{{shard}}.tsv"
        resources:
            **TOKENIZE_RESOURCES,
        threads: config["cluster"]["tokenize"]["cpus"]  # capped at --cores locally
        shell:
            f"{PY} -m pvs.data.shards tokenize --config {CONFIG} --shard {{wildcards.shard}} --tokenizer {TOKENIZER}"
            f" --out {R}/data/shards > {{log}} 2>&1"

    rule prepare_data:
        input:
            expand(f"{R}/data/shards/{{shard}}.json", shard=range(SHARDS)),
        output:
            **DATA_OUTPUTS,
        params:
            splits=config["data"]["splits"],
            seed=config["seed"],
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/data/prepare_data.log",
        benchmark:
            f"{R}/benchmarks/data/prepare_data.tsv"
        shell:
            f"{PY} -m pvs.data.shards assemble --config {CONFIG} --shards {R}/data/shards --tokenizer {TOKENIZER}"
            f" --out {R}/data > {{log}} 2>&1"


DATA = rules.prepare_data.output
