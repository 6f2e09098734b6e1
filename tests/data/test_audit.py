"""The audit: json, markdown and html (with thumbnails) of what went in and what was left out."""
from __future__ import annotations

from reelora.data.audit import read_audit, render_audit_md, totals


def test_audit_contents(built):
    audit = read_audit(built)
    assert audit["titles"]["good"]["clips"] == 4 and audit["titles"]["good"]["seconds_used"] == 4.0
    assert audit["totals"]["clips"] == 15
    assert {r["reason"] for r in audit["titles"]["vfr"]["excluded"]} == {
        "too short: 0.88s left in scene < 1.00s clip"}
    md = (built / "audit.md").read_text()
    assert "| good | used | 4 | 4.00 |" in md and "zero-byte file" in md
    page = (built / "audit.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") == 15  # every used clip (<= 8 per title)
    assert "alt='tenbit_0000000'" in page and "zero-byte file" in page


def test_markdown_escapes_tables_and_lists_takedowns():
    titles = {"a": {"status": "used", "clips": 2, "seconds_used": 2.0, "warnings": ["x | y"]},
              "b": {"status": "taken_down", "clips": 0, "seconds_used": 0.0, "reason": "taken down"}}
    audit = {"library": {"studio": "S", "path": "lib.yaml", "sha256": "0" * 64}, "as_of": "2026-01-01",
             "totals": totals(titles), "titles": titles, "quarantine": [],
             "takedowns": [{"title_id": "b", "date": "2026-02-01", "clips_removed": 3, "shards_rewritten": ["s0.tar"],
                            "reason": "revoked"}]}
    md = render_audit_md(audit)
    assert "| a | used | 2 | 2.00 | — | — | x \\| y |" in md
    assert "- `b` on 2026-02-01: 3 clips removed from s0.tar (revoked)" in md
    assert audit["totals"]["titles_excluded"] == 1 and audit["totals"]["clips"] == 2
