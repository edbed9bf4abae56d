"""Write the LiteRT reference that tests/models/test_blazeface.py holds the ONNX conversion to.

TensorFlow Lite's own interpreter (``ai-edge-litert``, never a Visage dependency) runs the
shipped ``.tflite`` files on the detector's own input tensors for a few shared photos; the
strongest anchors' scores and regressors are written to ``tests/models/data/blazeface_litert.json``.
Run it where ``ai_edge_litert`` is importable, e.g. from a throw-away venv::

    python3 -m venv /tmp/litert && /tmp/litert/bin/pip install ai-edge-litert
    PYTHONPATH=src:/tmp/litert/lib/python3.11/site-packages \\
        .venv/bin/python tools/blazeface_reference.py --faces ../shared/faces
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from visage.imageio import load_image
from visage.models.blazeface import MODELS, BlazeFaceDetector
from visage.models.weights import model_path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "models" / "data" / "blazeface_litert.json"
PHOTOS = ("Al_Sharpton/Al_Sharpton_0001.jpg", "Boris_Becker/Boris_Becker_0002.jpg",
          "Carmen_Electra/Carmen_Electra_0003.jpg")  # fmt: skip
TOP = 8


def litert_outputs(tflite: Path, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regressors ``(anchors, 16)`` and sigmoid scores ``(anchors,)`` from LiteRT, for one
    ``(size, size, 3)`` 0..255 input (normalised to [-1, 1] as MediaPipe does)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], (tensor[None] / 127.5 - 1).astype(np.float32))
    it.invoke()
    out = {d["shape"][-1]: it.get_tensor(d["index"])[0] for d in it.get_output_details()}
    return out[16], 1 / (1 + np.exp(-out[1][:, 0].astype(np.float64)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, required=True)
    args = parser.parse_args()
    reference: dict[str, list[dict[str, object]]] = {}
    for variant, model in MODELS.items():
        detector = BlazeFaceDetector(variant)
        rows = []
        for photo in PHOTOS:
            tensor, _ = detector._input(load_image(args.faces / "people" / photo))
            regressors, scores = litert_outputs(model_path(model.weights), tensor)
            top = np.argsort(-scores)[:TOP]
            rows.append({
                "photo": photo,
                "anchors": top.tolist(),
                "scores": [round(float(s), 6) for s in scores[top]],
                "regressors": [[round(float(v), 3) for v in row] for row in regressors[top]],
            })  # fmt: skip
        reference[variant] = rows
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(reference) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
