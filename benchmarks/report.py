"""The Markdown report: the run's header, its targets, then the sections of the parts that ran."""

from __future__ import annotations

import harness
import matrix
import sections
from measurements import HEADLINE, Index, Results
from targets import Target, all_targets


def write(r: Results, out: str, tuned_column: bool) -> list[Target]:
    index = Index(r.matrix)
    targets = all_targets(r)
    lines = [
        "# DropBlock benchmark results",
        "",
        f"Written by `benchmarks/bench_dropblock.py` in {r.wall_s / 60:.1f} minutes. Command:",
        "",
        "```bash",
        r.command,
        "```",
        "",
        *harness.machine_lines(r.commit, tuned_column),
        *sections.method_lines(r),
        "",
    ]
    if r.quick:
        lines += [
            "**A `--quick` run**: smaller sizes and fewer repeats, to check the script; rerun "
            "without `--quick` for figures to quote.",
            "",
        ]
    if r.skipped:
        lines += ["Skipped peers:", ""] + [f"- {s}" for s in sorted(r.skipped)] + [""]
    lines += [
        "## Targets, checked on this run's medians",
        "",
        *harness.table(
            ["", "area", "target", "measured", "bound"],
            [[t.verdict, t.area, t.text, t.measured, t.bound_text] for t in targets],
        ),
    ]
    if index.get(*HEADLINE[:2], matrix.FLOOR, "fwd") is not None:
        lines += sections.headline_section(r, index)
    lines += sections.vmap_section(r)
    lines += sections.compile_section(r)
    lines += sections.devices_section(r)
    lines += sections.matrix_sections(r)
    lines += sections.pieces_section(r)
    with open(out, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {out}", flush=True)
    return targets
