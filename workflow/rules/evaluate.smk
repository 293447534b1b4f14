# Evaluation: the local lm-eval tasks made from held-out text (and hub data, fetched once), then every model ->
# one results JSON: validation loss, per-source perplexity, lm-eval tasks (python -m pvs.evaluate).


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
    conda:
        "../../envs/environment.yaml"
    log:
        f"{R}/logs/evaluate/eval_tasks.log",
    benchmark:
        f"{R}/benchmarks/evaluate/eval_tasks.tsv"
    localrule: True
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
        conda:
            "../../envs/environment.yaml"
        log:
            f"{R}/logs/evaluate/eval_sets.log",
        benchmark:
            f"{R}/benchmarks/evaluate/eval_sets.tsv"
        localrule: True
        shell:
            f"{PY} -m pvs.evaluate.sets --config {CONFIG} --data {R}/data --out {{output}} > {{log}} 2>&1"


rule evaluate:
    input:
        model=f"{R}/models/{{model}}",
        memory=MEMORY_CHECK,
        tasks=rules.eval_tasks.output,
        manifest=DATA.manifest,
        evalsets=rules.eval_sets.output if EVAL_SETS else [],
    output:
        f"{R}/eval/{{model}}.json",
    params:
        meta=eval_meta,
        evaluate=config["evaluate"],
        lmeval="" if config["evaluate"]["lmeval"] else "--no-lmeval",
        evalsets=f"--eval-sets {R}/data/evalsets" if EVAL_SETS else "",
    conda:
        "../../envs/environment.yaml"
    log:
        f"{R}/logs/eval/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{model}}.tsv"
    wildcard_constraints:
        model="parent|pruned/.+|(" + "|".join(TRAINED_ARMS) + ")/.+",
    resources:
        **EVALUATE_RESOURCES,
    threads: config["threads_per_job"]
    shell:
        f"{WARM_PY} -m pvs.evaluate --model {{input.model}} --data {R}/data --tasks {{input.tasks}} --out {{output}}"
        f" --config {CONFIG} --threads {{threads}} {{params.lmeval}} {{params.evalsets}} {{params.meta}} > {{log}} 2>&1"
