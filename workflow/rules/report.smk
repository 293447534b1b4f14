# All results JSONs -> summary.csv, Markdown tables per setting, figures.

REPORT_OUTPUTS = [
    f"{R}/summary.csv",
    f"{R}/tables/setting1.md",
    f"{R}/tables/setting1.csv",
    f"{R}/tables/setting1_scaling.csv",
    f"{R}/tables/setting2.md",
    f"{R}/tables/setting2.csv",
    f"{R}/figures/loss_vs_tokens.png",
    f"{R}/figures/setting2.png",
]


rule report:
    input:
        EVALS,
    output:
        REPORT_OUTPUTS,
    params:
        budgets=config["budgets"],
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    shell:
        f"{PY} -m pvs.report --config {CONFIG} --evals {{input}} --out {R} > {{log}} 2>&1"
