"""The evaluation report: one table with every model side by side (`results.md`), the same numbers as `results.csv`
and `results.json` (what the model card writer reads), and the curves as PNGs. `training/evaluate_model.py` computes
the per-object records; this module summarises them into rows (intervals, paired differences, NoC) and renders them.

`results.json` holds `{"settings": {...}, "models": {name: model_id}, "rows": [row, ...], "model_card": {name:
[...]}}`; a row has the columns of `CSV_COLUMNS` plus, for the interactive protocol, `mIoU_curve` (mIoU in % after
1..max_clicks clicks); `model_card[name]` is `model_card_results` for that model.
"""

import csv
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from .clicks import number_of_clicks
from .evaluation import COCO_PROMPT_TYPE, ModelSpec
from .metrics import bootstrap_interval
from .prompts import parse_prompt_type


logger = logging.getLogger(__name__)

COCO_DATASET = "COCO"
# Every plot write_plots can draw
PLOT_NAMES = (
    "miou_vs_points.png",
    "alpha1_vs_points.png",
    "miou_vs_noise_scale.png",
    "miou_vs_clicks.png",
    "miou_vs_routing_weight.png",
)
AVERAGE = "average"
INTERACTIVE = "interactive"
CSV_COLUMNS = (
    "model",
    "model_id",
    "routing_weight",
    "dataset",
    "prompt_type",
    "mIoU",
    "mIoU_low",
    "mIoU_high",
    "mIoU_diff",
    "mIoU_diff_low",
    "mIoU_diff_high",
    "mBIoU",
    "ST",
    "pred_IoU",
    "alpha_1",
    "mAP",
    "mAP50",
    "NoC85",
    "NoC85_low",
    "NoC85_high",
    "NoC90",
    "NoC90_low",
    "NoC90_high",
    "failed_85",
    "num_objects",
    "num_skipped",
    "num_prompts",
    "seed",
)


# Rows: per-object records -> one row per model x routing weight x dataset x prompt type


def _mean(values: list[float]) -> float:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


def summarize_records(
    records: list[dict[str, Any]],
    specs: list[ModelSpec],
    args,
    prompt_types: list[str],
    skipped: dict[str, dict[str, Any]],
    coco_ap: dict[str, tuple[float, float]],
    coco_skipped: dict[str, int],
) -> list[dict[str, Any]]:
    """One row per model x routing weight x dataset x prompt type (plus the average over the HQ datasets).

    `args` is `evaluate_model.py`'s arguments (reference_model, bootstrap_resamples, max_clicks, num_prompts, seed);
    `skipped` maps model -> dataset -> its skip counter (`.total()`); `coco_ap` model -> (mAP, mAP50). Each row has a
    bootstrap interval of its mIoU and, except the reference model's own rows, the mIoU difference to the reference
    model (its unforced rows) on the objects both have, with a paired interval.
    """
    cells = defaultdict(list)
    for record in sorted(records, key=lambda r: (r["dataset"], r["id"])):
        cells[(record["model"], record["routing_weight"], record["dataset"], record["prompt_type"])].append(record)
    reference = args.reference_model or specs[0].name
    object_iou = {key: {record["id"]: _object_iou(record) for record in cell} for key, cell in cells.items()}

    def add_intervals(row: dict[str, Any], datasets: list[str]) -> None:
        model, weight, prompt_type = row["model"], row["routing_weight"], row["prompt_type"]
        groups = [object_iou.get((model, weight, dataset, prompt_type), {}) for dataset in datasets]
        compared = (
            None
            if (model, weight) == (reference, None)
            else [object_iou.get((reference, None, dataset, prompt_type), {}) for dataset in datasets]
        )
        row.update(_intervals(groups, compared, args.bootstrap_resamples))

    rows = []
    for spec in specs:
        weights = sorted({key[1] for key in cells if key[0] == spec.name}, key=lambda w: (w is not None, w or 0.0))
        datasets = list(skipped.get(spec.name, {}))
        for weight in weights:
            for prompt_type in prompt_types:
                per_dataset = []
                for dataset in datasets:
                    cell = cells.get((spec.name, weight, dataset, prompt_type), [])
                    row = _row(spec, args, weight, dataset, prompt_type, cell, skipped[spec.name][dataset].total())
                    add_intervals(row, [dataset])
                    rows.append(row)
                    per_dataset.append(row)
                if per_dataset:
                    row = _average_row(spec, args, weight, prompt_type, per_dataset)
                    add_intervals(row, [r["dataset"] for r in per_dataset if r["num_objects"]])
                    if prompt_type == INTERACTIVE:
                        groups = [cells.get((spec.name, weight, r["dataset"], prompt_type), []) for r in per_dataset]
                        row.update(_interactive_columns([record for cell in groups for record in cell], args, groups))
                    rows.append(row)
        if spec.name in coco_ap:
            cell = cells.get((spec.name, None, COCO_DATASET, COCO_PROMPT_TYPE), [])
            row = _row(spec, args, None, COCO_DATASET, COCO_PROMPT_TYPE, cell, coco_skipped[spec.name])
            row["mAP"], row["mAP50"] = (100 * value for value in coco_ap[spec.name])
            row["num_prompts"] = 1
            add_intervals(row, [COCO_DATASET])
            rows.append(row)
    return rows


