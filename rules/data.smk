# Datasets: download (mirror first, sha256-checked) -> normalised JSONL -> seeded edit sets.


rule download_dataset:
    input:
        code=code_input("download_dataset"),
    output:
        P.raw_manifest(),
    params:
        spec=lambda w: Canonical(CFG["datasets"][w.dataset]),
        mirror=MIRROR,
    resources:
        mem_mb=1000,
        runtime=30,
    log:
        f"{R}/logs/download_dataset/{{dataset}}.log",
    script:
        "../workflow_scripts/download_dataset.py"


rule prepare_dataset:
    input:
        P.raw_manifest(),
        code=lambda w: code_input("prepare_dataset", fmt=CFG["datasets"][w.dataset]["format"]),
    output:
        P.prepared(),
    params:
        spec=lambda w: Canonical(CFG["datasets"][w.dataset]),
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    script:
        "../workflow_scripts/prepare_dataset.py"


rule sample_edits:
    # One edit set per (dataset, seed), shared by every method and regulariser.
    input:
        P.prepared(),
        code=code_input("sample_edits"),
    output:
        P.editset(),
    params:
        n=edit_set_size(CFG),
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{R}/logs/sample_edits/{{dataset}}_seed{{seed}}.log",
    script:
        "../workflow_scripts/sample_edits.py"
