"""The pair audit's report (:func:`~lightning_aug_dpo.audit.audit_pairs`) as Markdown, as rich
tables in the terminal, as the few numbers of ``predict``'s summary, and as ``train/pairs/...``
metrics. Shares are fractions in the report and the metrics, percent in the tables and under
``_pct`` keys in the summary (the project's summary convention)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

DEFINITIONS = "lightning_aug_dpo/audit_stats.py"  # where every number is defined
LABELS = {
    "length": "length",
    "objects named": "objects named (scenes)",
    "flagged words": "flagged words",
    "marker words": "marker words (cross-fitted)",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _rows(report: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report: ``{title: (header, rows)}``, cells as text."""
    tables: dict[str, tuple[list[str], list[list[str]]]] = {}
    lengths = report["lengths"]
    unit = f"{lengths['unit']}, {lengths['counted_by']}"
    tables["Pairs"] = (
        ["what", "value"],
        [["pairs", f"{report['pairs']:,}"],
         ["differing pairs (the shares below are of these)", f"{report['differing']:,}"],
         ["identical rate", _pct(report["identical_rate"])],
         [f"mean length of chosen ({unit})", f"{lengths['chosen_mean']:.1f}"],
         [f"mean length of rejected ({unit})", f"{lengths['rejected_mean']:.1f}"],
         ["rejected longer", _pct(lengths["rejected_longer"])],
         ["rejected shorter", _pct(lengths["rejected_shorter"])],
         ["same length", _pct(lengths["equal"])]],
    )  # fmt: skip
    tables["Identical rate per kind of prompt"] = (
        ["kind of prompt", "pairs", "identical", "rate"],
        [[k["kind"], str(k["pairs"]), str(k["identical"]), _pct(k["identical_rate"])]
         for k in report["kinds"]],
    )  # fmt: skip
    features = [
        [LABELS.get(name, name), _pct(f["accuracy"]), str(f["pairs"]), f["rule"]]
        for name, f in report["features"].items()
    ]
    for name, family in report["openings"].items():
        if family["flipped_pairs"]:
            features.append([f"opening flip ({name})", _pct(family["accuracy"]),
                             str(family["flipped_pairs"]), family["rule"]])  # fmt: skip
    tables["One feature alone: accuracy of the best rule"] = (
        ["feature", "accuracy", "pairs", "rule"],
        features,
    )
    openings = []
    for name, family in report["openings"].items():
        for member in family["chosen"]:
            openings.append([name, member, str(family["chosen"][member]),
                             str(family["rejected"][member])])  # fmt: skip
        for flip, count in family["flips"].items():
            openings.append([name, f"flip (chosen -> rejected) {flip}", f"{count} pairs", ""])
    tables["Openings (differing pairs)"] = (["family", "opening", "chosen", "rejected"], openings)
    tables["First words"] = (
        ["first words", "chosen", "rejected"],
        [[f["opening"] or "(empty)", str(f["chosen"]), str(f["rejected"])]
         for f in report["first_words"]],
    )  # fmt: skip
    for side, title in (
        ("rejected", "rejected than in chosen"),
        ("chosen", "chosen than in rejected"),
    ):
        rows = []
        for gram in ("unigrams", "bigrams"):
            rows += [[s["term"], gram[:-1], str(s["rejected"]), str(s["chosen"]),
                      f"{s['delta']:+.2f}", f"{s['z']:+.2f}"]
                     for s in report["words"][gram][side]]  # fmt: skip
        tables[f"More often in {title} (weighted log-odds)"] = (
            ["term", "kind", "in rejected", "in chosen", "log-odds", "z"], rows
        )  # fmt: skip
    if report.get("truth"):
        st = report["truth"]["stats"]
        tables["Exact quality per side (scene records, differing pairs)"] = (
            ["", "chosen", "rejected"],
            [["CHAIR_i", _pct(st["chosen_chair_i"]), _pct(st["rejected_chair_i"])],
             ["coverage", _pct(st["chosen_coverage"]), _pct(st["rejected_coverage"])],
             ["objects named per answer", f"{st['chosen_objects_named']:.2f}",
              f"{st['rejected_objects_named']:.2f}"],
             ["fewer hallucinated objects than the other",
              _pct(st["chosen_fewer_hallucinations"]), _pct(st["rejected_fewer_hallucinations"])],
             ["names more objects than the other", _pct(st["rejected_names_fewer"]),
              _pct(st["rejected_names_more"])]],
        )  # fmt: skip
    return tables


