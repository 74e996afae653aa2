"""Tracking: the trackers alone, the metrics against py-motmetrics, and ``leyolo track`` end to end.

Detections come from three places, never from a trained tracker-specific model:

* tracker-only tests feed ground truth turned into detections (jittered, dropped, some low
  scores) from hand-made motions, from ``leyolo.inference.tracking.synthetic`` scenes and from
  motmetrics' bundled TUD-Campus / TUD-Stadtmitte ground truth;
* the end-to-end test on the synthetic video uses ``HueDetector``, a ``Detector`` subclass whose
  backend finds the scene's coloured boxes in the letterboxed frames it is given (one hue per
  object, so its detections are known), through the real video decoding, predictor, tracker and
  writers;
* the "real video" test pans over a real photo (coco-mini, or the shapes mosaics without
  ../shared) and runs the real sample detector on it.

motmetrics 1.4.0 is the latest release (2022) and calls ``np.asfarray``, which numpy 2 removed;
the ``motmetrics`` fixture adds it back for the test (``np.asarray(x, dtype=float64)``, what it
did), which is all that release needs to run on numpy 2.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leyolo.api import Detector
from leyolo.cli import main
from leyolo.errors import LeyoloError
from leyolo.inference.tracking import TrackerConfig, make_tracker, track_results
from leyolo.inference.tracking.cmc import CameraMotion
from leyolo.inference.tracking.kalman import KalmanFilterXYAH, xyxy_to_xyah
from leyolo.inference.tracking.matching import linear_assignment
from leyolo.inference.tracking.metrics import mot_metrics, read_mot, summarize
from leyolo.inference.tracking.synthetic import crossing_scene
from leyolo.models.base import ModelMeta

MEASURES = ["idf1", "idp", "idr", "recall", "precision", "num_unique_objects", "mostly_tracked",
            "partially_tracked", "mostly_lost", "num_false_positives", "num_misses", "num_switches",
            "num_fragmentations", "mota", "motp"]  # motmetrics.metrics.motchallenge_metrics[:15]

# motmetrics' own test (tests/test_metrics.py::test_motchallenge_files) expects these for its files
PUBLISHED = {
    "TUD-Campus": [0.557659, 0.729730, 0.451253, 0.582173, 0.941441, 8, 1, 6, 1, 13, 150, 7, 7, 0.526462, 0.277201],
    "TUD-Stadtmitte": [0.644619, 0.819760, 0.531142, 0.608997, 0.939920, 10, 5, 4, 1, 45, 452, 7, 6, 0.564014,
                       0.345904],
    "OVERALL": [0.624296, 0.799176, 0.512211, 0.602640, 0.940268, 18, 6, 10, 2, 58, 602, 14, 13, 0.555116, 0.330177],
}


# motmetrics 1.4.0 on pandas 3: "Operation with tuple is deprecated" (its io.loadtxt); harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")


@pytest.fixture
def motmetrics(monkeypatch):
    mm = pytest.importorskip("motmetrics", reason="py-motmetrics is a test extra: pip install -e '.[test]'")
    if not hasattr(np, "asfarray"):  # numpy 2 removed it; motmetrics 1.4.0 still calls it
        monkeypatch.setattr(np, "asfarray", lambda a, dtype=np.float64: np.asarray(a, dtype=dtype), raising=False)
    return mm


def _tud(mm, name: str) -> Path:
    folder = Path(mm.__file__).parent / "data" / name
    if not (folder / "gt.txt").is_file():
        pytest.skip(f"this motmetrics has no bundled {name} data")
    return folder


def _motmetrics_summary(mm, gt: Path, hyp: Path) -> dict[str, float]:
    acc = mm.utils.compare_to_groundtruth(mm.io.loadtxt(str(gt)), mm.io.loadtxt(str(hyp)), "iou", distth=0.5)
    return mm.metrics.create().compute(acc, metrics=MEASURES, return_dataframe=False)


def _write_mot(path: Path, hyp: dict[int, tuple[np.ndarray, np.ndarray]]) -> Path:
    path.write_text("".join(f"{f},{i},{x1:.3f},{y1:.3f},{x2 - x1:.3f},{y2 - y1:.3f},1,-1,-1,-1\n"
                            for f, (ids, boxes) in sorted(hyp.items())
                            for i, (x1, y1, x2, y2) in zip(ids.tolist(), boxes.tolist())))
    return path


def _noisy(gt: dict, seed: int = 0, jitter: float = 0.04, drop: float = 0.15) -> dict:
    """Ground truth as a detector would give it: jittered boxes, 15% dropped, 10% with low scores."""
    rng = np.random.default_rng(seed)
    out = {}
    for frame, (ids, boxes) in gt.items():
        keep = rng.random(len(ids)) >= drop
        b = boxes[keep].copy()
        b += rng.normal(0, jitter, b.shape) * np.concatenate([b[:, 2:] - b[:, :2]] * 2, 1)
        scores = rng.uniform(0.3, 0.95, len(b))
        low = rng.random(len(b)) < 0.1
        scores[low] = rng.uniform(0.12, 0.25, int(low.sum()))
        out[frame] = (b, scores)
    return out


def _run(tracker, detections: dict, frames: int, images=None) -> dict:
    hyp = {}
    for f in range(1, frames + 1):
        boxes, scores = detections.get(f, (np.empty((0, 4)), np.empty(0)))
        out = tracker.update(boxes, scores, image=None if images is None else images(f))
        hyp[f] = (out.ids, out.xyxy.astype(np.float64))
    return hyp


# -- building blocks ----------------------------------------------------------------------------------------


def test_kalman_learns_constant_velocity():
    kf = KalmanFilterXYAH()
    box = np.array([[100.0, 50.0, 140.0, 130.0]])
    mean, cov = kf.initiate(xyxy_to_xyah(box))
    for step in range(1, 15):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, xyxy_to_xyah(box + [5 * step, -2 * step, 5 * step, -2 * step]))
    assert mean[0, 4] == pytest.approx(5.0, abs=0.3) and mean[0, 5] == pytest.approx(-2.0, abs=0.3)
    ahead, _ = kf.predict(mean, cov)  # one step further along the line
    assert ahead[0, :2] == pytest.approx([120 + 5 * 15, 90 - 2 * 15], abs=1.0)
    assert np.all(np.linalg.eigvalsh(cov[0]) > 0)


def test_linear_assignment_is_the_cost_limited_optimum():
    """Same problem as lap.lapjv(extend_cost=True, cost_limit=t): brute force over partial matchings."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, m = rng.integers(1, 5, size=2)
        cost = rng.uniform(0, 1, (n, m))
        thresh = 0.5
        matches, ur, uc = linear_assignment(cost, thresh)
        best = 0.0
        rows = range(n)
        for k in range(1, min(n, m) + 1):
            for rs in itertools.combinations(rows, k):
                for cs in itertools.permutations(range(m), k):
                    pairs = [(r, c) for r, c in zip(rs, cs) if cost[r, c] <= thresh]
                    best = min(best, sum(cost[r, c] - thresh for r, c in pairs))
        got = sum(cost[r, c] - thresh for r, c in matches)
        assert got == pytest.approx(best), trial
        assert all(cost[r, c] <= thresh for r, c in matches)
        assert sorted([*matches[:, 0], *ur]) == list(range(n)) and sorted([*matches[:, 1], *uc]) == list(range(m))
    empty = linear_assignment(np.zeros((0, 3)), 0.5)
    assert empty[0].shape == (0, 2) and empty[2].tolist() == [0, 1, 2]