def _intervals(
    groups: list[dict[str, float]], reference: list[dict[str, float]] | None, num_resamples: int
) -> dict[str, float | None]:
    """mIoU's bootstrap interval from per-object IoUs `{id: iou}` (one dict per dataset), and the mIoU difference
    to `reference` (same layout) on the objects both have, with its paired interval; all in %."""
    row = {column: None for column in ("mIoU_low", "mIoU_high", "mIoU_diff", "mIoU_diff_low", "mIoU_diff_high")}
    values = [torch.tensor(list(group.values()), dtype=torch.float64) for group in groups if group]
    if num_resamples and values:
        row["mIoU_low"], row["mIoU_high"] = (100 * v for v in bootstrap_interval(values, num_resamples=num_resamples))
    if reference is None:
        return row
    differences = []
    for group, other in zip(groups, reference):
        common = [key for key in group if key in other]
        if common:
            differences.append(torch.tensor([group[key] - other[key] for key in common], dtype=torch.float64))
    means = [d.nanmean() for d in differences if not torch.isnan(d).all()]
    if means:
        row["mIoU_diff"] = 100 * torch.stack(means).mean().item()
        if num_resamples:
            interval = bootstrap_interval(differences, num_resamples=num_resamples)
            row["mIoU_diff_low"], row["mIoU_diff_high"] = (100 * v for v in interval)
    return row


def _object_iou(record: dict[str, Any]) -> float:
    """The per-object value behind mIoU, its interval and the paired difference: the mean IoU over the object's
    prompts, or for the interactive protocol the IoU after the first click."""
    if record["prompt_type"] == INTERACTIVE:
        return record["iou"][0] if record["iou"] else math.nan
    return _mean(record["iou"])


def _interactive_columns(cell: list[dict[str, Any]], args, groups: list[list[dict[str, Any]]] | None = None):
    """NoC@85 / NoC@90 with bootstrap intervals (objects resampled within each dataset), objects never reaching 85 %,
    and the mIoU curve after 1..max_clicks clicks (in %)."""
    columns = {}
    groups = groups if groups is not None else [cell]
    for threshold, name in ((0.85, "NoC85"), (0.90, "NoC90")):
        per_group = [[number_of_clicks(r["iou"], threshold, args.max_clicks) for r in group] for group in groups]
        per_group = [torch.tensor(values, dtype=torch.float64) for values in per_group if values]
        columns[name] = torch.stack([v.mean() for v in per_group]).mean().item() if per_group else None
        columns[f"{name}_low"] = columns[f"{name}_high"] = None
        if per_group and args.bootstrap_resamples:
            columns[f"{name}_low"], columns[f"{name}_high"] = bootstrap_interval(
                per_group, num_resamples=args.bootstrap_resamples
            )
    columns["failed_85"] = sum(max(r["iou"][: args.max_clicks]) < 0.85 for r in cell)
    curves = [torch.tensor([r["iou"] for r in group], dtype=torch.float64) for group in groups if group]
    columns["mIoU_curve"] = (100 * torch.stack([c.mean(dim=0) for c in curves]).mean(dim=0)).tolist() if curves else []
    return columns


