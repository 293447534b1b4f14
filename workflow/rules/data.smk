# Corpus -> tokenizer -> four disjoint token splits; and the local lm-eval tasks made from held-out text.


TOKENIZER = config["data"]["tokenizer"] or (
    config["parent"]["pretrained"] if config["parent"]["source"] == "pretrained" else None
)
SHARDS = config["data"]["hf"]["shards"] if config["data"]["source"] == "hf" else 0
DATA_OUTPUTS = dict(
    manifest=f"{R}/data/manifest.json",
    heldout=f"{R}/data/heldout_docs.jsonl",
    tokenizer=directory(f"{R}/data/tokenizer"),
)
# the files holding the splits' tokens: four split files, or (sharded data) the shards, read in place
SPLIT_FILES = (
    expand(f"{R}/data/shards/{{shard}}.bin", shard=range(SHARDS))
    if SHARDS
    else expand(f"{R}/data/{{split}}.bin", split=["pretrain", "retrain", "calib", "val"])
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
        log:
            f"{R}/logs/data/prepare_data.log",
        benchmark:
            f"{R}/benchmarks/data/prepare_data.tsv"
        shell:
            f"{PY} -m pvs.data.shards assemble --config {CONFIG} --shards {R}/data/shards --tokenizer {TOKENIZER}"
            f" --out {R}/data > {{log}} 2>&1"


rule eval_tasks:
    input:
        heldout=rules.prepare_data.output.heldout,
        manifest=rules.prepare_data.output.manifest,
    output:
        directory(f"{R}/data/lmeval_tasks"),
    params:
        evaluate=config["evaluate"],
        seed=config["seed"],
        hub_tasks=" ".join(["--hub-tasks"] + [f"{t}={m}" for t, m in config["evaluate"]["hub_tasks"].items()])
        if config["evaluate"]["hub_tasks"]
        else "",
        blimp=(
            f"--blimp-dir {config['evaluate']['blimp_dir']} --blimp-limit {config['evaluate']['blimp_limit'] or 'all'}"
            f" --blimp-subtasks {' '.join(config['evaluate']['blimp_subtasks'])}"
            if config["evaluate"]["blimp_dir"]
            else ""
        ),
    log:
        f"{R}/logs/data/eval_tasks.log",
    benchmark:
        f"{R}/benchmarks/data/eval_tasks.tsv"
    shell:
        f"{PY} -m pvs.evaluate.tasks --data {R}/data --out {{output}} --examples {config['evaluate']['local_task_examples']}"
        f" --seed {config['seed']} {{params.blimp}} {{params.hub_tasks}} > {{log}} 2>&1"


EVAL_SETS = bool(config["evaluate"]["perplexity_datasets"] or config["evaluate"]["hub_tasks"])

if EVAL_SETS:  # hub data fetched once, on the submitting host (local rule): evaluation jobs stay offline

    rule eval_sets:
        input:
            manifest=rules.prepare_data.output.manifest,
            tokenizer=rules.prepare_data.output.tokenizer,
        output:
            directory(f"{R}/data/evalsets"),
        params:
            perplexity=config["evaluate"]["perplexity_datasets"],
            max_tokens=config["evaluate"]["perplexity_max_tokens"],
            hub_tasks=config["evaluate"]["hub_tasks"],
        log:
            f"{R}/logs/data/eval_sets.log",
        benchmark:
            f"{R}/benchmarks/data/eval_sets.tsv"
        shell:
            f"{PY} -m pvs.evaluate.sets --config {CONFIG} --data {R}/data --out {{output}} > {{log}} 2>&1"