def test_config_is_validated_and_unknown_settings_named():
    with pytest.raises(LeyoloError, match="track_high_thresh"):
        make_tracker("bytetrack", track_high_thresh=1.5)
    with pytest.raises(LeyoloError, match="unknown tracker setting"):
        make_tracker("bytetrack", track_hi=0.3)
    with pytest.raises(LeyoloError, match="unknown tracker 'sort'"):
        make_tracker("sort")
    assert TrackerConfig().match_thresh == 0.8 and TrackerConfig().track_buffer == 30


# -- tracker behaviour ----------------------------------------------------------------------------------------


def _two_crossing(frames: int = 60):
    """Two 40x80 people walking towards each other, overlapping for ~10 frames around frame 35."""
    a = [np.array([20 + 4.0 * t, 60, 60 + 4.0 * t, 140]) for t in range(frames)]
    b = [np.array([300 - 4.0 * t, 70, 340 - 4.0 * t, 150]) for t in range(frames)]
    return a, b


@pytest.mark.parametrize("name", ["bytetrack", "botsort"])
def test_ids_stable_through_a_crossing_and_missed_frames(name):
    a, b = _two_crossing()
    tracker = make_tracker(name)
    ids_a, ids_b = [], []
    overlapping = 0
    for t in range(len(a)):
        boxes, scores, who = [], [], []
        if not 12 <= t <= 15:  # A is missed for four frames
            boxes.append(a[t]), scores.append(0.9), who.append("a")
        if 44 <= t <= 47:  # B only comes with low scores (say, partly occluded): second association
            boxes.append(b[t]), scores.append(0.15), who.append("b")
        else:
            boxes.append(b[t]), scores.append(0.85), who.append("b")
        out = tracker.update(np.array(boxes), np.array(scores), np.zeros(len(boxes), dtype=int))
        from leyolo.ops import box_iou

        overlapping += box_iou(a[t][None], b[t][None])[0, 0] > 0.2
        by_det = dict(zip(out.det_index.tolist(), out.ids.tolist()))
        for i, w in enumerate(who):
            if i in by_det:
                (ids_a if w == "a" else ids_b).append(by_det[i])
        if 12 <= t <= 15:
            assert len(out) == 1, "a missed object is not reported while lost"
    assert overlapping >= 6, "the two boxes really cross"
    assert len(ids_a) == len(a) - 4 and len(ids_b) == len(b), "every detection of a confirmed track gets its id"
    assert set(ids_a) == {ids_a[0]} and set(ids_b) == {ids_b[0]} and ids_a[0] != ids_b[0]


