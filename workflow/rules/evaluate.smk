# Every model -> one results JSON: validation loss, per-source perplexity, lm-eval tasks.


def eval_meta(wildcards):
    run = Run.from_model_path(wildcards.model)
    fields = dict(arm=run.arm, method=run.method, ratio=run.ratio, budget=run.budget,
                  train_tokens=run.train_tokens(PARENT_TOKENS), seed=config["seed"] + run.replica)
    return "--meta " + " ".join(f"{k}={'null' if v is None else v}" for k, v in fields.items())


rule evaluate:
    input:
        model=f"{R}/models/{{model}}",
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
        f"{PY} -m pvs.evaluate --model {{input.model}} --data {R}/data --tasks {{input.tasks}} --out {{output}}"
        f" --config {CONFIG} --threads {{threads}} {{params.lmeval}} {{params.evalsets}} {{params.meta}} > {{log}} 2>&1"
