"""The demo's report: one self-contained HTML page (local PNGs only, no scripts, no network) and metrics.json.

`build_report` renders what a run produced: the data audit, training and held-out loss curves, base vs
adapter contact sheets side by side, studio reference frames and the metrics table. Every picture lives
in `<out>/report_files/` next to the page; `missing_pictures(html)` lists any reference that does not
resolve, and the tests hold it empty.

`python -m reelora.demo.report --run DIR ...` is what scripts/demo.sh calls: it reads the held-out studio
shards and the two sample folders, computes the style distances (reelora.demo.style), writes
`metrics.json` and `report.html`.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ASSETS = "report_files"


# --------------------------------------------------------------------------- inputs


def read_shard_clips(shard_dir: str | Path, limit: int | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """Decode the mp4 clips (and their JSON metadata) of a shard directory, in index order."""
    from reelora.data.shards import ShardSet
    from reelora.demo.style import read_video

    refs = ShardSet(shard_dir).clips[: limit or None]
    return [read_video(io.BytesIO(c.read("mp4"))) for c in refs], [c.meta for c in refs]


def read_sample_dir(sample_dir: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """The mp4s written by `reelora sample` (sorted by name) and their prompts from the JSON sidecars."""
    from reelora.demo.style import read_video

    paths = sorted(Path(sample_dir).glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"{sample_dir}: no sampled .mp4 clips")
    prompts = []
    for p in paths:
        side = p.with_suffix(".json")
        prompts.append(json.loads(side.read_text()).get("prompt", "") if side.is_file() else "")
    return [read_video(p) for p in paths], prompts


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


# --------------------------------------------------------------------------- pictures


def plot_losses(rows: list[dict], out_png: Path) -> Path:
    """Training loss (raw and smoothed) and held-out loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    held = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    if train:
        s, l = map(np.asarray, zip(*train))
        ax.plot(s, l, color="#9ab", lw=0.8, label="training loss")
        if len(l) >= 5:
            k = max(2, len(l) // 10)
            ax.plot(s[k - 1:], np.convolve(l, np.ones(k) / k, mode="valid"), color="#246", lw=1.8,
                    label=f"training loss ({k}-point mean)")
    if held:
        s, l = map(np.asarray, zip(*held))
        ax.plot(s, l, "o-", color="#c50", lw=1.8, label="held-out loss")
    if not train and not held:
        ax.text(0.5, 0.5, "no losses logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.grid(alpha=0.3)
    if train or held:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def frames_sheet(clips: Sequence[np.ndarray], out_png: Path, max_frames: int = 5, cell: int = 96) -> Path:
    """A PNG with one row per clip, `max_frames` evenly spaced frames each, upscaled to `cell` pixels high."""
    from PIL import Image

    rows = []
    for clip in clips:
        arr = np.asarray(clip)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        idx = np.linspace(0, len(arr) - 1, min(max_frames, len(arr))).round().astype(int)
        ims = [Image.fromarray(arr[i]) for i in idx]
        w = max(1, round(cell * ims[0].width / ims[0].height))
        ims = [im.resize((w, cell), Image.NEAREST if im.height < cell else Image.BILINEAR) for im in ims]
        row = Image.new("RGB", (w * max_frames + 2 * (max_frames - 1), cell), "white")
        for j, im in enumerate(ims):
            row.paste(im, (j * (w + 2), 0))
        rows.append(row)
    if not rows:
        raise ValueError(f"{out_png}: no clips to draw")
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + 2 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 2
    sheet.save(out_png)
    return out_png


# --------------------------------------------------------------------------- page


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pair{display:flex;gap:1.5em;flex-wrap:wrap}.pair figure{margin:0;flex:1;min-width:300px}
figcaption{font-weight:600;margin-bottom:.3em}img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}
.verdict{font-size:1.1em;padding:.6em .9em;border-radius:6px;display:inline-block}
.ok{background:#e6f4e6;border:1px solid #8c8}.no{background:#fbeaea;border:1px solid #d99}
.muted{color:#777}code{background:#f4f4f4;padding:0 .25em}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(rows: Sequence[Sequence], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        cells = []
        for v in r:
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((prefix + str(k), v))
    return rows


def _audit_html(audit: dict | None) -> str:
    if not audit:
        return '<p class="muted">No audit available.</p>'
    t = audit.get("totals", {})
    parts = []
    lib = audit.get("library", {})
    if lib:
        parts.append(f"<p>Library <code>{html.escape(str(lib.get('path', '')))}</code> "
                     f"({html.escape(str(lib.get('studio', '')))}), rights judged as of {html.escape(str(audit.get('as_of', '?')))}.</p>")
    if t:
        parts.append(f"<p><b>{t.get('clips', 0)} clips, {float(t.get('seconds_used', 0)):.1f} s</b> from "
                     f"{t.get('titles_used', 0)} of {t.get('titles', 0)} titles; {t.get('titles_excluded', 0)} excluded, "
                     f"{t.get('titles_quarantined', 0)} quarantined.</p>")
    rows = []
    for tid, e in audit.get("titles", {}).items():
        note = e.get("reason", "") or "; ".join(e.get("warnings", []))
        excluded = "; ".join(f"{r['start_s']:.1f}-{r['end_s']:.1f}s {r['reason']}" for r in e.get("excluded", [])[:4])
        if len(e.get("excluded", [])) > 4:
            excluded += f"; ... ({len(e['excluded'])} ranges)"
        rows.append((tid, e.get("status", ""), e.get("clips", 0), float(e.get("seconds_used", 0.0)),
                     e.get("license") or "-", e.get("rights_holder") or "-", " ".join(x for x in (note, excluded) if x)))
    if rows:
        parts.append(_table(rows, ["title", "status", "clips", "seconds", "licence", "holder", "notes / excluded"]))
    return "\n".join(parts)


def build_report(out_dir: str | Path, *, metrics: dict, audit: dict | None = None, heldout_audit: dict | None = None,
                 train_log: str | Path | None = None, base_sheet: str | Path | None = None,
                 lora_sheet: str | Path | None = None, studio_clips: Sequence[np.ndarray] = (),
                 prompts: Sequence[str] = (), base_info: dict | None = None, commands: Sequence[str] = (),
                 title: str = "reelora demo: does the adapter move the base towards the studio's look?") -> Path:
    """Write `out_dir/report.html` and its pictures under `out_dir/report_files/`; returns the page's path.

    Args:
        metrics: the metrics table (as written to metrics.json); `style_distance_base`/`_lora` drive the verdict.
        audit / heldout_audit: `audit.json` of the training and held-out shard directories.
        train_log: the trainer's `logs/metrics.jsonl` (train/loss, val/loss per step).
        base_sheet / lora_sheet: contact sheet PNGs of the same prompts and seeds, base and adapter.
        studio_clips: held-out studio clips ([F, H, W, 3]) for the reference frames.
    """
    out = Path(out_dir)
    assets = out / ASSETS
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)
    sections = []

    d_base, d_lora = metrics.get("style_distance_base"), metrics.get("style_distance_lora")
    if d_base is not None and d_lora is not None and d_base > 0:
        closer = 1 - d_lora / d_base
        ok = closer >= 0.30
        verdict = (f'<p class="verdict {"ok" if ok else "no"}">Adapter samples are <b>{closer:.0%} closer</b> to the '
                   f"held-out studio clips than the base's (style distance {d_base:.2f} -> {d_lora:.2f}; goal: at "
                   f"least 30% closer).</p>")
    else:
        verdict = '<p class="verdict no">Style distances not available.</p>'
    sections.append(verdict)

    # Headline numbers first; the per-term breakdowns and timings fold away under them.
    head = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    detail = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    block = "<h2>Metrics</h2>" + _table(_flatten(head), ["metric", "value"])
    if detail:
        block += ("<details open><summary>Breakdown: style terms (Lab units), motion energy, clip counts, timings"
                  "</summary>" + _table(_flatten(detail), ["metric", "value"]) + "</details>")
    sections.append(block)

    pair = []
    for label, sheet, name in (("Base model", base_sheet, "base_samples.png"), ("Base + adapter", lora_sheet, "lora_samples.png")):
        if sheet and Path(sheet).is_file():
            shutil.copyfile(sheet, assets / name)
            pair.append(f'<figure><figcaption>{label}</figcaption><img src="{ASSETS}/{name}" alt="{label} samples"></figure>')
        else:
            pair.append(f'<figure><figcaption>{label}</figcaption><p class="muted">no samples</p></figure>')
    prompt_list = ""
    if prompts:
        prompt_list = "<p>Rows, top to bottom (same prompt and seed in both columns):</p><ol>" + "".join(
            f"<li>{html.escape(p)}</li>" for p in prompts) + "</ol>"
    sections.append("<h2>Samples: base vs adapter</h2><div class=\"pair\">" + "".join(pair) + "</div>" + prompt_list)

    if studio_clips:
        frames_sheet(studio_clips, assets / "studio_frames.png")
        sections.append("<h2>Studio reference (held-out clips)</h2><p>Clips the adapter never saw; the style distances "
                        f"compare samples with these. {len(studio_clips)} clips.</p>"
                        f'<img src="{ASSETS}/studio_frames.png" alt="held-out studio frames">')

    if train_log and Path(train_log).is_file():
        plot_losses(read_jsonl(train_log), assets / "loss.png")
        sections.append(f'<h2>Training</h2><img src="{ASSETS}/loss.png" alt="training and held-out loss">')
    else:
        sections.append('<h2>Training</h2><p class="muted">No training log found.</p>')

    if base_info:
        sections.append("<h2>Base model</h2><p>A tiny Wan pipeline pretrained from scratch on procedural video "
                        "(<code>reelora base build</code>).</p>" + _table([
                            ("VAE reconstruction PSNR (held-out procedural clips)", f"{base_info.get('vae_psnr_db', float('nan')):.2f} dB"),
                            ("VAE steps", base_info.get("vae", {}).get("steps", "?")),
                            ("transformer steps", base_info.get("transformer", {}).get("steps", "?")),
                            ("transformer held-out flow loss", base_info.get("transformer", {}).get("heldout_loss", "?")),
                            ("build time (s)", base_info.get("build_seconds", "?")),
                            ("parameters", ", ".join(f"{k} {v:,}" for k, v in base_info.get("params", {}).items())),
                            ("cache key", base_info.get("key", "?")),
                        ], ["", ""]))

    sections.append("<h2>Data audit (training shards)</h2>" + _audit_html(audit))
    if heldout_audit:
        sections.append("<h2>Data audit (held-out shards)</h2>" + _audit_html(heldout_audit))
    if commands:
        sections.append("<h2>How this was made</h2><pre>" + html.escape("\n".join(commands)) + "</pre>")

    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"muted\">Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by reelora.demo.report.</p>"
            + "\n".join(sections) + "</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def missing_pictures(html_path: str | Path) -> list[str]:
    """Pictures (img src / link href) the page references that do not exist next to it; external URLs count as missing."""
    html_path = Path(html_path)
    text = html_path.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]+)"', text)
    missing = []
    for ref in refs:
        if re.match(r"^[a-z]+:", ref) and not ref.startswith("data:"):
            missing.append(ref)  # a self-contained page loads nothing from elsewhere
        elif not ref.startswith(("data:", "#")) and not (html_path.parent / ref).is_file():
            missing.append(ref)
    return missing