def _verdict_lines(report: Mapping[str, Any]) -> list[str]:
    lines = list(report["verdicts"])
    if report.get("truth_line"):
        lines.append(report["truth_line"])
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_markdown(report: Mapping[str, Any], source: str = "") -> str:
    """The whole report as Markdown: the verdicts first, then every table."""
    out = [f"# Pair audit{': ' + source if source else ''}", "", "## Verdict", ""]
    out += [f"- {line}" for line in _verdict_lines(report)]
    for title, (header, rows) in _rows(report).items():
        out += ["", f"## {title}", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    settings = report["settings"]
    out += [
        "",
        f"Accuracies are over the {report['differing']:,} pairs whose answers differ; a verdict "
        f"needs {settings['threshold']:.0%} or more on {settings['min_pairs']} pairs or more. "
        f"Log-odds prior: a = {settings['prior_scale']:g} of the pooled counts; terms seen "
        f"{settings['min_count']} times or more. Definitions: {DEFINITIONS}.",
    ]
    return "\n".join(out) + "\n"


def print_report(
    report: Mapping[str, Any], source: str = "", console: Console | None = None
) -> None:
    """Every table of the report as a rich table, then the verdict lines."""
    console = console or Console()
    for title, (header, rows) in _rows(report).items():
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"[bold]Pair audit{': ' + source if source else ''}[/bold]")
    for line in _verdict_lines(report):
        console.print(f"  {line}", highlight=False)


def summary_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The audit's headline for a run summary: percent under ``_pct`` keys, and the verdicts."""
    out: dict[str, Any] = {
        "differing_pairs": report["differing"],
        "rejected_longer_pct": round(100 * report["lengths"]["rejected_longer"], 4),
        "length_unit": report["lengths"]["unit"],
    }
    for name, feature in report["features"].items():
        if feature["accuracy"] is not None:
            key = name.replace(" ", "_")
            out[f"{key}_accuracy_pct"] = round(100 * feature["accuracy"], 4)
            out[f"{key}_rule"] = feature["rule"]
    out["verdicts"] = _verdict_lines(report)
    return out


def metrics_of(report: Mapping[str, Any], prefix: str = "train/pairs/") -> dict[str, float]:
    """``train/pairs/...`` metrics (fractions): ``length_acc``, ``rejected_longer``,
    ``length_diff`` (mean rejected - chosen), ``words_acc`` (marker words), ``flips/<family>``
    (share of differing pairs whose openings flip) and, with scenes, ``objects_acc``,
    ``rejected_names_more``, ``chosen_chair_i``, ``rejected_chair_i``."""
    features = report["features"]
    out = {
        "length_acc": features["length"]["accuracy"],
        "rejected_longer": report["lengths"]["rejected_longer"],
        "length_diff": report["lengths"]["rejected_minus_chosen_mean"],
        "words_acc": features["marker words"]["accuracy"],
        "audited": float(report["differing"]),
    }
    if "objects named" in features:
        out["objects_acc"] = features["objects named"]["accuracy"]
    for name, family in report["openings"].items():
        out[f"flips/{re.sub(r'[^a-z0-9]+', '_', name).strip('_')}"] = family["flip_share"]
    if report.get("truth"):
        st = report["truth"]["stats"]
        for key in ("rejected_names_more", "chosen_chair_i", "rejected_chair_i"):
            out[key] = st[key]
    return {prefix + k: float(v) for k, v in out.items() if v is not None}
