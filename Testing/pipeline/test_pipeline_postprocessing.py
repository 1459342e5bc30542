"""Labels from network outputs, small-lesion removal, lesion table, volumes; grids; progress."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.core.outputspec import OutputSpec
from LesionFactorizerLib.pipeline.postprocessing import activate, label_volumes, lesion_table, remove_small_lesions
from LesionFactorizerLib.pipeline.preprocessing import foreground_box, zscore_nonzero
from LesionFactorizerLib.pipeline.progress import Progress
from LesionFactorizerLib.core.tasks import get_task

GEOM = Geometry((10, 8, 6), (1.0, 2.0, 0.5), (5.0, -3.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_brats_hierarchy_keeps_et_inside_tc_inside_wt():
    tumor = get_task("tumor")
    shape = (1, 1, 5)
    wt = np.array([0.9, 0.9, 0.9, 0.2, 0.9]).reshape(shape)
    tc = np.array([0.1, 0.8, 0.8, 0.9, 0.2]).reshape(shape)   # voxel 3: TC without WT → dropped
    et = np.array([0.0, 0.1, 0.9, 0.9, 0.9]).reshape(shape)   # voxel 4: ET without TC → stays edema
    probs = np.stack([et, tc, wt])                            # channel order ET, TC, WT
    labels = OutputSpec.resolve(tumor, "sigmoid", ["ET", "TC", "WT"]).to_labels(probs)
    assert labels.ravel().tolist() == [2, 1, 3, 0, 2]
    # channel order does not matter, names do
    again = OutputSpec.resolve(tumor, "sigmoid", ["WT", "TC", "ET"]).to_labels(probs[::-1].copy())
    assert np.array_equal(labels, again)


def test_softmax_outputs_map_channel_names_to_label_values():
    tumor = get_task("tumor")
    logits = np.zeros((4, 1, 1, 4), np.float32)
    for voxel, channel in enumerate([0, 1, 2, 3]):
        logits[channel, 0, 0, voxel] = 5.0
    probs = activate(logits, "softmax")
    assert np.allclose(probs.sum(axis=0), 1.0)
    labels = OutputSpec.resolve(tumor, "softmax", ["background", "NCR", "ED", "ET"]).to_labels(probs)
    assert labels.ravel().tolist() == [0, 1, 2, 3]


def test_sigmoid_is_stable_for_huge_logits():
    x = np.array([-1e4, 0.0, 1e4], np.float32)
    assert activate(x, "sigmoid").tolist() == [0.0, 0.5, 1.0]


def test_small_lesions_are_removed_with_18_connectivity():
    labels = np.zeros((6, 8, 10), np.uint8)
    for d in range(3):
        labels[d, d, d] = 1              # chain A: linked through voxel corners only (26-connected)
        labels[5, 5 + d - 3, 5 + d] = 1  # chain B: linked through voxel edges (18- and 26-connected)
    labels[0:2, 5:8, 6:9] = 1            # 18 voxels, away from both chains
    unit = Geometry((10, 8, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    expected = {26: 0, 18: 3, 6: 6}      # each chain is 3 voxels when connected, more than ⌊2.5⌋ = 2
    for connectivity, removed in expected.items():
        work = labels.copy()
        found = remove_small_lesions(work, unit, 2.5, connectivity)
        assert found.removed == removed, connectivity
        assert work.sum() == labels.sum() - removed
        assert np.array_equal(found.labels > 0, work > 0)
    assert remove_small_lesions(labels.copy(), unit, 0.0, 18).removed == 0


def test_pipeline_and_evaluation_share_one_small_lesion_rule():
    """MSSEG-2 (anima): a lesion stays when it has more than ⌊3 mm³ / voxel volume⌋ voxels, so
    exactly 3 mm³ goes — in the segmentation and in the lesion-wise metrics alike (one labelling
    function)."""
    from LesionFactorizerLib.evaluation import detect_lesions, label_lesions

    mask = np.zeros((8, 12, 30), np.uint8)
    mask[1, 1, 0:7] = 1        # 7 voxels × 0.5 mm³ = 3.5 mm³: kept
    mask[4, 4, 10:16] = 1      # 6 voxels = 3.0 mm³: removed
    mask[6, 8, 20:28] = 1      # 8 voxels = 4.0 mm³: kept
    geom = Geometry((30, 12, 8), (0.5, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    work = mask.copy()
    found = remove_small_lesions(work, geom, 3.0, 18)
    assert (found.count, found.removed) == (2, 1)
    assert work[1, 1, 0:7].all() and not work[4, 4].any() and work[6, 8, 20:28].all()
    labels, n = label_lesions(mask, spacing=geom.spacing, connectivity=18, min_volume_mm3=3.0)
    assert n == 2 and np.array_equal(labels, found.labels)
    assert detect_lesions(mask, mask, spacing=geom.spacing).n_pred == 2
    # largest first: the ids of the lesion table are the labels
    rows = lesion_table(work, geom, get_task("ms-new"), found)
    assert [r["voxels"] for r in rows] == [8, 7] and [r["id"] for r in rows] == [1, 2]
    assert all(found.labels[r["bbox_index"][0][2], r["bbox_index"][0][1], r["bbox_index"][0][0]] == r["id"]
               for r in rows)


def test_lesion_table_gives_physical_centroids_and_ml():
    stroke = get_task("stroke")
    labels = np.zeros(GEOM.shape, np.uint8)
    labels[2:4, 3:5, 4:8] = 1            # 2 × 2 × 4 = 16 voxels
    labels[0, 0, 0] = 1                  # 1 voxel
    voxel_ml = 1.0 * 2.0 * 0.5 / 1000
    rows = lesion_table(labels, GEOM, stroke, remove_small_lesions(labels, GEOM, 0.0, 26))
    assert [r["voxels"] for r in rows] == [16, 1] and [r["id"] for r in rows] == [1, 2]
    assert rows[0]["volume_ml"] == pytest.approx(16 * voxel_ml)
    centre_index = np.array([5.5, 3.5, 2.5])      # (i, j, k)
    expected = np.array(GEOM.origin) + centre_index * np.array(GEOM.spacing)
    assert np.allclose(rows[0]["centroid_lps"], expected)
    assert np.allclose(rows[0]["centroid_ras"], expected * [-1, -1, 1])
    vols = label_volumes(labels, GEOM, stroke)
    assert vols["labels"]["infarct"]["volume_ml"] == pytest.approx(17 * voxel_ml)


def test_strided_layer_grid_centres_each_cell_on_its_block():
    g = Geometry((9, 8, 7), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0), (0, -1, 0, 1, 0, 0, 0, 0, 1))
    s = g.strided(4)
    assert s.size == (3, 2, 2) and s.spacing == (4.0, 8.0, 12.0)
    # centre of layer voxel (0,0,0) = centre of input voxels 0..3 = input index 1.5
    assert np.allclose(s.index_to_physical([0, 0, 0]), g.index_to_physical([1.5, 1.5, 1.5]))
    # the outer corner (voxel edge) is shared by both grids
    assert np.allclose(s.index_to_physical([-0.5] * 3), g.index_to_physical([-0.5] * 3))


def test_with_spacing_keeps_the_physical_extent():
    g = Geometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    h = g.with_spacing((2.0, 2.0, 2.5))
    assert h.size == (5, 5, 4)
    assert np.allclose(h.bounds()[0], g.bounds()[0])
    assert np.allclose(h.bounds()[1], g.bounds()[1])


def test_zscore_keeps_background_zero_and_box_finds_foreground():
    a = np.zeros((5, 6, 7), np.float32)
    a[1:3, 2:5, 3:4] = [[[10.0], [20.0], [30.0]], [[40.0], [50.0], [60.0]]]
    start, stop = foreground_box([a])
    assert start.tolist() == [3, 2, 1] and stop.tolist() == [4, 5, 3]
    stats = zscore_nonzero(a)
    assert stats["nonzero_voxels"] == 6
    assert a[0].sum() == 0 and abs(a[a != 0].mean()) < 1e-6 and abs(a[a != 0].std() - 1) < 1e-5


def test_progress_fractions_are_monotone_json_lines():
    out = io.StringIO()
    p = Progress("jsonl", stream=out, min_interval=0.0)
    p.stage("read")
    p.stage("inference")
    for f in (0.1, 0.5, 0.3, 1.0):     # a stage that restarts never moves the bar back
        p.update(f)
    p.stage("write")
    p.done({"dir": "/x"})
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1] == {"event": "done", "outputs": {"dir": "/x"}}


@pytest.mark.slow
def test_ms_new_pipeline_drops_lesions_under_3_mm3_and_reports_them(tmp_path):
    import SimpleITK as sitk
    from helpers import save_threshold_model

    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings

    rng = np.random.default_rng(0)
    base = (100 + 5 * rng.standard_normal((20, 24, 28))).astype(np.float32)
    follow = base.copy()
    follow[5:9, 6:10, 6:10] = 400      # new lesion: 64 voxels × 1 mm³
    follow[15, 18, 20] = 400           # a 1 mm³ speck: below the 3 mm³ MSSEG-2 rule
    paths = {}
    for name, array in (("flair_baseline", base), ("flair_followup", follow)):
        image = sitk.GetImageFromArray(array)
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    model = save_threshold_model(tmp_path / "ms.safetensors", task="ms-new", channel=1, threshold=3.0,
                                 patch=(16, 16, 16))
    # noise volumes have no head to register (the registration gate would rightly refuse them):
    # this test is about the small-lesion rule, so the pair is compared as it is
    segment_case(paths, str(tmp_path / "out"), SegmentSettings(models=[model], device="cpu", overview=False,
                                                               register="never"))
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["task"] == "ms-new" and report["reference_input"] == "flair_followup"
    assert report["removed_small_lesions"] == 1 and report["lesion_count"] == 1
    assert report["lesions"][0]["voxels"] == 64 and report["settings"]["connectivity"] == 18
    assert report["volumes_ml"]["new_lesion"] == pytest.approx(0.064)
    rows = (tmp_path / "out" / "lesions.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and rows[0].startswith("id,voxels,volume_ml")