# --------------------------------------------------------------------------- demo entry


def demo_report(run: Path, *, heldout: Path, train_shards: Path | None, base_samples: Path, lora_samples: Path,
                train_dir: Path | None, base_model: Path | None, extra: dict | None = None) -> tuple[Path, dict]:
    """Compute style distances of both sample sets to the held-out studio clips; write metrics.json + report.html."""
    from reelora.demo.style import style_stats, style_terms

    studio, _ = read_shard_clips(heldout)
    base_clips, prompts = read_sample_dir(base_samples)
    lora_clips, _ = read_sample_dir(lora_samples)
    ref = style_stats(studio)
    tb, tl = style_terms(base_clips, ref), style_terms(lora_clips, ref)
    base_info = json.loads((base_model / "reelora_base.json").read_text()) if base_model and (base_model / "reelora_base.json").is_file() else None
    metrics = {
        "style_distance_base": round(tb["distance"], 4),
        "style_distance_lora": round(tl["distance"], 4),
        "style_closer_fraction": round(1 - tl["distance"] / tb["distance"], 4) if tb["distance"] > 0 else None,
        "base_vae_psnr_db": base_info["vae_psnr_db"] if base_info else None,
        "style_terms_base": {k: round(v, 4) for k, v in tb.items()},
        "style_terms_lora": {k: round(v, 4) for k, v in tl.items()},
        "motion_energy": {"studio": round(ref.motion, 4), "base": round(style_stats(base_clips).motion, 4),
                          "lora": round(style_stats(lora_clips).motion, 4)},
        "num_clips": {"studio_heldout": len(studio), "base": len(base_clips), "lora": len(lora_clips)},
    }
    log = train_dir / "logs" / "metrics.jsonl" if train_dir else None
    if log and log.is_file():
        rows = read_jsonl(log)
        losses = [r["val/loss"] for r in rows if "val/loss" in r]
        if losses:
            metrics["heldout_loss_first"], metrics["heldout_loss_last"] = round(losses[0], 5), round(losses[-1], 5)
    metrics.update(extra or {})
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def audit_of(d: Path | None):
        return json.loads((d / "audit.json").read_text()) if d and (d / "audit.json").is_file() else None

    page = build_report(run, metrics=metrics, audit=audit_of(train_shards), heldout_audit=audit_of(heldout),
                        train_log=log, base_sheet=base_samples / "contact_sheet.png",
                        lora_sheet=lora_samples / "contact_sheet.png", studio_clips=studio[:8], prompts=prompts,
                        base_info=base_info)
    return page, metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reelora.demo.report", description=demo_report.__doc__)
    p.add_argument("--run", type=Path, required=True, help="run directory: metrics.json and report.html are written here")
    p.add_argument("--heldout", type=Path, required=True, help="held-out studio shard directory")
    p.add_argument("--train-shards", type=Path, help="training shard directory (for its audit)")
    p.add_argument("--base-samples", type=Path, required=True, help="`reelora sample` output of the base model")
    p.add_argument("--lora-samples", type=Path, required=True, help="`reelora sample` output with the adapter")
    p.add_argument("--train-dir", type=Path, help="training output_dir (reads logs/metrics.jsonl)")
    p.add_argument("--base-model", type=Path, help="base model directory (reads reelora_base.json)")
    p.add_argument("--extra", default="{}", help="JSON object merged into metrics.json (e.g. timings)")
    a = p.parse_args(argv)
    page, metrics = demo_report(a.run, heldout=a.heldout, train_shards=a.train_shards, base_samples=a.base_samples,
                                lora_samples=a.lora_samples, train_dir=a.train_dir, base_model=a.base_model,
                                extra=json.loads(a.extra))
    missing = missing_pictures(page)
    if missing:
        print(f"report: {page} references missing pictures: {missing}")
        return 1
    print(json.dumps({k: metrics[k] for k in ("style_distance_base", "style_distance_lora", "style_closer_fraction",
                                               "base_vae_psnr_db")}))
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
