"""`duet compare` end to end on a MovieLens subset: every method, the report and the plots."""

from __future__ import annotations

import json

from duet.report.compare import METHODS, CompareConfig, compare


def test_compare_writes_a_complete_report(tiny_dir, tmp_path):
    cfg = CompareConfig(data=str(tiny_dir), backbones=("sasrec",), seeds=2, epochs=1, duet_epochs=1,
                        patience=1, finetune_steps=2, threads=1, num_generators=2)
    results = compare(cfg, tmp_path, progress=False)
    summary = results["summary"]["sasrec"]
    assert set(summary) == set(METHODS)
    for method in METHODS:
        for metric in ("auc", "uauc", "ndcg@10", "hit@10", "logloss"):
            stat = summary[method][metric]
            assert stat["std"] >= 0 and stat["mean"] == stat["mean"]  # not NaN
    assert summary["duet"]["adapt_ms_per_device"]["mean"] < summary["finetune"]["adapt_ms_per_device"]["mean"]
    for name in ("results.md", "results.json", "uauc.png", "adaptation.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    markdown = (tmp_path / "results.md").read_text()
    assert "DUET (PPG+SWA)" in markdown and "fine-tune" in markdown and "±" in markdown
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["sasrec"]["base"]["uauc"]["mean"] == summary["base"]["uauc"]["mean"]
    # a second call reuses the finished runs instead of training again
    before = (tmp_path / "runs/sasrec/seed0/base/model.safetensors").stat().st_mtime_ns
    compare(cfg, tmp_path, progress=False)
    assert (tmp_path / "runs/sasrec/seed0/base/model.safetensors").stat().st_mtime_ns == before