def _row(spec, args, weight, dataset, prompt_type, cell, num_skipped) -> dict[str, Any]:
    alphas = [record["alpha_1"] for record in cell if record["alpha_1"] is not None]
    interactive = prompt_type == INTERACTIVE
    extra = _interactive_columns(cell, args) if interactive else {}
    return {
        **{column: None for column in CSV_COLUMNS},
        **extra,
        "model": spec.name,
        "model_id": spec.model_id,
        "routing_weight": weight,
        "dataset": dataset,
        "prompt_type": prompt_type,
        "mIoU": 100 * _mean([_object_iou(record) for record in cell]),
        "mBIoU": 100 * _mean([_mean(record["boundary_iou"]) for record in cell]),
        "ST": 100 * _mean([record["stability"] for record in cell]),
        # The model's own estimate of its masks' IoU (SAM's IoU head); records of older runs may lack it
        "pred_IoU": 100 * _mean([_mean(record.get("predicted_iou") or []) for record in cell]),
        "alpha_1": _mean(alphas) if alphas else None,
        "mAP": None,
        "mAP50": None,
        "num_objects": len(cell),
        "num_skipped": num_skipped,
        "num_prompts": 1 if dataset != COCO_DATASET and prompt_type in ("box", INTERACTIVE) else args.num_prompts,
        "seed": args.seed,
    }


def _average_row(spec, args, weight, prompt_type, per_dataset) -> dict[str, Any]:
    row = dict(per_dataset[0], dataset=AVERAGE)
    used = [r for r in per_dataset if r["num_objects"]]
    for column in ("mIoU", "mBIoU", "ST", "pred_IoU"):
        row[column] = _mean([r[column] for r in used])
    alphas = [r["alpha_1"] for r in used if r["alpha_1"] is not None]
    row["alpha_1"] = _mean(alphas) if alphas else None
    row["num_objects"] = sum(r["num_objects"] for r in per_dataset)
    row["num_skipped"] = sum(r["num_skipped"] for r in per_dataset)
    return row


