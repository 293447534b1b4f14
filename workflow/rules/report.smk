# Every evaluation JSON -> summary, the paper's tables, figures (PNG + PDF) and findings.md.
# `snakemake --report report.html` renders each output with its caption (workflow/report/) and labels.

B = config["budgets"]
ALL_METHODS = "all, coarse → fine"
RATIOS = ", ".join(f"{r:g}" for r in config["prune"]["ratios"])
SCALING_BUDGETS = sorted((canonical_budget(b) for b in B["scaling"]), key=parse_tokens)
SCALING = f"{SCALING_BUDGETS[0]}–{SCALING_BUDGETS[-1]}"  # the token-scaling range, for the report's labels
MAIN = canonical_budget(B["main"])


def listed(ratios):
    return ", ".join(f"{r:g}" for r in ratios) or "off"


def figure(name, caption, setting, ratio, budget, **labels):
    """The PNG (rendered in the report) of one figure; its PDF twin is a plain output."""
    return report(f"{R}/figures/{name}.png", caption=f"../report/{caption}.rst", category="Figures",
                  labels={"figure": name, "method": ALL_METHODS, "granularity": "coarse → fine",
                          "ratio": ratio, "budget": budget, "setting": setting, **labels})


def table(path, caption, setting, ratio, budget):
    return report(f"{R}/{path}", caption=f"../report/{caption}.rst", category="Tables",
                  labels={"table": path.split("/")[-1], "method": ALL_METHODS, "granularity": "coarse → fine",
                          "ratio": ratio, "budget": budget, "setting": setting})


rule report:
    input:
        EVALS,
    output:
        summary=table("summary.csv", "summary", "all", RATIOS, "all"),
        findings=report(f"{R}/findings.md", caption="../report/findings.rst", category="Findings",
                        labels={"file": "findings.md", "setting": "1, 2, 3"}),
        main_md=table("tables/main.md", "table_main", "1, 2, 3", RATIOS, MAIN),
        main_csv=f"{R}/tables/main.csv",
        main_tex=f"{R}/tables/main.tex",
        setting1_md=table("tables/setting1.md", "table_setting", "1", RATIOS, f"{MAIN}; scaling {SCALING}"),
        setting1_csv=f"{R}/tables/setting1.csv",
        scaling_csv=f"{R}/tables/setting1_scaling.csv",
        setting2_md=table("tables/setting2.md", "table_setting", "2", listed(B["setting2_ratios"]), MAIN),
        setting2_csv=f"{R}/tables/setting2.csv",
        setting3_md=table("tables/setting3.md", "table_setting", "3", listed(B["setting3_ratios"]), MAIN),
        setting3_csv=f"{R}/tables/setting3.csv",
        loss_vs_tokens=figure("loss_vs_tokens", "loss_vs_tokens", "1", f"{B['scaling_ratio']:g}", SCALING,
                              paper="Figure 1 left"),
        setting2=figure("setting2", "setting2", "2", listed(B["setting2_ratios"]), MAIN, paper="Figure 1 right"),
        gap_vs_ratio=figure("gap_vs_ratio", "gap_vs_ratio", "1", RATIOS, MAIN),
        heatmap_setting1=figure("heatmap_setting1", "heatmap", "1", RATIOS, MAIN),
        heatmap_setting2=figure("heatmap_setting2", "heatmap", "2", listed(B["setting2_ratios"]), MAIN),
        heatmap_setting3=figure("heatmap_setting3", "heatmap", "3", listed(B["setting3_ratios"]), MAIN),
        pdfs=expand(f"{R}/figures/{{name}}.pdf", name=["loss_vs_tokens", "setting2", "gap_vs_ratio",
                    "heatmap_setting1", "heatmap_setting2", "heatmap_setting3"]),
    params:
        budgets=config["budgets"],
        report=config["report"],
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    shell:
        f"{PY} -m pvs.report --config {CONFIG} --evals {{input}} --out {R} > {{log}} 2>&1"
