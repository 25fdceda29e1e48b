"""Quality of real trained weights (nudenet's YOLOv8n, shipped in its PyPI wheel) through a store equals the
numpy port of torchconvquality, layer by layer."""

import dask
import numpy as np
from test_ingest_onnx import yolov8n  # noqa: F401  (session fixture: downloads the wheel once, fails loudly)
from test_quality import PORT_KEYS, assert_same, port_quality

import filtershift as fs
from filtershift.ingest.onnx import read_onnx
from filtershift.store.append import add_models


def test_yolov8n_quality_matches_port(tmp_path, yolov8n):  # noqa: F811
    model = read_onnx(yolov8n)
    add_models(tmp_path / "db.zarr", [model], meta={"Task": "Detection", "Visual Category": "natural"})
    with dask.config.set(scheduler="threads"):
        table = fs.layer_quality(fs.open_store(tmp_path / "db.zarr"))
    assert list(table["layer"]) == [layer.name for layer in model.layers]
    for layer, (_, row) in zip(model.layers, table.iterrows()):
        w4 = layer.weights.reshape(layer.out_channels, layer.in_channels // layer.groups, 3, 3)
        want = port_quality(w4)
        assert row["n"] == want["n"]
        for key in PORT_KEYS:
            assert_same(row[key], want[key], f"{layer.name} {key}", rtol=1e-6, atol=1e-7)
    assert np.isfinite(table["orthogonality"]).all()
