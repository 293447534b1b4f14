# Every evaluation JSON -> summary, the paper's tables, figures (PNG + PDF) and findings.md (python -m pvs.report).
# The outputs are pvs.study.REPORT_OUTPUTS; `snakemake --report report.html` renders each with its caption
# (workflow/report/<caption>.rst) and labels.

rule report:
    input:
        EVALS,
    output:
        **{output.key: report_output(output) for output in REPORT_OUTPUTS},
        pdfs=[f"{R}/{path}" for path in FIGURE_PDFS],
    params:
        budgets=config["budgets"],
        report=config["report"],
    conda:
        "../../envs/environment.yaml"
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    localrule: True
    shell:
        f"{PY} -m pvs.report --config {CONFIG} --evals {{input}} --out {R} > {{log}} 2>&1"