def test_lost_tracks_expire_after_the_buffer_and_low_scores_start_nothing():
    tracker = make_tracker("bytetrack", track_buffer=5)
    box = np.array([[10.0, 10, 50, 90]])
    first = [tracker.update(box, [0.9]).ids.tolist() for _ in range(3)]
    assert first == [[1], [1], [1]]
    for _ in range(3):  # gap shorter than the buffer: same id
        tracker.update(np.empty((0, 4)), np.empty(0))
    assert tracker.update(box, [0.9]).ids.tolist() == [1]
    for _ in range(7):  # longer: the track is gone, a new one starts (unconfirmed for one frame)
        tracker.update(np.empty((0, 4)), np.empty(0))
    assert len(tracker.update(box, [0.9])) == 0
    assert tracker.update(box, [0.9]).ids.tolist() == [2]
    fresh = make_tracker("bytetrack")
    assert all(len(fresh.update(np.array([[200.0, 10, 240, 90]]), [0.2])) == 0 for _ in range(5))
    tracker.reset()
    assert tracker.update(box, [0.9]).ids.tolist() == [1]


@pytest.mark.parametrize("name", ["bytetrack", "botsort"])
def test_synthetic_scene_from_noisy_ground_truth(name):
    scene = crossing_scene()
    gt = scene.gt
    assert sum(len(ids) for ids, _ in gt.values()) > 400 and len({i for ids, _ in gt.values() for i in ids}) == 7
    for seed in range(3):
        hyp = _run(make_tracker(name, gmc_method="none"), scene.detections(seed=seed), scene.frames)
        m = mot_metrics(gt, hyp)
        assert m["num_predictions"] > 400
        assert m["idf1"] >= 0.9, (seed, m)
        assert m["num_switches"] <= 1, (seed, m)
        assert m["mota"] >= 0.8, (seed, m)


