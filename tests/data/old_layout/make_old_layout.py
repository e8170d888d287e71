"""Run with the layout before the redesign (commit b11e2cf) on PYTHONPATH: saves small trained-range models."""
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras  # noqa: E402
import numpy as np  # noqa: E402

import kws_quant  # noqa: E402, F401  (registers the layers)
from kws_quant import qat  # noqa: E402
from kws_quant.models import KWSModelConfig, build_kws_model  # noqa: E402

out = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(-4.0, 1.5, size=(16, 40, 8)).astype("float32")
small = {"dnn": dict(hidden=(24, 24)), "tcresnet": dict(hidden=(16, 16, 24)), "crnn": dict(hidden=(16, 16, 16))}
outputs = {}
for arch, over in small.items():
    keras.utils.set_random_seed(0)
    model = build_kws_model(KWSModelConfig(arch=arch, window_frames=40, n_mels=8, dropout=0.0, **over), 4, "tanh4",
                            name=f"old_{arch}")
    qat.calibrate(model, x)
    model.save(os.path.join(out, f"{arch}_tanh4.keras"))
    outputs[arch] = np.asarray(model(x, training=False))
np.savez(os.path.join(out, "io.npz"), x=x, **outputs)
print("saved", sorted(os.listdir(out)), "commit b11e2cf")
