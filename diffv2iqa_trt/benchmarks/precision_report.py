"""The precision report of a bundle (what `build --precision` measured) as Markdown and JSON, for results/.

python -m diffv2iqa_trt.benchmarks.precision_report --bundle DIR [--out benchmarks/results] [--name NAME]
       [--built-with "diffv2iqa-trt build ..."]

The figures are the build's own (its calibration set, its evaluation set); this only lays them out, with the
command that built the bundle when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bundle import Bundle, load_bundle
from ..bundle.summary import precision_rows
from ..contract import GRAPH_NAMES
from ..errors import ConfigError
from . import report


def _scores(d: Any) -> str:
    if not d:
        return "not measured (no evaluation set)"
    return (f"max |Δ| {d['max_abs']:.3g} ({100 * d['max_abs_fraction']:.2f} % of the FP32 range), mean |Δ| "
            f"{d['mean_abs']:.3g}, SRCC {d['srcc']:.5f}, PLCC {d['plcc']:.5f}, KRCC {d['krcc']:.5f}, "
            f"{d['rank_flips']} rank flips, {d['images']} images")


def markdown(bundle: Bundle, built_with: str | None) -> str:
    chosen = bundle.manifest.precision
    if chosen is None:
        raise ConfigError(f"{bundle.root} holds no precision variants; build them with `build --precision`")
    r = chosen.report
    cal = r.get("calibration") or {}
    lines = [f"# Precision variants of {bundle.manifest.model.label}", "", "<!--header-->"]
    if built_with:
        lines += [f"Bundle built with: `{built_with}`  "]
    lines += [f"Requested: `{chosen.requested}`; plan: "
              f"`{', '.join(f'{g}={chosen.plan[g]}' for g in GRAPH_NAMES)}`; CPU variants: "
              f"{', '.join(f'{g}: {v}' for g, v in (r.get('cpu_variants') or {}).items()) or 'none'}.  ",
              f"Budget: SRCC ≥ {r['budget']['min_srcc']} and max |Δscore| ≤ "
              f"{100 * r['budget']['max_abs_fraction']:g} % of the FP32 scores' range.  ",
              f"Calibration set {str(cal.get('key', '?'))[:16]}: {cal.get('images', '?')} images, "
              f"{cal.get('crops', '?')} crops, {cal.get('restore_rows', '?')} restore_step rows (every step).  ",
              f"Evaluation: {(r.get('evaluation') or {}).get('images', 0)} images, disjoint from the calibration set.",
              "", "Plan end to end: " + _scores(r.get("plan_scores")) + ".  "]
    if r.get("cpu_plan_scores"):
        lines += ["Plan with the int8-cpu variants: " + _scores(r["cpu_plan_scores"]) + "."]
    if r.get("cpu_variants_withheld"):
        lines += ["  int8-cpu variants withheld (the combination breaks the budget the plan keeps): "
                  + ", ".join(f"{g}: {v}" for g, v in r["cpu_variants_withheld"].items()) + "."]
    lines += ["", "Every candidate, measured alone (the other graphs FP32). Tensor errors: the graph's output against "
              "the FP32 graph on recorded calibration inputs.", "",
              "| graph | variant | tensor max abs Δ | cosine | score max abs Δ | % of range | SRCC | budget |",
              "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in precision_rows(r)]
    lines += ["", "Every variant the bundle holds (it may come from earlier builds with --from-bundle): its recipe and "
              "tensor error against the FP32 graph on recorded inputs.", "",
              "| graph | precision | recipe | tensor max abs Δ | largest FP32 output | cosine |",
              "|---|---|---|---|---|---|"]
    for g in GRAPH_NAMES:
        for p, v in bundle.graph(g).variants.items():
            tensor = ((v.extra.get("accuracy") or {}).get("tensor")) or {}
            recipe = (v.extra.get("recipe") or {})
            label = "/".join(x for x in (recipe.get("precision"), recipe.get("method")) if x) or "export"
            if recipe.get("exclude"):
                label += f" [fp32: {'+'.join(recipe['exclude'])}]"
            if not tensor:
                lines.append(f"| {g} | {p} | {label} | - | - | - |")
                continue
            lines.append(f"| {g} | {p} | {label} | {tensor['max_abs']:.3g} | {tensor['reference_max_abs']:.3g} | "
                         f"{tensor['cosine']:.6f} |")
    for graph, cands in (r.get("candidates") or {}).items():
        for c in cands:
            steps = (c.get("tensor") or {}).get("per_step")
            if steps:
                lines += ["", f"{graph} {c['recipe']}: output error per step (first step run first), max |Δ| / max "
                              "|y_next|: " + ", ".join(f"{s['step']}: {s['rel']:.3g}" for s in steps)]
    for i, rnd in enumerate(r.get("search") or []):
        if i == 0:
            lines += ["", "Search rounds (`best`):", ""]
        plan = ", ".join(f"{g}={k}" for g, k in rnd["plan"].items())
        lines.append(f"{i + 1}. {plan}: {_scores(rnd['deltas']) if 'images' in rnd['deltas'] else 'all FP32'}"
                     f"{' — over: ' + '; '.join(rnd['failures']) if rnd['failures'] else ' — within budget'}")
    for g, fails in (r.get("failed") or {}).items():
        for recipe, why in fails.items():
            lines.append(f"- {g} {recipe} could not be made: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None)
    parser.add_argument("--built-with", default=None, help="the command that built the bundle, for the record")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    text = markdown(bundle, args.built_with)
    args.out.mkdir(parents=True, exist_ok=True)
    assert bundle.manifest.precision is not None
    paths = report.write(args.out, args.name or f"precision_{bundle.manifest.model.name}",
                         {"built_with": args.built_with, "precision": bundle.manifest.precision.to_dict(),
                          "variants": {g: {p: v.to_dict() for p, v in bundle.graph(g).variants.items()}
                                       for g in GRAPH_NAMES}}, text)
    print(text.replace("<!--header-->", ""))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
