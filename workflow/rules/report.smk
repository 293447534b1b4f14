# Every evaluation JSON -> summary, the paper's tables, figures (PNG + PDF) and findings.md (python -m pvs.report).
# The outputs are pvs.study.REPORT_OUTPUTS; `snakemake --report report.html` renders each with its caption
# (workflow/report/<caption>.rst) and labels.

ALL_METHODS = "all, coarse → fine"
LISTED_RATIOS = {
    "all": ", ".join(f"{r:g}" for r in GRID.ratios),
    "scaling": f"{GRID.scaling_ratio:g}",
    **{f"setting{s.number}": ", ".join(f"{r:g}" for r in GRID.setting_ratios(s)) or "off" for s in SETTINGS},
}


def report_output(output):
    """A report() entry for a table, figure or findings file of pvs.study.REPORT_OUTPUTS; a twin file plainly."""
    path = f"{R}/{output.path}"
    if output.kind == "file":
        return path
    budget = GRID.scaling_label if output.ratios_of == "scaling" else canonical_budget(GRID.main)
    if output.key == "setting1_md":
        budget = f"{budget}; scaling {GRID.scaling_label}"
    labels = {"method": ALL_METHODS, "granularity": "coarse → fine", "ratio": LISTED_RATIOS[output.ratios_of],
              "budget": budget, "setting": ", ".join(map(str, output.settings))}
    if output.kind == "findings":
        labels = {"file": "findings.md", "setting": labels["setting"]}
    elif output.kind == "figure":
        labels = {"figure": output.path.split("/")[-1].removesuffix(".png"), **labels}
        if output.paper:
            labels["paper"] = output.paper
    else:
        labels = {"table": output.path.split("/")[-1], **labels}
    category = {"figure": "Figures", "findings": "Findings"}.get(output.kind, "Tables")
    return report(path, caption=f"../report/{output.caption}.rst", category=category, labels=labels)


rule report:
    input:
        EVALS,
    output:
        **{output.key: report_output(output) for output in REPORT_OUTPUTS},
        pdfs=[f"{R}/{path}" for path in FIGURE_PDFS],
    params:
        budgets=config["budgets"],
        report=config["report"],
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    localrule: True
    shell:
        f"{PY} -m pvs.report --config {CONFIG} --evals {{input}} --out {R} > {{log}} 2>&1"
