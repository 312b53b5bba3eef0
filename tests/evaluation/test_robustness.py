"""Effective robustness: trend recovery, sign of ER, files written, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvlg_jax.evaluation import robustness as rb


def _on_line(slope, intercept, in_accs):
  return [rb.Point(f"m{i}", float(x), float(rb._sigmoid(slope * rb.logit(x) + intercept)))
          for i, x in enumerate(in_accs)]


def test_trend_recovered_from_points_on_a_logit_line():
  pts = _on_line(0.8, -0.9, np.linspace(0.55, 0.85, 9))
  trend = rb.fit_trend(pts)
  assert trend.slope == pytest.approx(0.8, abs=1e-9)
  assert trend.intercept == pytest.approx(-0.9, abs=1e-9)
  assert trend.r2 == pytest.approx(1.0)
  # On the line, ER is zero.
  for row in rb.effective_robustness(pts, trend):
    assert row["effective_robustness"] == pytest.approx(0.0, abs=1e-12)


def test_er_sign_and_value_in_accuracy_space():
  trend = rb.fit_trend(_on_line(1.0, -1.0, [0.6, 0.7, 0.8]))
  pred = float(rb._sigmoid(rb.logit(0.7) - 1.0))
  above, below = rb.Point("above", 0.7, pred + 0.1), rb.Point("below", 0.7, pred - 0.05)
  rows = rb.effective_robustness([above, below], trend)
  assert rows[0]["effective_robustness"] == pytest.approx(0.1)
  assert rows[1]["effective_robustness"] == pytest.approx(-0.05)
  assert rows[0]["predicted_shift_acc"] == pytest.approx(pred)


def test_noisy_fit_is_least_squares():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.5, 0.9, 30)
  ly = 0.9 * rb.logit(x) - 0.7 + rng.normal(0, 0.1, 30)
  pts = [rb.Point(str(i), a, float(rb._sigmoid(b))) for i, (a, b) in enumerate(zip(x, ly))]
  trend = rb.fit_trend(pts)
  slope, intercept = np.polyfit(rb.logit(x), ly, 1)
  assert trend.slope == pytest.approx(slope, rel=1e-9)
  assert trend.intercept == pytest.approx(intercept, rel=1e-9)
  assert 0.5 < trend.r2 < 1.0


def test_report_writes_table_json_and_plot(tmp_path):
  base = _on_line(0.8, -0.9, np.linspace(0.55, 0.85, 9))
  models = [rb.Point("ours", 0.6, 0.5)]
  rows = rb.report(models, base, str(tmp_path))
  assert rows[0]["effective_robustness"] > 0
  png = (tmp_path / "robustness.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  md = (tmp_path / "robustness.md").read_text()
  assert "| ours | 60.00 | 50.00 |" in md and "9 baseline points" in md
  data = json.loads((tmp_path / "robustness.json").read_text())
  assert data["trend"]["slope"] == pytest.approx(0.8)


def test_cli_with_csv_and_json_and_default_baselines(tmp_path, capsys):
  (tmp_path / "res.json").write_text(json.dumps(
      {"ours": {"in_dist_acc": 0.7, "shift_acc": 0.6}}))
  rb.main([f"--results={tmp_path / 'res.json'}", f"--out={tmp_path / 'out'}"])
  out = capsys.readouterr().out
  assert "| ours | 70.00 | 60.00 |" in out
  assert (tmp_path / "out" / "robustness.png").stat().st_size > 0
  # The default baselines: ImageNet-1k-only models, shift well below in-dist.
  base = rb.load_points(rb.DEFAULT_BASELINES)
  assert len(base) > 20
  assert all(p.shift_acc < p.in_dist_acc for p in base)
  trend = rb.fit_trend(base)
  assert trend.r2 > 0.8 and trend.slope > 0


def test_loader_rejects_percentages_and_bad_headers(tmp_path):
  f = tmp_path / "a.csv"
  f.write_text("# comment\nname,in_dist_acc,shift_acc\nx,76.2,60.1\n")
  with pytest.raises(ValueError, match="fractions"):
    rb.load_points(str(f))
  f.write_text("model,acc\nx,0.1\n")
  with pytest.raises(ValueError, match="header"):
    rb.load_points(str(f))
  with pytest.raises(ValueError, match="at least 2"):
    rb.fit_trend([rb.Point("a", 0.5, 0.4)])