def test_botsort_camera_motion_compensation_on_a_shaking_camera():
    scene = crossing_scene(shake=12)  # the view jumps up to 12 px each frame
    gt = scene.gt
    frames = {f: scene.render(f)[0] for f in range(1, scene.frames + 1)}
    dets = scene.detections(seed=0)
    plain = mot_metrics(gt, _run(make_tracker("bytetrack"), dets, scene.frames))
    compensated = mot_metrics(gt, _run(make_tracker("botsort", gmc_method="sparseOptFlow"), dets, scene.frames,
                                       frames.get))
    assert plain["num_predictions"] > 0 and compensated["num_predictions"] > 300
    assert compensated["idf1"] >= 0.8 and compensated["num_switches"] <= 3, compensated
    assert compensated["idf1"] > plain["idf1"] + 0.15 and compensated["num_switches"] < plain["num_switches"] / 4


@pytest.mark.parametrize("method", ["sparseOptFlow", "ecc"])
def test_camera_motion_recovers_a_translation(method):
    base = crossing_scene(shake=20).background()  # textured, 336 x 416
    assert base.shape[:2] == (336, 416)
    cmc = CameraMotion(method)
    first = base[40:280, 40:360]
    assert np.allclose(cmc.apply(first), np.eye(2, 3))
    moved = base[40 + 6:280 + 6, 40 - 8:360 - 8]  # the camera moves up 6 and left 8: content moves +8, -6
    warp = cmc.apply(moved)
    assert warp[:, 2] == pytest.approx([8, -6], abs=0.6)
    assert warp[:, :2] == pytest.approx(np.eye(2), abs=0.02)
    assert np.allclose(CameraMotion("none").apply(moved), np.eye(2, 3))


# -- metrics --------------------------------------------------------------------------------------------------


def test_metrics_reproduce_motmetrics_published_values_on_its_files(motmetrics):
    parts = {}
    for name in ("TUD-Campus", "TUD-Stadtmitte"):
        folder = _tud(motmetrics, name)
        parts[name] = mot_metrics(read_mot(folder / "gt.txt"), read_mot(folder / "test.txt"))
        reference = _motmetrics_summary(motmetrics, folder / "gt.txt", folder / "test.txt")
        for key, published in zip(MEASURES, PUBLISHED[name]):
            assert parts[name][key] == pytest.approx(published, abs=1e-6), (name, key)
            assert parts[name][key] == pytest.approx(float(reference[key]), abs=1e-9), (name, key)
    overall = summarize(list(parts.values()))
    for key, published in zip(MEASURES, PUBLISHED["OVERALL"]):
        assert overall[key] == pytest.approx(published, abs=1e-6), ("OVERALL", key)


@pytest.mark.parametrize("name", ["bytetrack", "botsort"])
def test_tracker_on_tud_noisy_detections_scored_by_both_implementations(motmetrics, tmp_path, name):
    for seq, floor in (("TUD-Campus", 0.7), ("TUD-Stadtmitte", 0.75)):
        folder = _tud(motmetrics, seq)
        gt = read_mot(folder / "gt.txt")
        hyp = _run(make_tracker(name, gmc_method="none"), _noisy(gt), max(gt))
        path = _write_mot(tmp_path / f"{seq}-{name}.txt", hyp)
        ours = mot_metrics(gt, read_mot(path))
        reference = _motmetrics_summary(motmetrics, folder / "gt.txt", path)
        assert ours["num_predictions"] > 200
        for key in MEASURES:
            assert ours[key] == pytest.approx(float(reference[key]), abs=1e-9), (seq, key)
        assert ours["idf1"] >= floor and ours["mota"] >= floor and ours["num_switches"] <= 6, (seq, ours)


def test_read_mot_round_trip(tmp_path):
    scene = crossing_scene(frames=10)
    back = read_mot(scene.write_mot(tmp_path / "gt.txt"))
    assert sorted(back) == list(range(1, 11))
    for f, (ids, boxes) in scene.gt.items():
        assert back[f][0].tolist() == ids.tolist() and np.allclose(back[f][1], boxes, atol=0.06)
    perfect = mot_metrics(scene.gt, back)
    assert perfect["idf1"] == 1.0 and perfect["mota"] == 1.0 and perfect["num_objects"] > 50


