"""Metrics against hand-computed small cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.evaluate.metrics import (
    classification_metrics,
    confusion_matrix,
    json_clean,
    margin_summary,
    per_class_scores,
    robust_predictions,
)

# y_true 0 0 0 1 1 2, y_pred 0 0 1 1 2 2 (plus one unknown label that must be ignored)
Y_TRUE = [0, 0, 0, 1, 1, 2, -1]
Y_PRED = [0, 0, 1, 1, 2, 2, 0]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert cm.sum() == 6  # the -1 sample is left out


def test_f1_sensitivity_precision_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    # class a: TP 2 FN 1 FP 0; b: TP 1 FN 1 FP 1; c: TP 1 FN 0 FP 1
    sens = [2 / 3, 1 / 2, 1.0]
    prec = [1.0, 1 / 2, 1 / 2]
    f1 = [2 * 2 / (2 * 2 + 0 + 1), 2 * 1 / (2 + 1 + 1), 2 * 1 / (2 + 1 + 0)]
    for i, pc in enumerate(m["per_class"]):
        assert pc["sensitivity"] == pytest.approx(sens[i])
        assert pc["precision"] == pytest.approx(prec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        # F1 is the harmonic mean of precision and recall
        assert pc["f1"] == pytest.approx(2 * prec[i] * sens[i] / (prec[i] + sens[i]))
    assert [pc["support"] for pc in m["per_class"]] == [3, 2, 1]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["macro_sensitivity"] == pytest.approx(np.mean(sens))
    assert m["n"] == 6


def test_absent_class_is_left_out_of_macro_averages():
    # class 3 neither present nor predicted: NaN scores, not counted as 0
    m = classification_metrics([0, 1, 1], [0, 1, 0], num_classes=4)
    assert math.isnan(m["per_class"][3]["f1"])
    assert math.isnan(m["per_class"][3]["sensitivity"])
    f1_0 = 2 / (2 + 1)  # TP 1, FP 1
    f1_1 = 2 / (2 + 1)  # TP 1, FN 1
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["macro_sensitivity"] == pytest.approx((1.0 + 0.5) / 2)
    # a class that is predicted but absent has F1 0 and precision 0, recall NaN
    s = per_class_scores(confusion_matrix([0, 0], [0, 1], 2))
    assert s["f1"][1] == 0.0 and s["precision"][1] == 0.0 and math.isnan(s["sensitivity"][1])


def test_bad_inputs_raise():
    with pytest.raises(CryoGuardError):
        confusion_matrix([0, 1], [0])
    with pytest.raises(CryoGuardError):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(CryoGuardError):
        classification_metrics([0, 1], [0, 1], ["only one name"])


def test_robust_predictions_never_credit_fixing_a_wrong_sample():
    y = np.array([0, 1, 2, 0])
    clean = np.array([0, 2, 2, 0])  # sample 1 already wrong
    adv = np.array([1, 1, 2, 0])  # sample 0 fooled, sample 1 "fixed"
    rp = robust_predictions(y, clean, adv)
    np.testing.assert_array_equal(rp, [1, 2, 2, 0])
    assert (rp == y).mean() == pytest.approx(0.5)
    # with an explicit fooled mask only those samples take the adversarial prediction
    rp2 = robust_predictions(y, clean, adv, fooled=[False, True, True, True])
    np.testing.assert_array_equal(rp2, [0, 2, 2, 0])


def test_margin_summary_and_strict_json():
    s = margin_summary([0.1, 0.2, 0.3, np.nan, 0.4], bins=4, upper=0.4)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(0.25)
    assert s["median"] == pytest.approx(0.25)
    assert sum(s["hist_counts"]) == 4 and len(s["hist_edges"]) == 5
    empty = margin_summary([])
    assert empty["n"] == 0
    text = json.dumps(json_clean(empty), allow_nan=False)  # NaN became null
    assert json.loads(text)["mean"] is None


# --------------------------------------------------------------------------- intervals
def test_wilson_interval_by_hand():
    from napari_cryoguard.evaluate.metrics import wilson_interval

    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 sqrt(0.016 + 0.009604) / 1.38416
    z = 1.959963984540054
    n, p = 10, 0.8
    centre = (p + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(p * (1 - p) / n + z * z / 400) / (1 + z * z / 10)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    # not degenerate at 0 and n; symmetric
    lo0, hi0 = wilson_interval(0, 20)
    assert lo0 == 0.0 and hi0 == pytest.approx(z * z / 20 / (1 + z * z / 20))
    lo1, hi1 = wilson_interval(20, 20)
    assert hi1 == 1.0 and lo1 == pytest.approx(1 - hi0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # about +-0.055 at n = 200, p = 0.5 (the "standard error ~0.035")
    lo, hi = wilson_interval(100, 200)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 200), rel=0.02)
    with pytest.raises(CryoGuardError):
        wilson_interval(11, 10)


def test_interval_verdicts():
    from napari_cryoguard.evaluate.metrics import (
        accuracy_interval,
        interval_verdict,
        mean_interval,
    )

    a, b = accuracy_interval(0.9, 200), accuracy_interval(0.6, 200)
    assert a["lo"] > b["hi"]
    assert interval_verdict(a, b) == "agrees"
    assert interval_verdict(b, a) == "disagrees"
    assert interval_verdict(accuracy_interval(0.62, 200), b) == "within noise"
    assert interval_verdict(a, accuracy_interval(None, 200)) == "not compared"
    # lower is better (an MSE)
    m1, m2 = mean_interval([1.0, 1.1, 0.9, 1.0]), mean_interval([2.0, 2.1, 1.9, 2.0])
    assert m1["value"] == pytest.approx(1.0)
    assert m1["hi"] - m1["value"] == pytest.approx(1.96 * np.std([1, 1.1, 0.9, 1], ddof=1) / 2, rel=1e-3)
    assert interval_verdict(m1, m2, higher_is_better=False) == "agrees"
    assert interval_verdict(m1, m2) == "disagrees"