def _format(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows' `CSV_COLUMNS`, written atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row[column]) for column in CSV_COLUMNS})
    os.replace(temporary, path)


def write_markdown(text: str, path: Path) -> None:
    """The tables of `markdown_tables`, written atomically."""
    _atomic_write_text(path, text)


def _csv_value(value):
    # Undefined values (ST of the GT box, alpha_1 of SAM, an empty cell) are empty fields
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_results_json(rows: list[dict[str, Any]], specs: list[ModelSpec], args, path: Path) -> None:
    """Every row (NaN as null) with the run's settings and the models' ids, written atomically."""
    settings = {
        key: getattr(args, key)
        for key in ("dataset", "coco_annotations", "protocol", "prompt_types", "num_prompts", "seed", "noise_scale")
        + ("max_clicks", "dilation_ratio", "bootstrap_resamples", "reference_model")
    }
    content = {
        "settings": settings,
        "models": {spec.name: spec.model_id for spec in specs},
        "model_card": {spec.name: model_card_results(rows, spec.name) for spec in specs},
        "rows": [{key: _json_value(value) for key, value in row.items()} for row in rows],
    }
    _atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def model_card_results(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """One model's results as the model card writer takes them (`evaluation_results` of `push_to_hub`): a list of
    `{"dataset", "metric", "value", "prompt"}`, one per dataset (and the average) and prompt type, for mIoU and mBIoU
    (mAP on COCO), and NoC@85 / NoC@90 and 1-click mIoU for the interactive protocol; undefined values are left out."""
    mine = [row for row in rows if row["model"] == model and row["routing_weight"] is None]
    datasets = list(dict.fromkeys(r["dataset"] for r in mine if r["dataset"] not in (AVERAGE, COCO_DATASET)))
    results = []
    for row in mine:
        dataset = f"average ({', '.join(datasets)})" if row["dataset"] == AVERAGE else row["dataset"]
        if row["prompt_type"] == INTERACTIVE:
            metrics = [("NoC@85", row.get("NoC85"), INTERACTIVE), ("NoC@90", row.get("NoC90"), INTERACTIVE)]
            metrics.append(("mIoU", row["mIoU"], "interactive, 1 click"))
        else:
            metrics = [(name, row.get(name), row["prompt_type"]) for name in ("mIoU", "mBIoU", "mAP")]
        for metric, value, prompt in metrics:
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                results.append({"dataset": dataset, "metric": metric, "value": float(value), "prompt": prompt})
    return results


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


def markdown_tables(rows: list[dict[str, Any]], specs: list[ModelSpec], args, prompt_types: list[str]) -> str:
    """The main table (average over datasets and mIoU per dataset), the interactive protocol's NoC, the alpha_1 sweep
    and COCO, as markdown. `args` carries the run's settings (seed, num_prompts, reference_model, ...)."""
    hq = [row for row in rows if row["dataset"] != COCO_DATASET]
    datasets = list(dict.fromkeys(row["dataset"] for row in hq if row["dataset"] != AVERAGE))
    lines = [
        f"Prompt seed {args.seed}, K = {args.num_prompts} prompts per object and type (the GT box once; the "
        "interactive protocol's row is mIoU after its first click). mIoU, mBIoU, ST and the predicted IoU (the "
        "model's own estimate, from SAM's IoU head) in %, averaged over the datasets; per-dataset columns are mIoU.",
        "",
        "Models: " + "; ".join(f"`{spec.name}` = {spec.model_id}" for spec in specs),
        "",
    ]
    if hq:
        header = [
            "model",
            "prompt",
            "mIoU",
            "95 % interval",
            "mBIoU",
            "ST",
            "pred. IoU",
            "alpha_1",
            *datasets,
            "objects",
            "skipped",
        ]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        by_cell = {(r["model"], r["routing_weight"], r["dataset"], r["prompt_type"]): r for r in hq}
        for spec in specs:
            for prompt_type in prompt_types:
                average = by_cell.get((spec.name, None, AVERAGE, prompt_type))
                if average is None:
                    continue
                per_dataset = [_format(by_cell[(spec.name, None, d, prompt_type)]["mIoU"]) for d in datasets]
                lines.append(
                    _md_row(
                        [
                            spec.name,
                            prompt_type,
                            _format(average["mIoU"]),
                            _interval(average["mIoU_low"], average["mIoU_high"]),
                            _format(average["mBIoU"]),
                            _format(average["ST"]),
                            _format(average["pred_IoU"]),
                            _format(average["alpha_1"], 3),
                            *per_dataset,
                            str(average["num_objects"]),
                            str(average["num_skipped"]),
                        ]
                    )
                )
        interactive = [by_cell.get((spec.name, None, AVERAGE, INTERACTIVE)) for spec in specs]
        if any(interactive):
            # mIoU after 1, 3, 5, 10 clicks and after the last one
            clicks = sorted({k for k in (1, 3, 5, 10) if k < args.max_clicks} | {args.max_clicks})
            lines += [
                "",
                f"Interactive protocol (up to {args.max_clicks} clicks, average over the datasets): NoC@85 / NoC@90 "
                f"are the clicks needed to reach 85 / 90 % IoU ({args.max_clicks} when never reached), with their "
                f"95 % bootstrap intervals; mIoU after {', '.join(map(str, clicks))} clicks in %; alpha_1 is "
                "Stable-SAM's DRP weight, the mean over every click's prediction of an object, averaged over objects.",
                "",
            ]
            header = ["model", "NoC@85", "NoC@90", "never 85 %", *(f"mIoU@{k}" for k in clicks)]
            header += ["alpha_1", "objects"]
            lines += [_md_row(header), _md_row(["---"] * len(header))]
            for spec, row in zip(specs, interactive):
                if row is None:
                    continue
                curve = row.get("mIoU_curve") or []
                at = [_format(curve[k - 1]) if len(curve) >= k else "-" for k in clicks]
                lines.append(
                    _md_row(
                        [
                            spec.name,
                            _format(row["NoC85"], 2) + " " + _interval(row["NoC85_low"], row["NoC85_high"], 2),
                            _format(row["NoC90"], 2) + " " + _interval(row["NoC90_low"], row["NoC90_high"], 2),
                            str(row["failed_85"]),
                            *at,
                            _format(row["alpha_1"], 3),
                            str(row["num_objects"]),
                        ]
                    )
                )
        reference = args.reference_model or specs[0].name
        compared = [spec for spec in specs if spec.name != reference]
        if compared:
            lines += [
                "",
                f"mIoU difference to `{reference}` in points (average over the datasets), on the same objects and "
                + (
                    "prompts; in brackets its 95 % bootstrap interval (objects resampled within each dataset; the "
                    "evaluation's sampling only, not the variation between training runs):"
                    if args.bootstrap_resamples
                    else "prompts (no intervals: --bootstrap_resamples 0):"
                ),
                "",
            ]
            header = ["model", *prompt_types]
            lines += [_md_row(header), _md_row(["---"] * len(header))]
            for spec in compared:
                cells = []
                for prompt_type in prompt_types:
                    row = by_cell.get((spec.name, None, AVERAGE, prompt_type))
                    cells.append("-" if row is None else _difference(row))
                lines.append(_md_row([spec.name, *cells]))
        sweep = [r for r in hq if r["dataset"] == AVERAGE and r["routing_weight"] is not None]
        if sweep:
            lines += ["", "mIoU (%) with alpha_1 forced (average over the datasets):", ""]
            header = ["model", "alpha_1", *prompt_types]
            lines += [_md_row(header), _md_row(["---"] * len(header))]
            for spec in specs:
                for weight in sorted({r["routing_weight"] for r in sweep if r["model"] == spec.name}):
                    cells = [_format(by_cell[(spec.name, weight, AVERAGE, t)]["mIoU"]) for t in prompt_types]
                    lines.append(_md_row([spec.name, f"{weight:g}", *cells]))
    coco = [row for row in rows if row["dataset"] == COCO_DATASET]
    if coco:
        lines += ["", f"COCO, noisy boxes with IoU in [{args.coco_min_iou}, {args.coco_max_iou}) to the GT box:", ""]
        header = ["model", "mAP", "mAP50", "mIoU", "mBIoU", "pred. IoU", "objects", "left out"]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for row in coco:
            values = [row["mAP"], row["mAP50"], row["mIoU"], row["mBIoU"], row["pred_IoU"]]
            lines.append(
                _md_row([row["model"], *map(_format, values), str(row["num_objects"]), str(row["num_skipped"])])
            )
    return "\n".join(lines) + "\n"


def _interval(low, high, digits: int = 1) -> str:
    if low is None or high is None:
        return "-"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _difference(row: dict[str, Any]) -> str:
    """`+1.2 [+0.4, +2.0]`: a row's mIoU difference to the reference model and its interval."""
    if row["mIoU_diff"] is None:
        return "-"
    text = f"{row['mIoU_diff']:+.1f}"
    if row["mIoU_diff_low"] is not None:
        text += f" [{row['mIoU_diff_low']:+.1f}, {row['mIoU_diff_high']:+.1f}]"
    return text


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# Plots


def _points_rows(rows, spec, column):
    points = []
    for row in rows:
        if row["model"] != spec.name or row["dataset"] != AVERAGE or row["routing_weight"] is not None:
            continue
        if row["prompt_type"] == INTERACTIVE or "@" in row["prompt_type"]:
            continue
        kind, count = parse_prompt_type(row["prompt_type"])
        if kind == "points" and row[column] is not None and not math.isnan(row[column]):
            points.append((count, row[column]))
    return sorted(points)


def write_plots(rows: list[dict[str, Any]], specs: list[ModelSpec], output_dir: Path) -> list[Path]:
    """mIoU against the number of points (Table 6), alpha_1 against the number of points (Table 7) and mIoU against
    a forced alpha_1 (Table 8), each when the results hold what it needs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []

    def save(figure, axes, name, xlabel, ylabel, title):
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = output_dir / name
        temporary = output_dir / f".{name}.tmp.png"
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
        plt.close(figure)
        written.append(path)

    # Models without a router have no alpha_1: `_points_rows` leaves them out of that plot
    for column, name, ylabel, title in (
        ("mIoU", "miou_vs_points.png", "mIoU (%)", "mIoU against the number of points"),
        ("alpha_1", "alpha1_vs_points.png", "alpha_1", "alpha_1 against the number of points"),
    ):
        curves = [(spec, _points_rows(rows, spec, column)) for spec in specs]
        curves = [(spec, points) for spec, points in curves if points]
        if not curves:
            continue
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for spec, points in curves:
            axes.plot(*zip(*points), marker="o", label=spec.name)
        axes.set_xticks(sorted({count for _, points in curves for count, _ in points}))
        save(figure, axes, name, "points per prompt", ylabel, title)

    # The noise sweep: noisy-box mIoU against the noise scale
    noise = {
        spec.name: sorted(
            (float(r["prompt_type"].split("@", 1)[1]), r["mIoU"])
            for r in rows
            if r["model"] == spec.name
            and r["dataset"] == AVERAGE
            and r["routing_weight"] is None
            and r["prompt_type"].startswith("noisy_box@")
            and r["mIoU"] is not None
            and not math.isnan(r["mIoU"])
        )
        for spec in specs
    }
    if any(noise.values()):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for name, points in noise.items():
            if points:
                axes.plot(*zip(*points), marker="o", label=name)
        save(figure, axes, "miou_vs_noise_scale.png", "box noise scale", "mIoU (%)", "mIoU against the box noise")

    # The interactive protocol: mIoU after each click
    curves = {
        r["model"]: r["mIoU_curve"]
        for r in rows
        if r["prompt_type"] == INTERACTIVE
        and r["dataset"] == AVERAGE
        and r["routing_weight"] is None
        and r.get("mIoU_curve")
    }
    if curves:
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for name, curve in curves.items():
            axes.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        save(figure, axes, "miou_vs_clicks.png", "clicks", "mIoU (%)", "mIoU against the number of clicks")

    sweep = [r for r in rows if r["dataset"] == AVERAGE and r["routing_weight"] is not None]
    if sweep:
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for spec in specs:
            for prompt_type in dict.fromkeys(r["prompt_type"] for r in sweep):
                points = sorted(
                    (r["routing_weight"], r["mIoU"])
                    for r in sweep
                    if r["model"] == spec.name and r["prompt_type"] == prompt_type
                )
                if points:
                    axes.plot(*zip(*points), marker="o", label=f"{spec.name} {prompt_type}")
        save(figure, axes, "miou_vs_routing_weight.png", "forced alpha_1", "mIoU (%)", "mIoU against a forced alpha_1")
    stale = [name for name in PLOT_NAMES if (output_dir / name).exists() and output_dir / name not in written]
    if stale:
        logger.warning(
            "%s in %s are from an earlier run into this folder (this run's results have nothing to plot there); "
            "they were left as they are.",
            ", ".join(stale),
            output_dir,
        )
    return written


__all__ = [
    "AVERAGE",
    "COCO_DATASET",
    "CSV_COLUMNS",
    "INTERACTIVE",
    "markdown_tables",
    "model_card_results",
    "summarize_records",
    "write_csv",
    "write_markdown",
    "write_plots",
    "write_results_json",
]