# -- the command and the API ------------------------------------------------------------------------------------


class HueBackend:
    """Finds the synthetic scene's coloured boxes in letterboxed RGB blobs: one box per known hue."""

    name = "hue"
    end_to_end = False

    def __init__(self, hues):
        self.hues = list(hues)
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        outs = []
        for blob in batch:
            rgb = (np.transpose(blob, (1, 2, 0)) * 255).round().astype(np.uint8)
            hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
            rows = []
            for hue in self.hues:
                d = np.abs(hsv[..., 0].astype(int) - hue)
                mask = ((np.minimum(d, 180 - d) <= 4) & (hsv[..., 1] > 150)).astype(np.uint8)
                mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))  # colour fringes at edges
                if mask.sum() < 40:
                    continue
                x, y, w, h = cv2.boundingRect(mask)
                rows.append([x, y, x + w, y + h, 0.5 + 0.45 * mask.sum() / (w * h)])
            out = np.zeros((5, max(len(rows), 1)), np.float32)  # [4 + nc, N]: xyxy + one class score
            for i, row in enumerate(rows):
                out[:, i] = row
            outs.append(out)
        n = max(o.shape[1] for o in outs)
        return np.stack([np.pad(o, ((0, 0), (0, n - o.shape[1]))) for o in outs])


