"""The studio page (Gradio) over `engine.Studio`: prompts and settings in, clips with provenance out.

Layout, top to bottom: prompts and settings | adapters (lineage + use + strength each); Generate / Compare;
the latest clip (or compare grid) with its status line; the gallery of finished clips; the selected clip's
provenance and its mp4 + JSON sidecar to download.

Generate and Compare share one queue slot on the model (`concurrency_id="model"`, limit 1): a second
user's request waits in Gradio's queue and sees its position instead of running into the first one.
"""
# No `from __future__ import annotations`: Gradio reads `evt: gr.SelectData` from the live annotation.
from pathlib import Path

from reelora.models.adapters import AdapterError
from reelora.models.sample import SampleError
from reelora.models.settings import MAX_FRAMES, MAX_PIXELS, MAX_SEED, MAX_STEPS
from reelora.studio import require_gradio
from reelora.studio.engine import Studio, new_seed

GALLERY_SIZE = 48
"""Newest clips shown in the gallery (all stay in the output folder)."""


def build_app(studio: Studio, adapters_dir: str | Path):
    """The page as a `gr.Blocks` (not launched)."""
    gr = require_gradio()
    d = studio.defaults
    pipe, spec = studio.sampler.pipe, studio.sampler.spec
    t_ratio = int(getattr(pipe, "vae_scale_factor_temporal", None) or getattr(pipe, "vae_temporal_compression_ratio", 1))
    mult = spec.size_multiple
    keys = list(studio.adapters)
    names = {str(e.path): e.key for e in studio.adapters.values()}
    unusable = [e for e in studio.entries if e.error]

    # Gradio serves copies of the clips from its cache; the originals stay in --out, so old copies can go.
    with gr.Blocks(title="reelora studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        gr.Markdown(f"## reelora studio\n`{studio.sampler.model}` · {len(keys)} adapter(s) from `{adapters_dir}` · "
                    f"clips saved to `{studio.out_dir}` · one request runs on the model at a time, others wait in the queue")
        with gr.Row():
            with gr.Column(scale=3):
                prompts = gr.Textbox(label="Prompt(s), one clip per line", lines=3, elem_id="prompts",
                                     placeholder="exp style, a lighthouse at dusk")
                negative = gr.Textbox(label="Negative prompt (used when guidance > 1)", elem_id="negative",
                                      value=d.negative_prompt or "")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                    lock = gr.Checkbox(label="lock seed (unlocked: a new random seed per Generate)", value=False,
                                       elem_id="lock")
                    dice = gr.Button("random seed", elem_id="random-seed", size="sm")
                with gr.Row():
                    steps = gr.Slider(1, min(MAX_STEPS, max(100, 2 * d.steps)), value=d.steps, step=1,
                                      label="Steps", elem_id="steps")
                    frames = gr.Slider(1, min(MAX_FRAMES, max(4 * t_ratio + 1, 2 * d.num_frames - 1)),
                                       value=d.num_frames, step=t_ratio, label=f"Frames (1 + a multiple of {t_ratio})",
                                       elem_id="frames")
                    guidance = gr.Slider(0.0, 15.0, value=d.guidance, step=0.5, label="Guidance", elem_id="guidance")
                with gr.Row():
                    top = min(MAX_PIXELS, max(1280, 2 * d.height, 2 * d.width))
                    height = gr.Slider(mult, top, value=d.height, step=mult, label="Height", elem_id="height")
                    width = gr.Slider(mult, top, value=d.width, step=mult, label="Width", elem_id="width")
            with gr.Column(scale=2):
                gr.Markdown("### Adapters\nTick the ones to use; strength 1 is as trained, 0 is the base model.")
                uses, strengths = [], []
                for i, key in enumerate(keys):
                    with gr.Group():
                        gr.Markdown(studio.adapters[key].describe())
                        with gr.Row():
                            uses.append(gr.Checkbox(label=f"use {key}", value=False, elem_id=f"use-{i}"))
                            strengths.append(gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="strength",
                                                       elem_id=f"strength-{i}"))
                if not keys:
                    gr.Markdown(f"No usable adapter under `{adapters_dir}`: sampling the base model only.")
                if unusable:
                    with gr.Accordion(f"{len(unusable)} file(s) not offered", open=False):
                        gr.Markdown("\n".join(f"- {e.describe()}" for e in unusable))
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            compare = gr.Button("Compare with base (same seed)", elem_id="compare")
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(label="Latest clip", elem_id="clip", autoplay=True, loop=True, interactive=False,
                                 height=360)
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                provenance = gr.JSON(label="Provenance", elem_id="provenance")
                download = gr.File(label="Download mp4 + sidecar", file_count="multiple", interactive=False,
                                   elem_id="download")
        gallery = gr.Gallery(label="Finished clips (newest first; select one for its provenance)", columns=6,
                             height=280, object_fit="contain", elem_id="gallery", allow_preview=False)
        shown = gr.State([])  # the gallery's mp4 paths, in order, as this page shows them

        settings = [prompts, negative, seed, steps, frames, height, width, guidance, *uses, *strengths]

        def parse(values):
            text, neg, seed_v, steps_v, frames_v, h, w, g, *rest = values
            lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
            if not lines:
                raise gr.Error("Type a prompt first (one clip per line).")
            mix = {k: float(s) for k, use, s in zip(keys, rest[:len(keys)], rest[len(keys):]) if use}
            try:
                reqs = [studio.request(p, int(seed_v or 0), negative_prompt=neg or None, steps=int(steps_v),
                                       num_frames=int(frames_v), height=int(h), width=int(w), guidance=float(g))
                        for p in lines]
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
            return reqs, mix

        def gallery_items():
            clips = studio.clips(GALLERY_SIZE)
            return [(str(mp4), caption(prov, names)) for mp4, prov in clips], [str(mp4) for mp4, _ in clips]

        def run_generate(*values, progress=gr.Progress()):
            reqs, mix = parse(values)
            results = []
            for i, req in enumerate(reqs):
                def on_step(done, total, i=i):
                    progress((i * total + done, len(reqs) * total), desc=f"clip {i + 1}/{len(reqs)}", unit="steps")
                progress((i * req.steps, len(reqs) * req.steps), desc=f"clip {i + 1}/{len(reqs)}", unit="steps")
                results.append(sampled(lambda: studio.generate(req, mix, on_step=on_step)))
            last = results[-1]
            items, paths = gallery_items()
            text = (f"**{len(results)} clip(s)** · {describe(reqs[-1], mix)} · saved as "
                    + ", ".join(f"`{r.mp4.name}`" for r in results))
            return str(last.mp4), text, items, paths, last.provenance, [str(last.mp4), str(last.sidecar)]

        def run_compare(*values, progress=gr.Progress()):
            reqs, mix = parse(values)

            at = {"clip": 0, "clips": 1, "label": ""}

            def on_clip(n, total, label):
                at.update(clip=n, clips=total, label=label)

            def on_step(done, steps):
                progress((at["clip"] * steps + done, at["clips"] * steps),
                         desc=f"compare {at['clip'] + 1}/{at['clips']}: {at['label']}", unit="steps")

            rows, grid, panels = sampled(lambda: studio.compare(reqs, mix, on_clip=on_clip, on_step=on_step))
            items, paths = gallery_items()
            text = (f"**compare**, left to right: {' | '.join(p.label for p in panels)}"
                    + (f"; top to bottom: {' | '.join(r.prompt for r in reqs)}" if len(reqs) > 1 else "")
                    + f" · {describe(reqs[0], mix)} · grid `{grid.name}`")
            sidecar = grid.with_suffix(".json")
            return str(grid), text, items, paths, studio_sidecar(sidecar), [str(grid), str(sidecar)]

        def select(paths, evt: gr.SelectData):
            mp4 = Path(paths[evt.index])
            sidecar = mp4.with_suffix(".json")
            prov = studio_sidecar(sidecar)
            return str(mp4), prov, [str(mp4), str(sidecar)]

        outputs = [video, status, gallery, shown, provenance, download]
        dice.click(lambda: new_seed(None, False), None, seed, queue=False)
        for button, fn in ((generate, run_generate), (compare, run_compare)):
            button.click(new_seed, [seed, lock], seed, queue=False).then(
                fn, settings, outputs, concurrency_limit=1, concurrency_id="model")
        gallery.select(select, shown, [video, provenance, download])
        app.load(gallery_items, None, [gallery, shown])
    return app


