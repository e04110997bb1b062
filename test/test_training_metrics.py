"""The project's one scorer (erc_ros.training.metrics.scores) with predictions that are no
class: an estimate without a label (nothing the model reads, issue 55) is wrong for its
true class and no class's prediction, in every figure."""
from __future__ import annotations

import pytest

from erc_ros.training.metrics import NO_PREDICTION, scores


def test_a_prediction_without_a_label_is_wrong_and_no_class():
    names = ["neutral", "joy", "anger"]
    y_true = [0, 1, 2, 1]
    plain = scores(y_true, [0, 1, 2, 2], names)  # the last one read as anger
    none = scores(y_true, [0, 1, 2, NO_PREDICTION], names)  # the last one not read
    assert plain["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert none["confusion"] == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    assert none["support"] == plain["support"] == {"neutral": 1, "joy": 2, "anger": 1}
    assert none["accuracy"] == plain["accuracy"] == 75.0
    # anger's precision is no longer hurt by a wrong prediction of anger
    assert none["per_class_f1"]["anger"] == 100.0 and plain["per_class_f1"]["anger"] == \
        pytest.approx(66.67)
    assert none["per_class_f1"]["joy"] == plain["per_class_f1"]["joy"] == pytest.approx(66.67)
    assert none["uar"] == plain["uar"] == pytest.approx(83.33)