class HueDetector(Detector):
    """A ``Detector`` whose detections are known: ``HueBackend`` behind the real predictor."""

    def __init__(self, hues, imgsz: int = 320):
        super().__init__(meta=ModelMeta("hue-detector", ["box"], imgsz=imgsz), export_path=Path("hue.onnx"),
                         export_format="onnx")
        self.hue_backend = HueBackend(hues)

    def backend(self, name="auto", imgsz=None, device="cpu", threads=None, spinning=True):
        return self.hue_backend


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    scene = crossing_scene()
    return scene, scene.write_video(folder / "scene.avi"), scene.write_mot(folder / "gt.txt")


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def _mot_lines(path: Path) -> list[list[str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows and all(len(r) == 10 and r[7:] == ["-1", "-1", "-1"] for r in rows)
    return rows


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_track_command_on_the_synthetic_video(tmp_path, monkeypatch, capsys, scene_video, tracker):
    scene, video, gt_path = scene_video
    detector = HueDetector(scene.hue_of().values())
    monkeypatch.setattr("leyolo.api.load", lambda *a, **k: detector)
    out = tmp_path / "out"
    rc = main(["track", "--model", "hue", "--source", str(video), "--tracker", tracker, "--save-mot",
               str(out / "mot.txt"), "--save-dir", str(out), "--save-json", "--imgsz", "320"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"{scene.frames} frames" in captured.out and detector.hue_backend.calls == scene.frames
    videos = [p for p in out.iterdir() if p.suffix in (".mp4", ".avi")]
    assert [p.stem for p in videos] == ["scene"] and not list(out.glob(".*partial*"))
    annotated = _frames(videos[0])
    assert len(annotated) == scene.frames, "every frame is in the annotated video"
    assert annotated[0].shape[:2] == (scene.height, scene.width)
    rows = _mot_lines(out / "mot.txt")
    assert {int(r[0]) for r in rows} == set(range(1, scene.frames + 1)), "frames from 1, every frame"
    m = mot_metrics(read_mot(gt_path), read_mot(out / "mot.txt"))
    assert m["num_predictions"] > 400
    assert m["idf1"] >= 0.9 and m["num_switches"] <= 2 and m["mota"] >= 0.85, m
    records = json.loads((out / "tracks.json").read_text())
    assert len(records) == scene.frames and records[0]["frame"] == 1
    ids_json = {(r["frame"], t["track_id"]) for r in records for t in r["tracks"]}
    assert ids_json == {(int(r[0]), int(r[1])) for r in rows}


def test_track_command_on_a_real_video(tmp_path, capsys, images, detector_weights):
    """A camera panning over a real photo, the real sample detector: tracks keep their ids and follow the pan."""
    photo = images[0]
    h, w = photo.shape[:2]
    cw, ch = int(w * 0.8), int(h * 0.8)
    step = max((w - cw) // 24, 2)
    video = tmp_path / "pan.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (cw, ch))
    n = min(24, (w - cw) // step)
    for i in range(n):
        writer.write(np.ascontiguousarray(photo[(h - ch) // 2:(h - ch) // 2 + ch, i * step:i * step + cw]))
    writer.release()
    out = tmp_path / "out"
    rc = main(["track", "--model", detector_weights, "--source", str(video), "--imgsz", "320", "--save-dir", str(out),
               "--save-mot", str(out / "pan.txt"), "--backend", "torch", "--conf", "0.2", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert len(_frames(next(p for p in out.iterdir() if p.name in ("pan.mp4", "pan.avi")))) == n
    rows = np.array([[float(v) for v in r] for r in _mot_lines(out / "pan.txt")])
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= n
    ids, counts = np.unique(rows[:, 1], return_counts=True)
    lasting = [i for i, c in zip(ids, counts) if c >= 0.8 * n]
    assert lasting, f"a track lasts most of the pan (ids {dict(zip(ids, counts))})"
    inside = [i for i in lasting if all(1 <= x and x + bw <= cw - 1 for x, bw in rows[rows[:, 1] == i][:, [2, 4]])]
    assert inside, "a lasting track stays clear of the frame's edges"
    for track_id in inside:  # the view pans right by `step`: the object moves left as much, frame after frame
        mine = rows[rows[:, 1] == track_id]
        shift = np.median(np.diff(mine[:, 2] + mine[:, 4] / 2) / np.diff(mine[:, 0]))
        assert shift == pytest.approx(-step, abs=max(1.5, 0.3 * step)), (track_id, shift)


def test_detector_track_api_streams_and_persists(scene_video):
    scene, video, _ = scene_video
    detector = HueDetector(scene.hue_of().values())
    streamed = [r for r in detector.track(str(video), imgsz=320)]
    assert len(streamed) == scene.frames and all(r.boxes.id is not None for r in streamed)
    assert sum(len(r) for r in streamed) > 400 and streamed[10].boxes.id.dtype == np.int64
    assert "track" in streamed[0].speed
    frames = [scene.render(f)[0] for f in range(1, 31)]
    by_frame = [detector.track(frame, persist=True, imgsz=320)[0] for frame in frames]
    assert all(len(r) for r in by_frame[1:])
    assert by_frame[-1].boxes.id.tolist() == by_frame[5].boxes.id.tolist(), "same objects, same ids, frame by frame"
    again = detector.track(frames[0], persist=True, imgsz=320)[0]
    assert set(again.boxes.id.tolist()) <= set(by_frame[-1].boxes.id.tolist()), "persist continues the tracks"
    fresh = detector.track(frames[0], imgsz=320)[0]
    assert len(fresh) > 0 and fresh.boxes.id.tolist() == sorted(fresh.boxes.id.tolist())
    assert fresh.boxes.id.min() == 1, "without persist every call starts again"
    plot = by_frame[-1].plot()
    assert plot.shape == frames[0].shape and not np.array_equal(plot, frames[-1])


def test_track_results_gives_each_sequence_its_own_tracker():
    from leyolo.structures import Results

    def result(path, frame, x):
        return Results(np.array([[x, 10, x + 20, 50]], np.float32), np.array([0.9], np.float32),
                       np.array([0]), ["box"], (100, 200), path, frame)

    items = [result("a.mp4", i, 10 + 3 * i) for i in range(3)] + [result("b.mp4", i, 100) for i in range(3)]
    out = list(track_results(items))
    assert [r.boxes.id.tolist() for r in out] == [[1]] * 6, "ids start at 1 in each video"