def sampled(fn):
    """Run a sampling call; bad input and NaN clips become a message on the page, not a stack trace."""
    gr = require_gradio()
    try:
        return fn()
    except (AdapterError, SampleError, ValueError) as exc:
        raise gr.Error(str(exc)) from None


def describe(req, mix: dict[str, float]) -> str:
    used = ", ".join(f"{k} x{s:g}" for k, s in mix.items() if s) or "base model"
    return (f"seed {req.seed} · {req.num_frames} frames {req.height}x{req.width} · {req.steps} steps · "
            f"guidance {req.guidance:g} · {used}")


def caption(prov: dict, names: dict[str, str]) -> str:
    """Gallery caption: prompt, seed and adapters from a clip's provenance."""
    used = ", ".join(f"{names.get(a.get('path'), Path(str(a.get('path'))).parent.name)} x{a.get('scale', 1):g}"
                     for a in prov.get("adapters", [])) or "base"
    return f"{str(prov.get('prompt', ''))[:60]} · seed {prov.get('seed')} · {used}"


def studio_sidecar(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"{path}: {exc}"}


def theme():
    """Gradio's default look with the system's fonts: the page loads nothing from the internet."""
    gr = require_gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def serve(studio: Studio, adapters_dir: str | Path, *, host: str, port: int, max_queue: int) -> None:
    """Build the page and serve it until interrupted (Ctrl-C)."""
    app = build_app(studio, adapters_dir)
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    app.launch(server_name=host, server_port=port, allowed_paths=[str(studio.out_dir.resolve())], show_error=True,
               ssr_mode=False, mcp_server=False, theme=theme(), footer_links=[], inbrowser=False, share=False)
