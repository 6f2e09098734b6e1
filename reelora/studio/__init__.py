"""`reelora studio`: a local web page where creatives sample styled clips with the studio's adapters.

    reelora studio --model tiny-wan --adapters runs/ --port 7860

catalog.py  finds the adapters under a folder and summarises their lineage (trigger word, titles, rank)
engine.py   one Sampler (models/sample.py) with every adapter attached; mixes strengths per request, saves
            each clip with the sampler's own `save` (mp4 + provenance sidecar), renders "compare" grids
app.py      the Gradio page over the engine (queue: one request on the model at a time)
cli.py      the `studio` subcommand

Gradio is an optional dependency (the `studio` extra); only app.py imports it.
"""
from __future__ import annotations

EXTRA = "studio"
INSTALL_HINT = f"pip install 'reelora[{EXTRA}]'"


def require_gradio():
    """Import gradio, or say which extra installs it.

    Raises:
        ImportError: gradio is not installed; the message names the `studio` extra.
    """
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(f"reelora studio needs gradio, which is not installed: {INSTALL_HINT} "
                          f"(or `pip install gradio`)") from exc
    return gradio
