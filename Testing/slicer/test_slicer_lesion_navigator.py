"""The lesion navigator's decisions on a real worker output: order, next/previous, the confidence
threshold hiding lesions from the labels and bringing them back, and rejecting a lesion (voxels
gone, a reader's change in report.json written back atomically)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.usefixtures("module_lib_importable"), pytest.mark.slow]


def _fresh(three_lesion_run):
    from LesionFactorizerModuleLib.navigator import LesionNavigator

    report = json.loads(Path(three_lesion_run["report"]).read_text(encoding="utf-8"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(three_lesion_run["segmentation"]))
    return LesionNavigator(report, labels), labels.copy()


def test_table_order_and_next_previous_wrap(three_lesion_run):
    from LesionFactorizerModuleLib.navigator import LESION_HEADERS

    nav, _ = _fresh(three_lesion_run)
    assert [lesion.id for lesion in nav.listed()] == [1, 2, 3]
    assert [lesion.voxels for lesion in nav.listed()] == sorted((l.voxels for l in nav.listed()), reverse=True)
    cells = nav.listed()[0].cells()
    assert len(cells) == len(LESION_HEADERS) and cells[0] == "1" and cells[3].startswith(("left", "right"))
    assert "R " in cells[3] and float(cells[2]) > 0.5
    assert [nav.next().id for _ in range(4)] == [1, 2, 3, 1]
    assert [nav.previous().id for _ in range(2)] == [3, 2]
    assert nav.select(3).id == 3 and nav.next().id == 1


def test_threshold_hides_low_confidence_lesions_and_brings_them_back(three_lesion_run):
    nav, original = _fresh(three_lesion_run)
    by_conf = sorted(nav.listed(), key=lambda l: l.confidence)
    lowest = by_conf[0]
    cut = (by_conf[0].confidence + by_conf[1].confidence) / 2
    changed = nav.set_threshold(cut)
    assert changed == [1]
    assert [l.id for l in nav.visible()] == [l.id for l in nav.listed() if l.id != lowest.id]
    assert len(nav.listed()) == 3   # hidden, not deleted: still in the table
    gone = (original > 0) & (nav.labels == 0)
    assert int(gone.sum()) == lowest.voxels
    i, j, k = lowest.seed_index
    assert gone[k, j, i]
    # next/previous skip the hidden one
    assert lowest.id not in {nav.next().id for _ in range(5)}
    assert nav.set_threshold(0.0) == [1]
    assert np.array_equal(nav.labels, original)


def test_reject_removes_voxels_and_records_the_readers_change(three_lesion_run, tmp_path):
    from LesionFactorizerModuleLib.navigator import LesionNavigator, write_report

    nav, original = _fresh(three_lesion_run)
    nav.select(2)
    lesion = nav.by_id(2)
    changed, change = nav.reject(2, reader="dr-test")
    assert changed == [1] and nav.current == 3    # moved on to the next lesion
    assert change["action"] == "reject_lesion" and change["lesion_id"] == 2 and change["reader"] == "dr-test"
    assert change["voxels_removed"] == lesion.voxels
    assert change["volume_ml_removed"] == pytest.approx(lesion.volume_ml)
    assert int(((original > 0) & (nav.labels == 0)).sum()) == lesion.voxels
    assert [l.id for l in nav.listed()] == [1, 3]
    with pytest.raises(ValueError, match="already rejected"):
        nav.reject(2)
    # a hidden lesion can be rejected too: its parked voxels are dropped, not restored later
    nav.set_threshold(1.01)
    nav.reject(3, reader="dr-test")
    nav.set_threshold(0.0)
    assert int((nav.labels > 0).sum()) == nav.by_id(1).voxels
    # written back atomically; the model's lesion table stays as it was, the changes beside it
    path = tmp_path / "report.json"
    path.write_text("{}", encoding="utf-8")
    write_report(path, nav.report)
    back = json.loads(path.read_text(encoding="utf-8"))
    assert [c["lesion_id"] for c in back["reader_changes"]] == [2, 3]
    assert len(back["lesions"]) == 3 and not list(tmp_path.glob(".report-*"))
    again = LesionNavigator(back, nav.labels)
    assert [l.id for l in again.listed()] == [1]


def test_flood_fill_without_scipy_is_the_same_component():
    from scipy import ndimage

    from LesionFactorizerModuleLib.navigator import _component_numpy

    rng = np.random.default_rng(3)
    mask = rng.random((12, 13, 14)) > 0.6
    for connectivity, rank in ((6, 1), (18, 2), (26, 3)):
        labelled, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, rank))
        seed = tuple(np.argwhere(labelled == np.bincount(labelled.ravel())[1:].argmax() + 1)[0])
        assert np.array_equal(_component_numpy(mask, seed, connectivity), labelled == labelled[seed])


def test_a_segmentation_on_another_grid_is_refused(three_lesion_run):
    from LesionFactorizerModuleLib.navigator import LesionNavigator

    report = json.loads(Path(three_lesion_run["report"]).read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="grid"):
        LesionNavigator(report, np.zeros((3, 4, 5), np.uint8))
