"""The sampling benchmark runs end to end and reports all three variants with ratios to base."""
import json
import runpy
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sample.py"


@pytest.mark.parametrize("mode", ["interleaved", "sequential"])
def test_bench_sample_smoke(tmp_path, capsys, mode):
    main = runpy.run_path(str(BENCH))["main"]
    out = tmp_path / "bench.json"
    extra = ["--sequential"] if mode == "sequential" else []
    results = main(["--steps", "1", "--repeats", "1", "--rank", "4", "--json", str(out), *extra])
    assert results["mode"] == mode
    assert set(results["variants"]) == {"base", "unfused", "fused"}
    assert results["variants"]["base"]["ratio_to_base"] == 1.0
    assert all(v["median_s"] > 0 for v in results["variants"].values())
    assert json.loads(out.read_text())["fused_speedup_over_unfused"] > 0
    assert "fused is x" in capsys.readouterr().out
